"""The two-batch methods SDMGrad and MoDo (``batches_per_step = 2``, ``aggregate_pair``).

Against torchjd 0.18.0's ``SDMGradWeighting`` / ``MoDoWeighting`` fed the same
``A = J_1 J_2^T`` step after step (their state carried along), against hand-derived values, and
the rules every gradient aggregator follows: the direction is ``w^T (J_1 + J_2) / 2``, a
non-finite input gives NaN and leaves the state, bad hyperparameters are refused in one line,
a checkpoint continues bit for bit, and an absent task keeps its state while the present ones
are updated as the method built for them alone (on the simplex: from the conditional point
``m_P / sum(m_P)``, keeping their total mass; ``methods.modo.SimplexPairAggregator``). The
masked-task rule over whole runs is also in ``tests/test_masked_tasks.py``.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor

import methods
from methods.gradient import project_onto_simplex
from methods.modo import MoDo, SimplexPairAggregator
from methods.sdmgrad import SDMGrad
from tests.jacobians import F64, KINDS, make_jacobian

torchjd_aggregation = pytest.importorskip("torchjd.aggregation")
torchjd_simplex = pytest.importorskip("torchjd.aggregation._utils.simplex")

NAMES = ("sdmgrad", "modo")
SIZES = (1, 2, 3, 5, 8, 14)
STEPS = 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for these tiny float64 products: with two on a busy machine, each
    ``[T, 20] @ [20, T]`` waited about 30 ms for the second thread (measured on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference(name: str, **hp):
    """torchjd's weighting with our hyperparameter names (``lam`` is torchjd's ``lambda_``)."""
    if name == "sdmgrad":
        if "lam" in hp:
            hp["lambda_"] = hp.pop("lam")
        return torchjd_aggregation.SDMGradWeighting(**hp)
    return torchjd_aggregation.MoDoWeighting(**hp)


def batches(kind: str, t: int, step: int, mode: str = "noisy") -> tuple[Tensor, Tensor]:
    """Two mini-batches' Jacobians: ``noisy``, two estimates of one gradient (as in training:
    ``J_2 = J_1 + noise``, same rank pattern and scale); ``independent``, unrelated draws
    (``A`` far from symmetric, negative diagonal entries)."""
    first = make_jacobian(kind, t, seed=2 * step)
    other = make_jacobian(kind, t, seed=2 * step + 1)
    return first, (first + 0.5 * other if mode == "noisy" else other)


def ones(t: int, dtype: torch.dtype = F64) -> Tensor:
    return torch.ones(t, dtype=dtype)


def saved(method: methods.Method) -> dict:
    """The state_dict through torch.save / torch.load(weights_only=True), as a checkpoint."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_state(a: methods.Method, b: methods.Method) -> None:
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], Tensor):
            torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, equal_nan=True)
        else:
            assert sa[key] == sb[key], key


# --------------------------------------------------------------------------------------------
# Declaration
# --------------------------------------------------------------------------------------------


def test_class_attributes_and_defaults() -> None:
    for cls, arxiv in ((SDMGrad, "2305.18409"), (MoDo, "2305.20057")):
        assert cls.batches_per_step == 2 and cls.level == "parameters"
        assert cls.AGGREGATION_LEVELS == ("parameters",)
        assert issubclass(cls, SimplexPairAggregator)
        assert arxiv in cls.reference and "torchjd 0.18" in cls.reference
        assert isinstance(cls.summary, str) and "\n" not in cls.summary
        assert methods.create(cls.name, 3).__class__ is cls
    assert SDMGrad.hyperparameter_defaults() == {
        "level": "parameters",
        "lr": 10.0,
        "momentum": 0.5,
        "n_iter": 20,
        "lam": 0.3,
        "update_every": 1,
        "ema": 0.0,
    }
    assert MoDo.hyperparameter_defaults() == {
        "level": "parameters",
        "gamma": 0.1,
        "rho": 0.1,
        "update_every": 1,
        "ema": 0.0,
    }
    # the same defaults as torchjd's
    sdm, modo = reference("sdmgrad"), reference("modo")
    assert (sdm.lr, sdm.momentum, sdm.n_iter, sdm.lambda_) == (10.0, 0.5, 20, 0.3)
    assert (modo.gamma, modo.rho) == (0.1, 0.1)


@pytest.mark.parametrize(
    ("name", "hp", "match"),
    [
        ("sdmgrad", {"lr": 0}, r"lr must be a finite number > 0, got 0"),
        ("sdmgrad", {"lr": -1.0}, r"lr must be a finite number > 0"),
        ("sdmgrad", {"lr": math.nan}, r"lr must be a finite number"),
        ("sdmgrad", {"momentum": 1.0}, r"momentum must be a finite number >= 0 and < 1, got 1"),
        ("sdmgrad", {"momentum": -0.1}, r"momentum must be a finite number >= 0"),
        ("sdmgrad", {"n_iter": 0}, r"n_iter must be a positive int, got 0"),
        ("sdmgrad", {"n_iter": 2.0}, r"n_iter must be a positive int, got 2.0"),
        ("sdmgrad", {"lam": -0.1}, r"lam must be a finite number >= 0"),
        ("sdmgrad", {"lambda_": 0.3}, r"unknown hyperparameter 'lambda_'"),
        ("sdmgrad", {"level": "representation"}, r"level must be one of parameters, got"),
        ("modo", {"gamma": 0.0}, r"gamma must be a finite number > 0, got 0"),
        ("modo", {"gamma": math.inf}, r"gamma must be a finite number > 0"),
        ("modo", {"rho": -1}, r"rho must be a finite number >= 0, got -1"),
        ("modo", {"rho": "0.1"}, r"rho must be a finite number >= 0, got '0.1'"),
        ("modo", {"level": "representation"}, r"level must be one of parameters, got"),
        ("modo", {"ema": 1.5}, r"ema must be a finite number >= 0 and <= 1"),
    ],
)
def test_bad_hyperparameters(name: str, hp: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"^method '{name}': {match}") as exc:
        methods.create(name, 3, **hp)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", NAMES)
def test_a_single_batch_is_refused(name: str) -> None:
    """With one batch ``A`` would be ``J J^T``, which biases the weight update the methods'
    guarantees rest on: ``aggregate`` (and ``compute``) raise instead of falling back."""
    method = methods.create(name, 3)
    j = make_jacobian("random", 3)
    before = saved(method)
    for call in (
        lambda: method.aggregate(j, ones(3)),
        lambda: method.compute(j, ones(3), j @ j.T),
        lambda: method.compute_present(j, ones(3), j @ j.T, torch.ones(3, dtype=torch.bool)),
    ):
        with pytest.raises(ValueError, match=f"method '{name}': needs two independent mini-b"):
            call()
    for key, value in saved(method)["state"].items():
        assert torch.equal(value, before["state"][key])  # untouched
    with pytest.raises(ValueError, match="the two Jacobians differ in shape"):
        method.aggregate_pair(j, j[:, :5], ones(3))


# --------------------------------------------------------------------------------------------
# Against torchjd, step after step
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torchjd_step_after_step(name: str, kind: str, t: int) -> None:
    """Random, rank-deficient, zero, badly scaled (row norms 1e-3 to 1e3) and one-zero-row
    Jacobians: the weights equal torchjd's fed ``A = J_1 J_2^T`` (state carried along; torchjd
    starts uniform as we do) and the direction is ``w^T (J_1 + J_2) / 2``."""
    ours, theirs = methods.create(name, t), reference(name)
    for step in range(STEPS):
        first, second = batches(kind, t, step)
        direction, weights = ours.aggregate_pair(first, second, ones(t))
        expected = theirs(first @ second.T)
        torch.testing.assert_close(weights, expected, rtol=0, atol=1e-9)
        torch.testing.assert_close(direction, weights @ ((first + second) / 2))
        assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12) and bool((weights >= 0).all())


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "zero"])
@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("sdmgrad", {"lr": 0.5, "momentum": 0.9, "n_iter": 3, "lam": 0.0}),
        ("sdmgrad", {"lr": 2.0, "momentum": 0.0, "n_iter": 1, "lam": 2.0}),
        ("modo", {"gamma": 1.0, "rho": 0.0}),
        ("modo", {"gamma": 0.01, "rho": 1.0}),
    ],
)
def test_matches_torchjd_with_other_hyperparameters(name: str, hp: dict, kind: str) -> None:
    ours, theirs = methods.create(name, 5, **hp), reference(name, **hp)
    for step in range(STEPS):
        first, second = batches(kind, 5, step)
        _, weights = ours.aggregate_pair(first, second, ones(5))
        torch.testing.assert_close(weights, theirs(first @ second.T), rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", NAMES)
def test_matches_torchjd_on_independent_batches(name: str, kind: str) -> None:
    """Unrelated batches: ``A`` far from symmetric, with negative diagonal entries. SDMGrad on
    the badly scaled ones is left out: its scale ``mean sqrt(max(A_tt, 0))`` is then near 0
    and torchjd's projection leaves the simplex (see
    ``test_sdmgrad_near_zero_scale_stays_on_the_simplex``)."""
    if name == "sdmgrad" and kind == "scaled":
        pytest.skip("torchjd's weights leave the simplex here; hand-derived below")
    for t in (2, 5, 14):
        ours, theirs = methods.create(name, t), reference(name)
        for step in range(STEPS):
            first, second = batches(kind, t, step, mode="independent")
            _, weights = ours.aggregate_pair(first, second, ones(t))
            torch.testing.assert_close(weights, theirs(first @ second.T), rtol=0, atol=1e-9)


def test_the_projection_matches_torchjd_and_is_exact_far_from_the_simplex() -> None:
    gen = torch.Generator().manual_seed(0)
    for t in SIZES:
        for scale in (1e-3, 1.0, 10.0, 1e3):
            y = scale * torch.randn(t, generator=gen, dtype=F64)
            x = project_onto_simplex(y)
            torch.testing.assert_close(
                x, torchjd_simplex.project_onto_simplex(y), atol=1e-12, rtol=0
            )
            # the KKT conditions: x = max(y - theta, 0), sum x = 1
            theta = float((y - x)[x > 0].mean())
            torch.testing.assert_close(x, (y - theta).clamp(min=0), atol=1e-12, rtol=0)
            assert float(x.sum()) == pytest.approx(1.0, abs=1e-12)
    # entries far above 1: the projection is the vertex (shifting by the max keeps the 1)
    y = torch.tensor([-7.5e9, 1.1e16], dtype=F64)
    assert project_onto_simplex(y).tolist() == [0.0, 1.0]
    assert torchjd_simplex.project_onto_simplex(y).tolist() == [0.0, 0.0]  # the round-off
    assert project_onto_simplex(torch.tensor([3.0], dtype=F64)).tolist() == [1.0]
    assert (
        project_onto_simplex(torch.tensor([0.2, 0.2, 0.2], dtype=F64)).tolist()
        == [pytest.approx(1 / 3)] * 3
    )


# --------------------------------------------------------------------------------------------
# Hand-derived values
# --------------------------------------------------------------------------------------------


def test_modo_uses_j1_j2t_not_its_transpose() -> None:
    """``J_1 = I``, ``J_2 = [[0, 1], [0, 0]]``: ``A = J_1 J_2^T = [[0, 0], [1, 0]]``.
    ``lambda = (1/2, 1/2)``, ``gamma = rho = 0.1``: ``A lambda + rho lambda = (0.05, 0.55)``,
    ``y = lambda - 0.1 (0.05, 0.55) = (0.495, 0.445)``, ``theta = (0.94 - 1) / 2 = -0.03``,
    ``lambda' = (0.525, 0.475)`` (with ``A^T`` it would be ``(0.475, 0.525)``). Direction:
    ``lambda'^T (J_1 + J_2) / 2 = 0.525 (0.5, 0.5) + 0.475 (0, 0.5) = (0.2625, 0.5)``.
    Second step from there: ``A lambda' = (0, 0.525)``, ``y = (0.525 - 0.00525,
    0.475 - 0.0525 - 0.00475) = (0.51975, 0.41775)``, ``theta = -0.03125``,
    ``lambda'' = (0.551, 0.449)``."""
    first = torch.eye(2, dtype=F64)
    second = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)
    method = methods.create("modo", 2)
    direction, weights = method.aggregate_pair(first, second, ones(2))
    torch.testing.assert_close(weights, torch.tensor([0.525, 0.475], dtype=F64))
    torch.testing.assert_close(direction, torch.tensor([0.2625, 0.5], dtype=F64))
    _, weights = method.aggregate_pair(first, second, ones(2))
    torch.testing.assert_close(weights, torch.tensor([0.551, 0.449], dtype=F64))
    torch.testing.assert_close(method.state_dict()["state"]["lambda"], 2 * weights)  # mass T


def test_sdmgrad_hand_derived_step() -> None:
    """``J_1 = J_2 = diag(1, 2)``: ``A = diag(1, 4)``, scale ``s = (1 + 2) / 2 = 1.5``,
    ``a = A / 2.25``. One inner step (``n_iter = 1``, ``lr = 0.1``, ``lam = 0.3``) from
    ``w = (1/2, 1/2)``: ``w + lam w~ = (0.65, 0.65)``, ``g = (0.65, 2.6) / 2.25``,
    ``y = w - 0.1 g`` and the projection adds back half the gap:
    ``w' = (1/2 + 0.05 (2.6 - 0.65) / 2.25, ...) = (163/300, 137/300)``; weights
    ``(w' + 0.15) / 1.3 = (208/390, 182/390) = (8/15, 7/15)`` (up to the 1e-8 in the scale)."""
    j = torch.diag(torch.tensor([1.0, 2.0], dtype=F64))
    method = methods.create("sdmgrad", 2, lr=0.1, n_iter=1)
    direction, weights = method.aggregate_pair(j, j, ones(2))
    torch.testing.assert_close(
        weights, torch.tensor([8 / 15, 7 / 15], dtype=F64), atol=1e-8, rtol=0
    )
    torch.testing.assert_close(
        direction, torch.tensor([8 / 15, 14 / 15], dtype=F64), atol=1e-8, rtol=0
    )
    state = method.state_dict()["state"]["w"]
    torch.testing.assert_close(state, 2 * torch.tensor([163 / 300, 137 / 300], dtype=F64))


def test_sdmgrad_near_zero_scale_stays_on_the_simplex() -> None:
    """Both diagonal entries of ``A`` negative (unrelated batches): the scale
    ``s = mean sqrt(max(A_tt, 0))`` is 0 and ``a = A / 1e-8``. Here
    ``A = [[-1e-6, -3.5e-3], [6e4, -6e8]]``; from ``w = (1/2, 1/2)``,
    ``g = a (0.65, 0.65)`` is about ``(-2.3e5, -3.9e16)``, so ``w - 10 g`` is about
    ``(2.3e6, 3.9e17)``, whose projection is the vertex ``(0, 1)``; from there
    ``g = a (0.15, 1.15)`` (about ``(-4e5, -6.9e16)``) and the momentum push the same way:
    ``w' = (0, 1)``, weights ``(0.15, 1.15) / 1.3``. torchjd's projection computes
    ``3.9e17 - (3.9e17 - 1)`` as 0 (float64 spacing 64 there) and returns ``(0, 0)``: its
    weights ``(0.15, 0.15) / 1.3`` sum to 0.23."""
    first = torch.tensor([[-1e-3, 0.0, 2.0], [0.0, 3e4, 0.0]], dtype=F64)
    second = torch.tensor([[1e-3, 2.0, 0.0], [3.5, -2e4, 0.0]], dtype=F64)
    cross = first @ second.T
    torch.testing.assert_close(cross, torch.tensor([[-1e-6, -3.5e-3], [6e4, -6e8]], dtype=F64))
    method = methods.create("sdmgrad", 2)
    _, weights = method.aggregate_pair(first, second, ones(2))
    torch.testing.assert_close(weights, torch.tensor([0.15, 1.15], dtype=F64) / 1.3)
    assert method.state_dict()["state"]["w"].tolist() == [0.0, 2.0]  # (0, 1) at mass T = 2
    theirs = reference("sdmgrad")(cross)
    torch.testing.assert_close(theirs, torch.tensor([0.15, 0.15], dtype=F64) / 1.3)


@pytest.mark.parametrize("name", NAMES)
def test_one_task_gets_weight_one(name: str) -> None:
    first, second = batches("random", 1, 0)
    method = methods.create(name, 1)
    for _ in range(3):
        direction, weights = method.aggregate_pair(first, second, ones(1))
        assert weights.tolist() == [1.0]
        torch.testing.assert_close(direction, ((first + second) / 2)[0])


@pytest.mark.parametrize("name", NAMES)
def test_permuting_tasks_permutes_weights(name: str) -> None:
    perm = torch.tensor([3, 0, 4, 1, 2])
    ours, permuted = methods.create(name, 5), methods.create(name, 5)
    for step in range(3):
        first, second = batches("scaled", 5, step)
        d, w = ours.aggregate_pair(first, second, ones(5))
        dp, wp = permuted.aggregate_pair(first[perm], second[perm], ones(5))
        torch.testing.assert_close(wp, w[perm], atol=1e-10, rtol=0)
        torch.testing.assert_close(dp, d, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_float32_jacobians(name: str) -> None:
    """The weights are solved in float64 on ``A`` of the float32 product; the direction and
    the weights come back in float32."""
    first, second = batches("random", 4, 0)
    direction, weights = methods.create(name, 4).aggregate_pair(
        first.float(), second.float(), ones(4, torch.float32)
    )
    assert direction.dtype == weights.dtype == torch.float32
    _, expected = methods.create(name, 4).aggregate_pair(first, second, ones(4))
    torch.testing.assert_close(weights, expected.float(), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# Non-finite input, checkpoints, masked tasks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["first", "second"])
@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, "overflow"])
@pytest.mark.parametrize("name", NAMES)
def test_non_finite_input_gives_nan_and_leaves_the_state(name: str, bad, which: str) -> None:
    """An inf/NaN entry in either batch's Jacobian, or float32 rows of norm 1e20 (their
    squared norm overflows): NaN direction and weights (``GradScaler`` skips the step) and the
    state is as before, so the next step is the one that would have come."""
    first, second = (j.float() for j in batches("random", 4, 0))
    if bad == "overflow":
        bad_j = (first / first.norm(dim=1, keepdim=True)) * 1e20
    else:
        bad_j = first.clone()
        bad_j[2, 3] = bad
    pair = (bad_j, second) if which == "first" else (second, bad_j)
    method, twin = methods.create(name, 4), methods.create(name, 4)
    for m in (method, twin):
        m.aggregate_pair(first, second, ones(4, torch.float32))
    direction, weights = method.aggregate_pair(*pair, ones(4, torch.float32))
    assert direction.shape == (first.shape[1],) and weights.shape == (4,)
    assert bool(torch.isnan(direction).all()) and bool(torch.isnan(weights).all())
    assert_same_state(method, twin)
    after = method.aggregate_pair(second, first, ones(4, torch.float32))
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            after, twin.aggregate_pair(second, first, ones(4, torch.float32)), strict=True
        )
    )


@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("sdmgrad", {}),
        ("modo", {}),
        ("sdmgrad", {"ema": 0.5, "update_every": 2}),
        ("modo", {"ema": 0.3, "update_every": 3}),
    ],
)
def test_checkpoint_round_trip_continues_bit_identically(name: str, hp: dict) -> None:
    """Saved (torch.save / load with weights_only) mid-run, with a task absent in some steps:
    the copy continues exactly as the original; the state holds the base's CR-MOGM and
    update_every entries too when those are on."""
    t = 4
    original = methods.create(name, t, **hp)

    def step(method: methods.Method, s: int):
        first, second = batches("random", t, s)
        present = torch.ones(t, dtype=torch.bool)
        if s % 3 == 1:
            present[1] = False
            first[1], second[1] = 0.0, 0.0
        return method.aggregate_pair(first, second, ones(t), present=present)

    for s in range(4):
        step(original, s)
    state = saved(original)
    assert state["state"].keys() >= {"w" if name == "sdmgrad" else "lambda"}
    if hp:
        assert state["state"].keys() >= {"ema_weights", "cached_weights", "steps_since"}
    twin = methods.create(name, t, **hp)
    twin.load_state_dict(state)
    for s in range(4, 10):
        a, b = step(original, s), step(twin, s)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert_same_state(original, twin)


@pytest.mark.parametrize("name", NAMES)
def test_bad_state_is_refused(name: str) -> None:
    method = methods.create(name, 3)
    key = "w" if name == "sdmgrad" else "lambda"
    state = method.state_dict()
    for value, match in [
        (torch.ones(4, dtype=F64), rf"state_dict {key} must be a Tensor\[3\]"),
        (torch.tensor([1.0, -0.5, 1.0], dtype=F64), rf"state_dict {key} must be finite and >= 0"),
        (torch.tensor([1.0, math.nan, 1.0], dtype=F64), f"state_dict {key} must be finite"),
    ]:
        with pytest.raises(ValueError, match=f"method '{name}': {match}"):
            method.load_state_dict({**state, "state": {key: value}})


@pytest.mark.parametrize("name", NAMES)
def test_an_absent_task_keeps_its_mass_and_the_others_follow_torchjd(name: str) -> None:
    """After three steps with every task present, task 1 is absent: the others' weights are
    torchjd's for them alone started from the conditional simplex point
    ``m_P / sum(m_P)``; task 1's mass is unchanged, the present tasks keep their total mass
    (so ``m / sum(m)`` stays on the simplex) and task 1's weight is 0."""
    t, absent, keep = 4, 1, [0, 2, 3]
    method = methods.create(name, t)
    for s in range(3):
        method.aggregate_pair(*batches("random", t, s), ones(t))
    key = "w" if name == "sdmgrad" else "lambda"
    masses = method.state_dict()["state"][key].clone()
    first, second = batches("random", t, 3)
    first[absent], second[absent] = 0.0, 0.0
    present = torch.ones(t, dtype=torch.bool)
    present[absent] = False
    direction, weights = method.aggregate_pair(first, second, ones(t), present=present)

    theirs = reference(name)
    cross = (first @ second.T)[keep][:, keep]
    theirs._ensure_state(cross)  # then the conditional point as torchjd's warm start
    setattr(theirs, "_w" if name == "sdmgrad" else "_lambda", masses[keep] / masses[keep].sum())
    expected = theirs(cross)
    assert float(weights[absent]) == 0.0
    torch.testing.assert_close(weights[keep], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(direction, weights @ ((first + second) / 2))
    after = method.state_dict()["state"][key]
    assert float(after[absent]) == float(masses[absent])
    torch.testing.assert_close(after[keep].sum(), masses[keep].sum())
    state = getattr(theirs, "_w" if name == "sdmgrad" else "_lambda")
    torch.testing.assert_close(after[keep], masses[keep].sum() * state, rtol=0, atol=1e-12)


def test_present_tasks_at_mass_zero_restart_from_uniform() -> None:
    """MoDo's projection can put a task at mass 0. State ``m = (2, 0, 0)``; only tasks 1 and 2
    present: their conditional point ``0 / 0`` is undefined, so they restart from the initial
    masses (1, 1), as the method built for them alone from ``(0, 0)`` does; then
    ``m' = (2, 2 lambda')`` with ``lambda'`` MoDo's step from ``(1/2, 1/2)`` (``A = I``: the
    symmetric step keeps ``(1/2, 1/2)``)."""
    method = methods.create("modo", 3)
    method.load_state_dict({**method.state_dict(), "state": {"lambda": torch.tensor([2.0, 0, 0])}})
    j = torch.eye(3, dtype=F64)
    j[0] = 0.0
    present = torch.tensor([False, True, True])
    _, weights = method.aggregate_pair(j, j, ones(3), present=present)
    assert weights.tolist() == [0.0, 0.5, 0.5]
    assert method.state_dict()["state"]["lambda"].tolist() == [2.0, 1.0, 1.0]
    alone = methods.create("modo", 2)
    alone.load_state_dict({**alone.state_dict(), "state": {"lambda": torch.zeros(2)}})
    _, alone_weights = alone.aggregate_pair(j[1:, :], j[1:, :], ones(2))
    assert alone_weights.tolist() == [0.5, 0.5]


@pytest.mark.parametrize("name", NAMES)
def test_no_task_present_changes_nothing(name: str) -> None:
    method = methods.create(name, 3)
    method.aggregate_pair(*batches("random", 3, 0), ones(3))
    before = saved(method)
    first, second = batches("random", 3, 1)
    direction, weights = method.aggregate_pair(
        first * 0, second * 0, ones(3), present=torch.zeros(3, dtype=torch.bool)
    )
    assert weights.tolist() == [0.0] * 3 and not bool(direction.any())
    for key, value in method.state_dict()["state"].items():
        assert torch.equal(value, before["state"][key])
