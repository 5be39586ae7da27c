"""Stateful gradient-level methods GradVac, ExcessMTL, DB-MTL and MoCo: against torchjd 0.18.0
(GradVac, ExcessMTL: several steps, every kind of test Jacobian), against hand-derived values
and transcriptions of LibMTL's updates (DB-MTL, MoCo: not in torchjd), and their state
(checkpoints, masked tasks beyond ``tests/test_masked_tasks.py``)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import Tensor

import methods
from methods.db_mtl import DBMTL
from methods.excess_mtl import ExcessMTL
from methods.gradient import GradientAggregator, project_onto_simplex
from methods.gradvac import GradVac
from methods.moco import MoCo, moco_lambda_step
from tests.jacobians import F64, J_FIXED, KINDS, make_jacobian, ones

torchjd_aggregation = pytest.importorskip("torchjd.aggregation")

CLASSES: tuple[type[GradientAggregator], ...] = (GradVac, ExcessMTL, DBMTL, MoCo)
NAMES = ("gradvac", "excess_mtl", "db_mtl", "moco")
SIZES = (1, 2, 3, 5, 14)
STEPS = 4


def sequence(kind: str, t: int, steps: int = STEPS) -> list[Tensor]:
    """``steps`` Jacobians of one kind (a new draw each step, as successive batches)."""
    return [make_jacobian(kind, t, seed=s) for s in range(steps)]


def step_losses(t: int, s: int) -> Tensor:
    """Positive losses, different per task and step (DB-MTL and MoCo read them)."""
    return 0.3 + 0.1 * torch.arange(1, t + 1, dtype=F64) + 0.05 * s


# --------------------------------------------------------------------------------------------
# Common
# --------------------------------------------------------------------------------------------


def test_registered_with_attributes_and_defaults() -> None:
    assert [methods._REGISTRY[n] for n in NAMES] == list(CLASSES)
    assert [c.name for c in CLASSES] == list(NAMES)
    for cls in CLASSES:
        assert cls.level == "parameters"
        assert isinstance(cls.summary, str) and "\n" not in cls.summary
        assert "arXiv:" in cls.reference
    assert GradVac.AGGREGATION_LEVELS == ("parameters", "representation")
    for cls in (ExcessMTL, DBMTL, MoCo):
        assert cls.AGGREGATION_LEVELS == ("parameters",)
    flags = {c.name: c.direction_is_weighted_jacobian for c in CLASSES}
    assert flags == {"gradvac": True, "excess_mtl": True, "db_mtl": False, "moco": False}
    assert GradientAggregator.direction_is_weighted_jacobian is True
    defaults = {c.name: vars(c.Hyperparameters()) for c in CLASSES}
    assert defaults == {
        "gradvac": {"beta": 0.5, "eps": 1e-8, "seed": None},
        "excess_mtl": {"robust_step_size": 0.01, "n_warmup_steps": 0, "baseline_step": "skip"},
        "db_mtl": {"beta": 0.9, "beta_sigma": 0.0},
        "moco": {
            "beta": 0.5,
            "beta_sigma": 0.5,
            "gamma": 0.1,
            "gamma_sigma": 0.5,
            "rho": 0.0,
            "normalization": "l2_loss",
            "simplex": "projection",
        },
    }


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("gradvac", {"beta": 1.5}, "beta must be a finite number >= 0 and <= 1, got 1.5"),
        ("gradvac", {"eps": 0.0}, "eps must be a finite number > 0"),
        ("gradvac", {"seed": -1}, r"seed must be null or an int in \[0, 2\^63\), got -1"),
        ("gradvac", {"seed": 1.0}, "seed must be null or an int"),
        ("excess_mtl", {"robust_step_size": 0.0}, "robust_step_size must be a finite number > 0"),
        ("excess_mtl", {"n_warmup_steps": -1}, "n_warmup_steps must be an int >= 0, got -1"),
        ("excess_mtl", {"n_warmup_steps": 2.0}, "n_warmup_steps must be an int >= 0"),
        ("excess_mtl", {"baseline_step": "keep"}, "baseline_step must be one of update, skip"),
        ("excess_mtl", {"level": "representation"}, "level must be one of parameters, got"),
        ("db_mtl", {"beta": -0.1}, "beta must be a finite number >= 0 and <= 1"),
        ("db_mtl", {"beta_sigma": math.nan}, "beta_sigma must be a finite number >= 0"),
        ("db_mtl", {"ema": 0.5}, r"ema must be 0 \(db_mtl's update is not a weighted sum"),
        ("db_mtl", {"update_every": 2}, "update_every must be 1 .*, got 2"),
        ("db_mtl", {"level": "representation"}, "level must be one of parameters, got"),
        ("moco", {"beta": 0.0}, "beta must be a finite number > 0 and <= 1"),
        ("moco", {"gamma": -1}, "gamma must be a finite number > 0"),
        ("moco", {"rho": -1.0}, "rho must be a finite number >= 0"),
        ("moco", {"gamma_sigma": "0.5"}, "gamma_sigma must be a finite number >= 0, got '0.5'"),
        ("moco", {"normalization": "l2"}, "normalization must be one of l2_loss, none"),
        ("moco", {"simplex": "exp"}, "simplex must be one of projection, softmax"),
        ("moco", {"ema": 0.1}, r"ema must be 0 \(moco's update is not a weighted sum"),
        ("moco", {"update_every": 3}, "update_every must be 1 .*, got 3"),
        ("moco", {"MoCo_beta": 0.5}, "unknown hyperparameter 'MoCo_beta'"),
    ],
)
def test_bad_hyperparameters(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"^method '{name}': {match}") as exc:
        methods.create(name, 3, **kwargs)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", KINDS)
def test_finite_on_every_kind_over_steps(name: str, kind: str) -> None:
    """Finite direction and weights for every kind of test Jacobian, ``T`` 1 to 14, over
    several steps (the state carries the earlier steps' Jacobians), in float64 and float32."""
    for t in (1, 3, 14):
        for dtype in (F64, torch.float32):
            method = methods.create(name, t)
            for s, j in enumerate(sequence(kind, t, steps=3)):
                direction, weights = method.aggregate(j.to(dtype), step_losses(t, s).to(dtype))
                assert direction.dtype == dtype and weights.dtype == dtype
                assert direction.shape == (j.shape[1],) and weights.shape == (t,)
                assert torch.isfinite(direction).all() and torch.isfinite(weights).all()
                if kind == "zero":
                    assert torch.equal(direction, torch.zeros_like(direction))


@pytest.mark.parametrize("name", ["gradvac", "excess_mtl"])
def test_direction_is_weights_at_jacobian(name: str) -> None:
    method = methods.create(name, 5)
    for s, j in enumerate(sequence("random", 5)):
        direction, weights = method.aggregate(j, step_losses(5, s))
        torch.testing.assert_close(direction, weights @ j, atol=1e-12, rtol=1e-12)


def save_and_load(method: GradientAggregator, **hp) -> GradientAggregator:
    """A new instance loaded from ``method``'s checkpoint, through ``torch.save`` /
    ``torch.load(weights_only=True)`` as the training loop's checkpoints."""
    buffer = io.BytesIO()
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    twin = methods.create(method.name, method.num_tasks, **hp)
    twin.load_state_dict(torch.load(buffer, weights_only=True))
    return twin


@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("gradvac", {}),
        ("gradvac", {"seed": 3, "beta": 0.2}),
        ("excess_mtl", {}),
        ("excess_mtl", {"n_warmup_steps": 5, "robust_step_size": 0.1}),
        ("db_mtl", {}),
        ("db_mtl", {"beta_sigma": 0.5}),
        ("moco", {}),
        ("moco", {"simplex": "softmax", "rho": 0.2}),
        ("excess_mtl", {"update_every": 2, "ema": 0.5}),
    ],
)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_checkpoint_round_trip_continues_bit_identically(name: str, hp: dict, dtype) -> None:
    """Saved after 3 steps (one with a task absent), the loaded twin continues exactly as the
    original. GradVac without ``seed`` draws from the global RNG, which the training loop
    checkpoints: both runs get the same RNG state before each step."""
    t = 4
    js = [j.to(dtype) for j in sequence("correlated", t, steps=7)]
    presence = [[True] * t, [True, False, True, True], [True] * t] + [[True] * t] * 4
    original = methods.create(name, t, **hp)
    for s in range(3):
        torch.manual_seed(100 + s)
        original.aggregate(js[s], step_losses(t, s).to(dtype), present=torch.tensor(presence[s]))
    twin = save_and_load(original, **hp)
    for s in range(3, 7):
        present = torch.tensor(presence[s])
        torch.manual_seed(100 + s)
        a = original.aggregate(js[s], step_losses(t, s).to(dtype), present=present)
        torch.manual_seed(100 + s)
        b = twin.aggregate(js[s], step_losses(t, s).to(dtype), present=present)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), s
    for key, value in original.state_dict()["state"].items():
        other = twin.state_dict()["state"][key]
        if isinstance(value, Tensor):
            torch.testing.assert_close(other, value, rtol=0, atol=0, equal_nan=True, msg=key)
        else:
            assert value == other, key


@pytest.mark.parametrize("name", NAMES)
def test_no_task_present_changes_nothing(name: str) -> None:
    method = methods.create(name, 3)
    j = make_jacobian("random", 3)
    method.aggregate(j, step_losses(3, 0))
    before = method.state_dict()["state"]
    direction, weights = method.aggregate(j, torch.zeros(3, dtype=F64), present=torch.zeros(3) > 0)
    assert torch.equal(direction, torch.zeros_like(direction))
    assert torch.equal(weights, torch.zeros_like(weights))
    after = method.state_dict()["state"]
    assert after.keys() == before.keys()
    for key in before:
        if isinstance(before[key], Tensor):
            assert torch.equal(after[key], before[key]), key
        else:
            assert after[key] == before[key], key


@pytest.mark.parametrize("name", ["excess_mtl", "db_mtl", "moco"])
def test_jacobian_of_another_width_is_refused(name: str) -> None:
    method = methods.create(name, 2)
    method.aggregate(torch.ones(2, 5, dtype=F64), ones(2))
    with pytest.raises(ValueError, match=f"method '{name}': the Jacobian has 6 columns but"):
        method.aggregate(torch.ones(2, 6, dtype=F64), ones(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_matches_cpu(name: str) -> None:
    """The [T, n] state lives on J's device; the CPU and CUDA runs agree."""
    hp = {"seed": 0} if name == "gradvac" else {}
    cpu, cuda = methods.create(name, 5, **hp), methods.create(name, 5, **hp)
    for s, j in enumerate(sequence("correlated", 5)):
        a = cpu.aggregate(j, step_losses(5, s))
        b = cuda.aggregate(j.cuda(), step_losses(5, s).cuda())
        assert b[0].is_cuda and b[1].is_cuda
        torch.testing.assert_close(b[0].cpu(), a[0], atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(b[1].cpu(), a[1], atol=1e-10, rtol=1e-10)
    twin = save_and_load(cuda, **hp)
    j = make_jacobian("correlated", 5, seed=9).cuda()
    assert torch.equal(twin.aggregate(j, ones(5).cuda())[0], cuda.aggregate(j, ones(5).cuda())[0])


# --------------------------------------------------------------------------------------------
# GradVac
# --------------------------------------------------------------------------------------------


def torchjd_gradvac(js: list[Tensor], seed: int, **kwargs) -> tuple[list[Tensor], Tensor]:
    """torchjd's weights for each step (one stateful instance) and its final targets."""
    weighting = torchjd_aggregation.GradVacWeighting(**kwargs)
    torch.manual_seed(seed)
    out = [weighting(j @ j.T) for j in js]
    return out, weighting._phi_t


@pytest.mark.parametrize("kind", [k for k in (*KINDS, "correlated") if k != "rank1"])
@pytest.mark.parametrize("t", SIZES)
def test_gradvac_matches_torchjd_over_steps(kind: str, t: int) -> None:
    """Same global seed: the same task orders, weights and EMA targets at every step (to the
    round-off that rank-deficient Gramians amplify from step to step: 1e-16 to 1e-7 relative
    after 6 steps for rank 2 at T = 14)."""
    js = sequence(kind, t)
    theirs, targets = torchjd_gradvac(js, seed=t)
    method = GradVac(t)
    torch.manual_seed(t)
    for j, expected in zip(js, theirs, strict=True):
        direction, weights = method.aggregate(j, ones(t))
        torch.testing.assert_close(weights, expected, atol=0, rtol=1e-9)
        scale = float(expected.abs().max()) * float(j.norm())
        torch.testing.assert_close(direction, expected @ j, atol=1e-9 * scale, rtol=0)
    # with more tasks than the rank, a corrected g_i^VAC can nearly cancel: its cosine with the
    # next g_j is then round-off, which moves the weights by about the cancelled norm only but
    # that target by up to the cosine's range
    loose = kind in ("rank2", "wide") and t > 3
    torch.testing.assert_close(method.targets, targets, atol=1e-4 if loose else 1e-9, rtol=0)


@pytest.mark.parametrize("t", SIZES)
def test_gradvac_rank_one_keeps_cosines_in_range(t: int) -> None:
    """Parallel and opposite rows: a corrected ``g_i^VAC`` cancels to ~0 and its cosine with the
    next ``g_j`` is round-off. torchjd 0.18 takes it as it comes (its targets reach 1e13 at
    ``T = 14``); ours clamps it to ``[-1, 1]``, so the first step (targets 0) agrees and the
    targets stay cosines."""
    js = sequence("rank1", t, steps=6)
    theirs, targets = torchjd_gradvac(js, seed=t)
    method = GradVac(t)
    torch.manual_seed(t)
    _, weights = method.aggregate(js[0], ones(t))
    torch.testing.assert_close(weights, theirs[0], atol=0, rtol=1e-9)
    for j in js[1:]:
        direction, weights = method.aggregate(j, ones(t))
        assert torch.isfinite(weights).all() and float(weights.min()) >= 1.0 - 1e-12
        assert float(method.targets.abs().max()) <= 1.0
    if t == 14:
        assert float(targets.abs().max()) > 1e6  # torchjd's


def test_gradvac_own_generator_draws_as_the_seeded_global_one() -> None:
    """``seed=k`` reproduces torchjd under ``torch.manual_seed(k)``, whatever the global RNG
    does meanwhile; another ``beta`` as well."""
    js = sequence("correlated", 6, steps=6)
    theirs, targets = torchjd_gradvac(js, seed=11, beta=0.2)
    method = GradVac(6, seed=11, beta=0.2)
    torch.manual_seed(0)
    for j, expected in zip(js, theirs, strict=True):
        torch.rand(3)  # the global RNG moves: no effect
        torch.testing.assert_close(method.aggregate(j, ones(6))[1], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(method.targets, targets, atol=1e-12, rtol=0)


def test_gradvac_hand_derived_two_tasks() -> None:
    """``J = [[-4, 1, 1], [6, 1, 1]]``, ``G = [[18, -22], [-22, 38]]``, cosine
    ``phi = -22 / sqrt(684)``.

    Step 1 (targets 0): each gradient is made orthogonal to the other, as PCGrad:
    ``g_0 + 22/38 g_1`` and ``g_1 + 22/18 g_0``, so ``w = [1 + 22/18, 1 + 22/38]``; the targets
    become ``beta phi = phi / 2``. Step 2 (same ``J``): ``phi < phi / 2``, so ``g_0`` gets
    ``c g_1`` with ``c = w_1 - 1`` making the cosine of ``g_0 + c g_1`` and ``g_1`` exactly
    ``phi / 2`` (the paper's eq. 3), not 0; the targets become ``(phi/2 + phi) / 2``."""
    phi = -22.0 / math.sqrt(684.0)
    method = GradVac(2, seed=0)  # T = 2: one order per task, no randomness
    _, weights = method.aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(
        weights, torch.tensor([1 + 22 / 18, 1 + 22 / 38], dtype=F64), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(
        method.targets, torch.tensor([[0.0, phi / 2], [phi / 2, 0.0]], dtype=F64)
    )
    _, weights = method.aggregate(J_FIXED, ones(2))
    g0, g1 = J_FIXED
    for vac, other in ((g0 + (weights[1] - 1) * g1, g1), (g1 + (weights[0] - 1) * g0, g0)):
        cosine = float(vac @ other / (vac.norm() * other.norm()))
        assert cosine == pytest.approx(phi / 2, abs=1e-7)
    assert float(weights[0]) < 1 + 22 / 18 and float(weights[1]) < 1 + 22 / 38  # less than PCGrad
    torch.testing.assert_close(method.targets[0, 1], torch.tensor(0.75 * phi, dtype=F64))


def test_gradvac_raises_aligned_pairs_to_their_target() -> None:
    """Unlike PCGrad, a pair that does not conflict but is less aligned than its target
    (cosine 0.5 against 0.9) is corrected too, up to cosine 0.9."""
    j = torch.tensor([[1.0, 0.0, 0.0], [0.5, math.sqrt(0.75), 0.0]], dtype=F64)
    method = GradVac(2, seed=0)
    method.targets[:] = 0.9
    _, weights = method.aggregate(j, ones(2))
    vac = j[0] + (weights[1] - 1) * j[1]
    assert float(weights[1]) > 1.0
    assert float(vac @ j[1] / vac.norm()) == pytest.approx(0.9, abs=1e-7)
    assert float(method.targets[0, 1]) == pytest.approx(0.5 * 0.9 + 0.5 * 0.5)


def test_gradvac_absent_task_keeps_its_row_and_column() -> None:
    """The whole row AND column of an absent task's targets stay; the others' block is that
    of GradVac for them alone (tests/test_masked_tasks.py checks the rows)."""
    js = sequence("correlated", 4, steps=5)
    present = torch.tensor([True, False, True, True])
    method, alone = GradVac(4, seed=1), GradVac(3, seed=1)
    method.aggregate(js[0], ones(4))
    alone.targets = method.targets[[0, 2, 3]][:, [0, 2, 3]].clone()
    before = method.targets.clone()
    for j in js[1:]:
        _, weights = method.aggregate(j * present[:, None], ones(4), present=present)
        _, expected = alone.aggregate(j[[0, 2, 3]], ones(3))
        assert float(weights[1]) == 0.0
        torch.testing.assert_close(weights[[0, 2, 3]], expected, atol=0, rtol=0)
    assert torch.equal(method.targets[1], before[1]) and torch.equal(
        method.targets[:, 1], before[:, 1]
    )
    torch.testing.assert_close(method.targets[[0, 2, 3]][:, [0, 2, 3]], alone.targets)


# --------------------------------------------------------------------------------------------
# ExcessMTL
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [*KINDS, "correlated"])
@pytest.mark.parametrize("t", SIZES)
@pytest.mark.parametrize(
    "hp",
    [{"robust_step_size": 1.0}, {"robust_step_size": 0.05, "n_warmup_steps": 2}],
    ids=["torchjd-default", "warmup"],
)
def test_excess_mtl_matches_torchjd_over_steps(kind: str, t: int, hp: dict) -> None:
    """Weights, accumulated squared gradients and baselines equal to torchjd's at every step
    (ours start at 1 instead of ``1/T``: the softmax removes the difference, up to round-off)."""
    weighting = torchjd_aggregation.ExcessMTLWeighting(**hp)
    method = ExcessMTL(t, baseline_step="update", **hp)  # torchjd's first step
    for j in sequence(kind, t):
        expected = weighting(j)
        direction, weights = method.aggregate(j, ones(t))
        torch.testing.assert_close(weights, expected, atol=1e-12, rtol=1e-10)
        torch.testing.assert_close(direction, expected @ j, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(method.squared_sum, weighting._sq_grad_sum, atol=0, rtol=0)
    torch.testing.assert_close(method.baseline, weighting._initial_w, atol=0, rtol=1e-15)


def test_excess_mtl_hand_derived_two_tasks() -> None:
    """``J_1 = [[1, 0], [0, 2]]``, ``J_2 = [[2, 0], [0, 2]]``, ``eta = 1``. The AdaGrad sums
    are ``S_1 = [[1, 0], [0, 4]]``, ``S_2 = [[5, 0], [0, 8]]``, so (up to the 1e-7 under the
    roots) ``E_1 = [1, 4 / 2] = [1, 2]`` and ``E_2 = [4 / sqrt 5, 4 / sqrt 8]``, i.e. the
    ratios ``E_2 / E_1 = [1.788854, 0.707107]``: task 0's excess risk grew, task 1's fell.

    ``baseline_step: update`` (torchjd): step 1 ``w = softmax([1, 2])``, step 2
    ``w ~ w_1 exp(ratios)``. ``skip`` (official code): step 1 uniform, step 2
    ``softmax(ratios)``."""
    j1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    j2 = torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=F64)
    ratios = [4 / math.sqrt(5), 4 / math.sqrt(8) / 2]

    def softmax(x: list[float]) -> Tensor:
        e = torch.tensor([math.exp(v) for v in x], dtype=F64)
        return e / e.sum()

    method = ExcessMTL(2, robust_step_size=1.0, baseline_step="update")
    torch.testing.assert_close(method.aggregate(j1, ones(2))[1], softmax([1.0, 2.0]))
    w1 = softmax([1.0, 2.0])
    expected = w1 * torch.tensor([math.exp(r) for r in ratios], dtype=F64)
    torch.testing.assert_close(method.aggregate(j2, ones(2))[1], expected / expected.sum())
    torch.testing.assert_close(
        expected / expected.sum(), torch.tensor([0.520426, 0.479574], dtype=F64), atol=1e-6, rtol=0
    )

    method = ExcessMTL(2, robust_step_size=1.0, baseline_step="skip")
    torch.testing.assert_close(
        method.aggregate(j1, ones(2))[1], torch.tensor([0.5, 0.5], dtype=F64)
    )
    torch.testing.assert_close(method.aggregate(j2, ones(2))[1], softmax(ratios))
    torch.testing.assert_close(
        softmax(ratios), torch.tensor([0.746825, 0.253175], dtype=F64), atol=1e-6, rtol=0
    )


def test_excess_mtl_task_absent_from_the_warmup_takes_its_first_risk_as_baseline() -> None:
    """Warm-up of 2 steps without task 1: the others' baselines are their warm-up means, task
    1's its first present step's ``E``; its warm-up count stays 0 and its weight untouched
    while absent."""
    js = sequence("correlated", 3, steps=4)
    method = ExcessMTL(3, n_warmup_steps=2, baseline_step="skip")
    present = torch.tensor([True, False, True])
    risks = []
    for j in js[:2]:
        _, weights = method.aggregate(j * present[:, None], ones(3), present=present)
        torch.testing.assert_close(weights, torch.tensor([0.5, 0.0, 0.5], dtype=F64))
        risks.append(method.warmup_sum.clone())
    assert method.warmup_count.tolist() == [2, 0, 2] and float(method.warmup_sum[1]) == 0.0
    assert torch.isnan(method.baseline).all()
    method.aggregate(js[2], ones(3))
    torch.testing.assert_close(method.baseline[[0, 2]], risks[1][[0, 2]] / 2)
    s = js[2][1] ** 2  # task 1's first squared gradient is its whole AdaGrad sum
    torch.testing.assert_close(method.baseline[1], (s / torch.sqrt(s + 1e-7)).sum())


# --------------------------------------------------------------------------------------------
# DB-MTL
# --------------------------------------------------------------------------------------------


def libmtl_db_mtl(js: list[Tensor], losses: list[Tensor], beta: float, beta_sigma: float):
    """LibMTL's ``DB_MTL.backward`` transcribed (the gradients of ``log(L + 1e-8)`` given as
    ``g / (L + 1e-8)``): the new shared gradient of every step."""
    buffer = torch.zeros_like(js[0])
    out = []
    for step, (j, loss) in enumerate(zip(js, losses, strict=True), start=1):
        batch_grads = j / (loss + 1e-8)[:, None]
        buffer = batch_grads + (beta / step**beta_sigma) * (buffer - batch_grads)
        u_grad = buffer.norm(dim=-1)
        alpha = u_grad.max() / (u_grad + 1e-8)
        out.append(sum(alpha[i] * buffer[i] for i in range(j.shape[0])))
    return out


def test_db_mtl_hand_derived_two_tasks() -> None:
    """``beta = 0.9``, ``beta_sigma = 0`` (defaults): ``m <- 0.1 g / L + 0.9 m``.

    Step 1: ``J = [[3, 4, 0], [0, 0, 1]]``, ``L = [2, 0.5]``: ``g / L = [[1.5, 2, 0], [0, 0, 2]]``,
    ``m = [[0.15, 0.2, 0], [0, 0, 0.2]]`` (norms 0.25, 0.2), ``alpha = [1, 1.25]``,
    ``d = [0.15, 0.2, 0.25]``, weights ``alpha / L = [0.5, 2.5]``.
    Step 2: ``J = [[0, 4, 0], [0, 0, -3]]``, ``L = [1, 1]``: ``m = [[0.135, 0.58, 0],
    [0, 0, -0.12]]`` (norms ``sqrt(0.354625) = 0.595504``, 0.12), ``alpha = [1, 4.962533]``,
    ``d = [0.135, 0.58, -0.595504]``, weights ``alpha``."""
    method = DBMTL(2)
    j1 = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    direction, weights = method.aggregate(j1, torch.tensor([2.0, 0.5], dtype=F64))
    torch.testing.assert_close(direction, torch.tensor([0.15, 0.2, 0.25], dtype=F64))
    torch.testing.assert_close(weights, torch.tensor([0.5, 2.5], dtype=F64))
    j2 = torch.tensor([[0.0, 4.0, 0.0], [0.0, 0.0, -3.0]], dtype=F64)
    direction, weights = method.aggregate(j2, ones(2))
    norm = math.sqrt(0.354625)
    torch.testing.assert_close(direction, torch.tensor([0.135, 0.58, -norm], dtype=F64))
    torch.testing.assert_close(weights, torch.tensor([1.0, norm / 0.12], dtype=F64))
    torch.testing.assert_close(
        method.averages, torch.tensor([[0.135, 0.58, 0.0], [0.0, 0.0, -0.12]], dtype=F64)
    )
    assert not torch.allclose(direction, weights @ j2)  # the EMA: direction != w^T J


@pytest.mark.parametrize("t", [1, 2, 3, 5, 14])
@pytest.mark.parametrize(("beta", "beta_sigma"), [(0.9, 0.0), (0.5, 0.5), (0.0, 0.0)])
def test_db_mtl_matches_libmtl_over_steps(t: int, beta: float, beta_sigma: float) -> None:
    js = sequence("scaled", t, steps=6)
    losses = [step_losses(t, s) for s in range(6)]
    expected = libmtl_db_mtl(js, losses, beta, beta_sigma)
    method = DBMTL(t, beta=beta, beta_sigma=beta_sigma)
    for j, loss, d in zip(js, losses, expected, strict=True):
        direction, weights = method.aggregate(j, loss)
        torch.testing.assert_close(direction, d, atol=1e-12, rtol=1e-12)
        if beta == 0.0:  # no averaging: d = w^T J with w = alpha / L
            torch.testing.assert_close(direction, weights @ j, atol=1e-12, rtol=1e-12)
    assert method.steps == 6


def test_db_mtl_absent_task_is_left_out_of_the_max() -> None:
    """An absent task's (large) average does not set the norm the others are scaled to."""
    method = DBMTL(3, beta=0.0)
    big = torch.tensor([[1.0, 0.0], [0.0, 100.0], [2.0, 2.0]], dtype=F64)
    method.aggregate(big, ones(3))
    present = torch.tensor([True, False, True])
    j = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]], dtype=F64)
    direction, weights = method.aggregate(
        j, torch.tensor([1.0, 0.0, 1.0], dtype=F64), present=present
    )
    torch.testing.assert_close(direction, torch.tensor([2.0, 2.0], dtype=F64))
    torch.testing.assert_close(weights, torch.tensor([2.0, 0.0, 1.0], dtype=F64))
    torch.testing.assert_close(method.averages[1], big[1])


# --------------------------------------------------------------------------------------------
# MoCo
# --------------------------------------------------------------------------------------------


def libmtl_moco(
    js: list[Tensor],
    losses: list[Tensor],
    beta=0.5,
    beta_sigma=0.5,
    gamma=0.1,
    gamma_sigma=0.5,
    rho=0.0,
):
    """LibMTL's ``MoCo.backward`` transcribed: ``(new_grads, lambd)`` of every step."""
    t = js[0].shape[0]
    y = torch.zeros_like(js[0])
    lambd = torch.ones(t, dtype=js[0].dtype) / t
    out = []
    for step, (j, loss) in enumerate(zip(js, losses, strict=True), start=1):
        grads = j.clone()
        for tn in range(t):
            grads[tn] = grads[tn] / (grads[tn].norm() + 1e-8) * loss[tn]
        y = y - (beta / step**beta_sigma) * (y - grads)
        lambd = torch.softmax(
            lambd
            - (gamma / step**gamma_sigma) * (y @ y.t() + rho * torch.eye(t, dtype=y.dtype)) @ lambd,
            -1,
        )
        out.append((y.t() @ lambd, lambd))
    return out


def test_moco_hand_derived_two_tasks() -> None:
    """``J = [[3, 4, 0], [0, 0, 1]]``, ``L = [2, 1]``, defaults (projection).

    Step 1: ``H = [g_t / ||g_t|| L_t] = [[1.2, 1.6, 0], [0, 0, 1]]``, ``beta_1 = 0.5``:
    ``Y = H / 2 = [[0.6, 0.8, 0], [0, 0, 0.5]]``, ``Y Y^T = diag(1, 0.25)``; ``gamma_1 = 0.1``:
    ``lambda - 0.1 Y Y^T lambda = [0.45, 0.4875]``, projected (shift by ``(1 - 0.9375) / 2``):
    ``lambda = [0.48125, 0.51875]``, ``d = Y^T lambda = [0.28875, 0.385, 0.259375]``.
    Step 2, same ``J`` and ``L``: ``beta_2 = 0.5 / sqrt 2``, so ``Y = c H`` with
    ``c = 1 - 0.5 (1 - beta_2)``; ``Y Y^T = c^2 diag(4, 1)``; ``gamma_2 = 0.1 / sqrt 2``."""
    j = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    losses = torch.tensor([2.0, 1.0], dtype=F64)
    method = MoCo(2)
    direction, weights = method.aggregate(j, losses)
    torch.testing.assert_close(weights, torch.tensor([0.48125, 0.51875], dtype=F64))
    torch.testing.assert_close(direction, torch.tensor([0.28875, 0.385, 0.259375], dtype=F64))
    direction, weights = method.aggregate(j, losses)
    c = 1 - 0.5 * (1 - 0.5 / math.sqrt(2))
    gamma = 0.1 / math.sqrt(2)
    moved = [0.48125 * (1 - gamma * 4 * c * c), 0.51875 * (1 - gamma * c * c)]
    shift = (1 - sum(moved)) / 2
    lam = torch.tensor([moved[0] + shift, moved[1] + shift], dtype=F64)
    torch.testing.assert_close(weights, lam)
    h = torch.tensor([[1.2, 1.6, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    torch.testing.assert_close(direction, c * lam @ h)
    torch.testing.assert_close(method.tracked, c * h)
    assert not torch.allclose(direction, weights @ j)  # d = Y^T lambda, not lambda^T J


@pytest.mark.parametrize("t", [1, 2, 3, 5, 14])
@pytest.mark.parametrize("kind", ["correlated", "scaled", "one_zero_row"])
def test_moco_softmax_matches_libmtl_over_steps(t: int, kind: str) -> None:
    js = sequence(kind, t, steps=6)
    losses = [step_losses(t, s) for s in range(6)]
    hp = {"beta": 0.3, "beta_sigma": 0.2, "gamma": 0.5, "gamma_sigma": 0.1, "rho": 0.05}
    expected = libmtl_moco(js, losses, **hp)
    method = MoCo(t, simplex="softmax", **hp)
    for j, loss, (d, lam) in zip(js, losses, expected, strict=True):
        direction, weights = method.aggregate(j, loss)
        torch.testing.assert_close(weights, lam, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(direction, d, atol=1e-12, rtol=1e-12)


def test_moco_projection_stays_on_the_simplex_and_tracks_raw_gradients() -> None:
    """``normalization: none``: ``Y`` is the EMA of the raw rows (``Y = sum_k beta_k prod (1 -
    beta_i) J_k`` with constant ``beta``); lambda on the simplex, reaching its boundary."""
    t = 4
    js = sequence("scaled", t, steps=6)
    method = MoCo(t, normalization="none", beta=0.4, beta_sigma=0.0, gamma=1.0)
    y = torch.zeros_like(js[0])
    for j in js:
        _, weights = method.aggregate(j, ones(t))
        y = 0.6 * y + 0.4 * j
        assert float(weights.min()) >= 0.0 and float(weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(method.tracked, y)
    assert float(weights.min()) == 0.0  # rows of norm 1e-3 to 1e3: the big ones drop out


@pytest.mark.parametrize("seed", range(5))
def test_project_onto_simplex_kkt(seed: int) -> None:
    """``x = argmin ||x - v||`` on the simplex iff ``x >= 0``, ``sum x = 1`` and ``v - x`` is
    one constant ``tau`` on the support of ``x`` and ``<= tau`` off it."""
    v = 3 * torch.randn(7, generator=torch.Generator().manual_seed(seed), dtype=F64)
    x = project_onto_simplex(v)
    assert float(x.min()) >= 0.0 and float(x.sum()) == pytest.approx(1.0, abs=1e-14)
    gap = v - x
    support = x > 0
    tau = gap[support]
    torch.testing.assert_close(tau, tau[:1].expand_as(tau), atol=1e-14, rtol=0)
    assert bool((gap[~support] <= tau[0] + 1e-14).all())
    assert project_onto_simplex(torch.tensor([0.2, 0.5, 0.3], dtype=F64)).tolist() == [
        0.2,
        0.5,
        0.3,
    ]
    torch.testing.assert_close(
        project_onto_simplex(torch.tensor([2.0, 0.0], dtype=F64)),
        torch.tensor([1.0, 0.0], dtype=F64),
    )
    # MoCo's step with entries far above 1 (round-off leaves the simplex without the shift)
    moved = moco_lambda_step(
        torch.tensor([0.5, 0.5], dtype=F64),
        torch.diag(torch.tensor([1e18, 2e18], dtype=F64)),
        gamma=0.1,
        rho=0.0,
        simplex="projection",
    )
    assert moved.tolist() == [1.0, 0.0]


def test_moco_task_first_present_later_starts_at_one_over_present() -> None:
    """A task's lambda is NaN (not started) until it is present; then ``1 / P``."""
    method = MoCo(3, simplex="softmax")
    present = torch.tensor([True, False, True])
    j = make_jacobian("correlated", 3)
    method.aggregate(j * present[:, None], ones(3), present=present)
    assert math.isnan(float(method.lam[1])) and float(method.lam[[0, 2]].sum()) == pytest.approx(
        1.0
    )
    started = method.lam.clone()
    y = method.tracked.clone()
    _, weights = method.aggregate(j, ones(3))
    # the step from [lambda_0, 1/3, lambda_2] (sum 4/3), then the softmax
    h = j / (j.norm(dim=1, keepdim=True) + 1e-8)
    y = y - (0.5 / math.sqrt(2)) * (y - h)
    lam = torch.tensor([float(started[0]), 1 / 3, float(started[2])], dtype=F64)
    expected = torch.softmax(lam - (0.1 / math.sqrt(2)) * (y @ y.T) @ lam, 0)
    torch.testing.assert_close(weights, expected)
