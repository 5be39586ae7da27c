"""FairGrad, ConFIG, GradDrop, DualProj and PCD against torchjd 0.18.0, hand-derived values and
the properties they promise, on the Jacobian kinds of ``tests/jacobians.py`` with T from 1 to 14.

Where torchjd itself fails (noted at each test): FairGrad's ``least_squares`` stops without a
solution when none exists (a Pareto-stationary point: opposite gradients, most rank-deficient
kinds) or before converging on badly scaled rows; ConFIG's float32 ``pinv`` keeps a round-off
singular value on a rank-1 Jacobian with two rows and returns ~1e30.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

import methods
from methods import engine
from methods.config_aggregator import ConFIG, config_weights
from methods.dualproj import DualProj, dualproj_weights
from methods.fairgrad import FairGrad, fairgrad_weights
from methods.graddrop import GradDrop, sign_purity
from methods.gradient import GradientAggregator, solver_gramian
from methods.nash_mtl import nash_mtl_weights
from methods.pcd import PCD
from tests.jacobians import F64, J_FIXED, KINDS, make_jacobian, ones
from tests.toy_nets import tanh_net

tj = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("scipy.optimize")  # torchjd's FairGrad
pytest.importorskip("quadprog")  # torchjd's DualProj (QuadprogProjector)

TS = (1, 2, 3, 5, 8, 14)
ALL_CASES = [(kind, t) for kind in KINDS for t in TS]
CLASSES: tuple[type[GradientAggregator], ...] = (FairGrad, ConFIG, GradDrop, DualProj, PCD)
#: the methods whose update is ``w^T J`` (GradDrop's is not: per-coordinate masks)
LINEAR = (FairGrad, ConFIG, DualProj, PCD)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread for these tiny products: with two on a busy 2-core machine each
    small matmul waits for the second thread (about 20x slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def frobenius(j: Tensor) -> float:
    return max(float(j.norm()), 1e-150)


def close_directions(ours: Tensor, theirs: Tensor, j: Tensor, rel: float, what: str = "") -> None:
    """``||ours - theirs|| <= rel ||J||_F`` (the scale of every update here)."""
    gap = float((ours.double() - theirs.double()).norm())
    assert gap <= rel * frobenius(j.double()), (what, gap, frobenius(j))


# --------------------------------------------------------------------------------------------
# Common
# --------------------------------------------------------------------------------------------


def test_registered_with_attributes_and_defaults() -> None:
    common = {"update_every": 1, "ema": 0.0}
    expected = {
        "fairgrad": {"alpha": 1.0, "reg_eps": 1e-10, "max_iters": 100},
        "config": {},
        "graddrop": {"leak": 0.0},
        "dualproj": {"norm_eps": 1e-4, "reg_eps": 1e-4, "max_iters": 1000},
        "pcd": {"tau": 0.02, "beta": 0.999, "eps": 1e-8},
    }
    assert [c.name for c in CLASSES] == list(expected)
    for cls in CLASSES:
        assert methods._REGISTRY[cls.name] is cls
        assert cls.level == "parameters"
        assert cls.summary and "\n" not in cls.summary
        assert "arXiv:" in cls.reference and "torchjd 0.18" in cls.reference
        defaults = {"level": "parameters", **expected[cls.name], **common}
        assert cls.hyperparameter_defaults() == defaults
    info = {i.name: i for i in methods.describe()}
    assert info["graddrop"].levels == ("parameters", "representation")


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("fairgrad", {"alpha": -0.5}, "alpha must be a finite number >= 0 and <= 100, got -0.5"),
        ("fairgrad", {"alpha": 101}, "alpha must be"),
        ("fairgrad", {"alpha": math.inf}, "alpha must be"),
        ("fairgrad", {"alpha": "1"}, "alpha must be"),
        ("fairgrad", {"reg_eps": 0.0}, "reg_eps must be"),
        ("fairgrad", {"max_iters": 0}, "max_iters must be a positive int"),
        ("config", {"pref_vector": [1.0, 2.0]}, "unknown hyperparameter 'pref_vector'"),
        ("graddrop", {"leak": 1.5}, "leak must be a finite number >= 0 and <= 1, got 1.5"),
        ("graddrop", {"leak": -0.1}, "leak must be"),
        ("graddrop", {"ema": 0.5}, "ema must be 0 \\(graddrop's update is not a weighted sum"),
        ("graddrop", {"update_every": 2}, "update_every must be 1"),
        ("graddrop", {"f": "identity"}, "unknown hyperparameter 'f'"),
        ("dualproj", {"norm_eps": -1.0}, "norm_eps must be"),
        ("dualproj", {"reg_eps": 0.0}, "reg_eps must be a finite number > 0"),
        ("dualproj", {"max_iters": 2.5}, "max_iters must be a positive int"),
        ("pcd", {"tau": 1.5}, "tau must be a finite number >= 0 and <= 1, got 1.5"),
        ("pcd", {"beta": 1.0}, "beta must be a finite number >= 0 and < 1, got 1.0"),
        ("pcd", {"beta": -0.1}, "beta must be"),
        ("pcd", {"eps": -1e-8}, "eps must be a finite number >= 0"),
        ("pcd", {"level": "loss"}, "level must be one of parameters, representation"),
    ],
)
def test_bad_hyperparameters(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"^method '{name}': {match}") as exc:
        methods.create(name, 3, **kwargs)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("cls", LINEAR)
@pytest.mark.parametrize("kind", KINDS)
def test_direction_is_weights_at_jacobian(cls: type[GradientAggregator], kind: str) -> None:
    for t in TS:
        j = make_jacobian(kind, t)
        direction, weights = cls(t).aggregate(j, ones(t))
        assert torch.isfinite(weights).all() and torch.isfinite(direction).all(), t
        # FairGrad's weights reach ~1e8 at a Pareto-stationary point (see fairgrad_weights)
        scale = float(weights.abs().max()) if cls is FairGrad else 1.0
        close_directions(direction, weights @ j, j, 1e-12 * max(scale, 1.0), f"T={t}")


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kind", KINDS)
def test_float32_finite(cls: type[GradientAggregator], kind: str) -> None:
    for t in TS:
        j = make_jacobian(kind, t).float()
        direction, weights = cls(t).aggregate(j, torch.ones(t))
        assert direction.dtype == torch.float32 and weights.dtype == torch.float32
        assert torch.isfinite(direction).all() and torch.isfinite(weights).all(), t


@pytest.mark.parametrize("cls", (FairGrad, ConFIG, DualProj, GradDrop))
@pytest.mark.parametrize("kind", ["random", "scaled", "wide", "one_zero_row", "duplicate"])
def test_permuting_tasks_permutes_weights(cls: type[GradientAggregator], kind: str) -> None:
    """PCD is left out: task 0 is its primary (its own test permutes the secondaries only).
    GradDrop: the same seed gives the same ``U``; ``P`` sums the rows in another order, which
    could flip a comparison with ``U`` only at a tie (probability ~1e-15)."""
    t = 8
    j = make_jacobian(kind, t)
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    direction, weights = cls(t).aggregate(j, ones(t))
    torch.manual_seed(0)
    direction_p, weights_p = cls(t).aggregate(j[perm], ones(t))
    rtol = 1e-4 if (cls is FairGrad and kind == "wide") else 1e-7  # Pareto-stationary: ~1e4
    torch.testing.assert_close(weights_p, weights[perm], atol=1e-9, rtol=rtol)
    close_directions(direction_p, direction, j, 1e-9)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("t", [1, 2, 3, 14])
def test_zero_jacobian(cls: type[GradientAggregator], t: int) -> None:
    """torchjd: zero too for ConFIG, GradDrop (NaN sign purity, nothing kept), DualProj (weights
    1/T) and PCD; its FairGrad returns ``x`` wherever ``least_squares`` stops on
    ``0 - x^(-1/alpha)`` (no solution), ours 0."""
    j = torch.zeros(t, 7, dtype=F64)
    direction, weights = cls(t).aggregate(j, torch.zeros(t, dtype=F64))
    assert torch.equal(direction, torch.zeros(7, dtype=F64))
    assert torch.isfinite(weights).all()
    expected = {
        FairGrad: torch.zeros(t, dtype=F64),
        ConFIG: torch.zeros(t, dtype=F64),
        GradDrop: ones(t),  # nothing of a zero gradient is dropped
        DualProj: torch.full((t,), 1.0 / t, dtype=F64),
        PCD: torch.zeros(t, dtype=F64),
    }[cls]
    assert torch.equal(weights, expected)
    if cls is not FairGrad:
        reference = {
            ConFIG: tj.ConFIG,
            GradDrop: tj.GradDrop,
            DualProj: tj.DualProj,
            PCD: tj.PCD,
        }[cls]()
        assert torch.equal(reference(j), direction)


@pytest.mark.parametrize("cls", (FairGrad, ConFIG, DualProj, GradDrop))
def test_stateless_and_pure(cls: type[GradientAggregator]) -> None:
    j = make_jacobian("random", 5)
    m = cls(5)
    torch.manual_seed(1)
    first = m.aggregate(j, ones(5))
    torch.manual_seed(1)
    second = m.aggregate(j.clone(), ones(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert m.state_dict()["state"] == {}


# --------------------------------------------------------------------------------------------
# Through the engine, level "parameters", on a tiny network, against torchjd's mtl_backward
# --------------------------------------------------------------------------------------------


def _net_and_losses(seed: int = 0):
    torch.manual_seed(seed)
    net = tanh_net().double()
    x, y = torch.randn(16, 5, dtype=F64), torch.randn(16, 3, dtype=F64)
    rep, logits = net(x)
    return net, x, y, rep, ((logits - y) ** 2).mean(0)


@pytest.mark.parametrize("name", ["fairgrad", "config", "graddrop", "dualproj", "pcd"])
def test_engine_parameters_level_matches_torchjd(name: str) -> None:
    """``engine.backward`` writes the method's update into the trunk's ``.grad`` (as torchjd's
    ``mtl_backward`` + ``jac_to_grad`` with the same aggregator) and ``w_t grad L_t`` into head
    ``t`` (``heads: weighted``) or its own gradient (``heads: own``, as torchjd)."""
    from torchjd.autojac import jac_to_grad, mtl_backward

    reference = {
        "fairgrad": lambda: tj.FairGrad(alpha=1.0),
        "config": tj.ConFIG,
        "graddrop": tj.GradDrop,
        "dualproj": tj.DualProj,
        "pcd": tj.PCD,
    }[name]()
    for heads in ("own", "weighted"):
        net, x, y, _, losses = _net_and_losses()
        ref = tanh_net().double()
        ref.load_state_dict(net.state_dict())
        torch.manual_seed(3)
        weights = engine.backward(methods.create(name, 3), losses, model=net, heads=heads)
        assert weights.shape == (3,) and torch.isfinite(weights).all()

        rep = ref.trunk(x)
        ref_losses = [((ref.heads[t](rep)[:, 0] - y[:, t]) ** 2).mean() for t in range(3)]
        mtl_backward(
            ref_losses,
            features=rep,
            tasks_params=[list(ref.task_parameters(t)) for t in range(3)],
            shared_params=list(ref.shared_parameters()),
        )
        torch.manual_seed(3)
        if hasattr(reference, "reset"):
            reference.reset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            jac_to_grad(list(ref.shared_parameters()), reference)
        for p, q in zip(net.shared_parameters(), ref.shared_parameters(), strict=True):
            torch.testing.assert_close(
                p.grad, q.grad, atol=1e-6 * float(q.grad.abs().max()), rtol=1e-5
            )
        for t in range(3):
            factor = float(weights[t]) if heads == "weighted" else 1.0
            for p, q in zip(net.task_parameters(t), ref.task_parameters(t), strict=True):
                torch.testing.assert_close(p.grad, factor * q.grad, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------------------------
# FairGrad
# --------------------------------------------------------------------------------------------


def fairgrad_residual(g: Tensor, x: Tensor, alpha: float, ridge: float = 0.0) -> float:
    """``max_t |((G + ridge diag G) x)_t / x_t^(-1/alpha) - 1|`` over the non-zero rows."""
    alive = g.diagonal() > 0
    if not bool(alive.any()):
        return 0.0
    ga, xa = g[alive][:, alive], x[alive]
    lhs = ga @ xa + ridge * ga.diagonal() * xa
    return float((lhs / xa.pow(-1.0 / alpha) - 1.0).abs().max())


#: where ``G x = x^(-1/alpha)`` has no solution (0 is a non-negative combination of the rows)
PARETO_STATIONARY = {
    ("wide", 8),
    ("wide", 14),
    *[("rank1", t) for t in (2, 5, 8, 14)],
    *[("rank2", t) for t in (5, 8, 14)],
}


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("kind", KINDS)
def test_fairgrad_solves_its_system(alpha: float, kind: str) -> None:
    """Ours solves ``(G + rho diag G) x = x^(-1/alpha)`` (the ridge ``rho = 1e-10``) to round-off,
    hence ``G x = x^(-1/alpha)`` to ~1e-10 where a solution exists (to 1e-5 on ``scaled``,
    whose ``(G x)_t`` cancel: 1e6 between row norms); where none exists (listed,
    Pareto-stationary) the ridge's solution is found up to the cancellation in its huge
    weights. A zero row gets weight 0."""
    for t in TS:
        g = solver_gramian(make_jacobian(kind, t))
        x = fairgrad_weights(g, alpha=alpha)
        assert torch.isfinite(x).all(), t
        assert torch.equal(x[g.diagonal() == 0], torch.zeros_like(x[g.diagonal() == 0])), t
        assert bool((x[g.diagonal() > 0] > 0).all()), t
        ridged, plain = fairgrad_residual(g, x, alpha, 1e-10), fairgrad_residual(g, x, alpha)
        if (kind, t) in PARETO_STATIONARY:
            assert ridged <= 1e-4 and plain > 0.1, (t, ridged, plain)  # the system: no solution
        else:
            assert ridged <= 1e-9 and plain <= (1e-4 if kind == "scaled" else 1e-9), (t, plain)


@pytest.mark.parametrize("alpha", [0.05, 100.0])
def test_fairgrad_extreme_alpha(alpha: float) -> None:
    """Far from 1: finite everywhere (float64 and float32), solved on the benign kinds (on
    ``scaled`` the smallest tasks' targets fall below the round-off of ``G x``)."""
    for kind in KINDS:
        for t in TS:
            j = make_jacobian(kind, t)
            for jj in (j.float(), j):
                ones_ = torch.ones(t, dtype=jj.dtype)
                direction, x = FairGrad(t, alpha=alpha).aggregate(jj, ones_)
                assert torch.isfinite(x).all() and torch.isfinite(direction).all(), (kind, t)
            if kind in ("random", "duplicate", "one_zero_row"):
                residual = fairgrad_residual(solver_gramian(j), x, alpha, 1e-10)
                assert residual <= 1e-9, (kind, t, residual)


def _torchjd_fairgrad(g: Tensor, alpha: float) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tj.FairGradWeighting(alpha)(g)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("kind", KINDS)
def test_fairgrad_matches_torchjd(alpha: float, kind: str) -> None:
    """Where torchjd's ``least_squares`` converged (relative residual <= 1e-8), the same weights
    on the non-zero rows and the same update. A zero row: torchjd's weight grows to wherever
    its iterations stop (the row adds nothing), ours is 0. Badly scaled rows (``scaled``, T >= 3):
    torchjd stops early (tolerances 1e-8 on the unscaled ``G``); ours has the smaller residual.
    Pareto-stationary cases: neither has a solution; torchjd is not run (it spends its 100 T
    evaluations, ~1 s)."""
    for t in TS:
        if (kind, t) in PARETO_STATIONARY or (kind == "scaled" and t > 3):
            continue  # no solution, or torchjd too slow to compare (see the docstring)
        j = make_jacobian(kind, t)
        g = solver_gramian(j)
        direction, ours = FairGrad(t, alpha=alpha).aggregate(j, ones(t))
        theirs = _torchjd_fairgrad(g, alpha)
        alive = g.diagonal() > 0
        if kind == "zero":
            assert torch.equal(direction, torch.zeros_like(direction))
        elif fairgrad_residual(g, theirs, alpha) <= 1e-8:
            torch.testing.assert_close(ours[alive], theirs[alive], rtol=1e-6, atol=0, msg=str(t))
            close_directions(direction, theirs @ j, j, 1e-6 * float(ours.abs().max()), str(t))
        else:
            assert kind == "scaled", t
            assert fairgrad_residual(g, ours, alpha) < fairgrad_residual(g, theirs, alpha), t


def test_fairgrad_torchjd_converges_where_expected() -> None:
    """The comparison above is not vacuous: torchjd converges on these (alpha = 1)."""
    for kind, t in [("random", 14), ("duplicate", 8), ("one_zero_row", 5), ("rank1", 3)]:
        g = solver_gramian(make_jacobian(kind, t))
        assert fairgrad_residual(g, _torchjd_fairgrad(g, 1.0), 1.0) <= 1e-8


@pytest.mark.parametrize("alpha", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("t", [1, 2, 5])
def test_fairgrad_hand_derived(alpha: float, t: int) -> None:
    """Orthogonal rows of norms ``n_t``: ``n_t^2 x_t = x_t^(-1/alpha)``, so
    ``x_t = n_t^(-2 alpha / (alpha + 1))`` (``1 / n_t`` for ``alpha = 1``). ``T`` identical
    rows ``g``: by symmetry ``T ||g||^2 x = x^(-1/alpha)``, so
    ``x = (T ||g||^2)^(-alpha / (alpha + 1))``."""
    norms = torch.tensor([0.5, 2.0, 3.0, 1.0, 7.0][:t], dtype=F64)
    j = torch.diag(norms) @ torch.eye(t, 6, dtype=F64)
    _, x = FairGrad(t, alpha=alpha).aggregate(j, ones(t))
    torch.testing.assert_close(x, norms.pow(-2 * alpha / (alpha + 1)), rtol=1e-9, atol=0)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    _, x = FairGrad(t, alpha=alpha).aggregate(g.repeat(t, 1), ones(t))
    expected = (t * float(g @ g)) ** (-alpha / (alpha + 1))
    torch.testing.assert_close(x, torch.full((t,), expected, dtype=F64), rtol=1e-8, atol=0)


def test_fairgrad_alpha_zero_is_the_mean_and_alpha_one_is_nash_mtl() -> None:
    j = make_jacobian("random", 6)
    direction, weights = FairGrad(6, alpha=0.0).aggregate(j, ones(6))
    torch.testing.assert_close(weights, torch.full((6,), 1 / 6, dtype=F64))
    assert torch.equal(weights, tj.FairGradWeighting(0.0)(j @ j.T))  # torchjd's special case
    for kind in ("random", "scaled", "one_zero_row", "duplicate"):  # (where a solution exists)
        g = solver_gramian(make_jacobian(kind, 5))
        nash = nash_mtl_weights(g, max_norm=0.0)  # G alpha = 1 / alpha, the same ridge
        torch.testing.assert_close(fairgrad_weights(g, alpha=1.0), nash, rtol=1e-6, atol=0)


def test_fairgrad_scaling() -> None:
    """``J -> s J`` (``G -> s^2 G``): ``x -> s^(-2 alpha / (alpha + 1)) x``."""
    j = make_jacobian("random", 5)
    for alpha in (0.5, 2.0):
        _, x = FairGrad(5, alpha=alpha).aggregate(j, ones(5))
        for s in (1e-5, 1e4):
            _, xs = FairGrad(5, alpha=alpha).aggregate(s * j, ones(5))
            torch.testing.assert_close(xs, s ** (-2 * alpha / (alpha + 1)) * x, rtol=1e-9, atol=0)


# --------------------------------------------------------------------------------------------
# ConFIG
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", (*KINDS, "correlated"))
def test_config_matches_torchjd(kind: str) -> None:
    """Float64: to 1e-12 ``||J||``. Float32 (ours from the float32 Gramian, torchjd's from the
    float32 ``pinv``): both within 2e-5 ``||J||`` of torchjd's float64 update (the worst,
    ``correlated`` with ``T = 14``, is ill-conditioned: about 8e-6 for both)."""
    for t in TS:
        j = make_jacobian(kind, t)
        direction, _ = ConFIG(t).aggregate(j, ones(t))
        theirs = tj.ConFIG()(j)
        close_directions(direction, theirs, j, 1e-12, f"T={t}")
        d32, _ = ConFIG(t).aggregate(j.float(), torch.ones(t))
        close_directions(d32, theirs, j, 2e-5, f"T={t} float32")
        close_directions(tj.ConFIG()(j.float()), theirs, j, 2e-5, f"T={t} torchjd float32")


def test_config_hand_derived() -> None:
    """Orthogonal rows ``g_1 = (1, 0)``, ``g_2 = (0, 2)``: ``U = I``, ``b = U^+ 1 = (1, 1)``,
    length ``(1 + 2) / sqrt 2``, ``d = 3/2 (1, 1) = 1.5 g_1 + 0.75 g_2``. One task: ``d = g``."""
    j = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=F64)
    direction, weights = ConFIG(2).aggregate(j, ones(2))
    torch.testing.assert_close(direction, torch.tensor([1.5, 1.5, 0.0], dtype=F64))
    torch.testing.assert_close(weights, torch.tensor([1.5, 0.75], dtype=F64))
    g = torch.tensor([[3.0, -1.0, 2.0]], dtype=F64)
    direction, weights = ConFIG(1).aggregate(g, ones(1))
    torch.testing.assert_close(direction, g[0])
    torch.testing.assert_close(weights, ones(1))


@pytest.mark.parametrize(("kind", "t"), [("random", 3), ("random", 14), ("scaled", 8)])
def test_config_equal_cosines(kind: str, t: int) -> None:
    """Independent rows: ``U b = 1``, so ``d`` has the same positive cosine with every task
    gradient (conflict-free); its length is ``sum_t g_t . d / ||d||``."""
    j = make_jacobian(kind, t)
    direction, _ = ConFIG(t).aggregate(j, ones(t))
    cosines = (j @ direction) / (j.norm(dim=1) * direction.norm())
    torch.testing.assert_close(cosines, cosines[0].expand(t), rtol=1e-9, atol=0)
    assert float(cosines[0]) > 0
    unit = direction / direction.norm()
    torch.testing.assert_close(direction.norm(), (j @ unit).sum(), rtol=1e-12, atol=0)


def test_config_zero_row_is_left_out() -> None:
    j = make_jacobian("one_zero_row", 5)
    _, weights = ConFIG(5).aggregate(j, ones(5))
    keep = [0, 1, 3, 4]
    assert float(weights[2]) == 0.0
    _, alone = ConFIG(4).aggregate(j[keep], ones(4))
    torch.testing.assert_close(weights[keep], alone, rtol=1e-12, atol=0)


def test_config_rank_cutoff_follows_the_dtype() -> None:
    g = solver_gramian(make_jacobian("rank2", 5))
    w64 = config_weights(g, rank_rtol=10 * 5 * torch.finfo(F64).eps)
    w_loose = config_weights(g, rank_rtol=1e-6)
    torch.testing.assert_close(w64, w_loose, rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# GradDrop
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_graddrop_matches_torchjd_exactly(kind: str) -> None:
    """The same seed, the same draws: bit-identical to torchjd (float64 and float32), and the
    global generator left where torchjd leaves it."""
    for t in TS:
        for j in (make_jacobian(kind, t), make_jacobian(kind, t).float()):
            for seed in (0, 1):
                torch.manual_seed(seed)
                expected = tj.GradDrop()(j)
                after_theirs = torch.rand(3)
                torch.manual_seed(seed)
                direction, _ = GradDrop(t).aggregate(j, torch.ones(t, dtype=j.dtype))
                assert torch.equal(direction, expected), (t, j.dtype, seed)
                assert torch.equal(torch.rand(3), after_theirs)


@pytest.mark.parametrize("leak", [0.3, 1.0])
def test_graddrop_leak_matches_torchjd(leak: float) -> None:
    t = 5
    j = make_jacobian("random", t)
    torch.manual_seed(2)
    expected = tj.GradDrop(leak=torch.full((t,), leak, dtype=F64))(j)
    torch.manual_seed(2)
    direction, weights = GradDrop(t, leak=leak).aggregate(j, ones(t))
    torch.testing.assert_close(direction, expected, rtol=1e-14, atol=1e-15)
    assert bool((weights >= leak - 1e-12).all()) and bool((weights <= 1 + 1e-12).all())
    if leak == 1.0:  # everything passes: the sum
        torch.testing.assert_close(direction, j.sum(dim=0))
        torch.testing.assert_close(weights, ones(t))


def test_graddrop_keeps_one_sign_per_coordinate_with_probability_p() -> None:
    """Without leak every coordinate of ``d`` is the sum of the positive entries of its column
    or of the negative ones, the positive ones with probability ``P`` (sign purity). Five
    columns, tiled 4000 times: the share of positive picks is ``P`` within 5 binomial sd."""
    block = torch.tensor(
        [[1.0, -1.0, 2.0, 0.5, -3.0], [1.0, 1.0, -2.0, 0.5, -1.0], [-0.5, -0.5, 1.0, 0.5, 2.0]],
        dtype=F64,
    )
    reps = 4000
    j = block.repeat(1, reps)
    torch.manual_seed(11)
    direction, weights = GradDrop(3).aggregate(j, ones(3))
    positive = j.clamp(min=0).sum(dim=0)
    negative = j.clamp(max=0).sum(dim=0)
    picked_positive = direction == positive
    assert bool((picked_positive | (direction == negative)).all())  # sign purity
    p = sign_purity(block)
    torch.testing.assert_close(p, torch.tensor([0.8, 0.4, 0.6, 1.0, 1 / 3], dtype=F64))
    share = picked_positive.view(reps, 5).double().mean(dim=0)
    sd = (p * (1 - p) / reps).sqrt()
    assert bool(((share - p).abs() <= 5 * sd + 1e-12).all()), (share, p)
    # the reported weights: the share of each ||g_t||^2 that was kept
    kept = torch.where(picked_positive, (j > 0).double(), (j < 0).double())  # the masks, read off d
    expected = (kept * j * j).sum(dim=1) / (j * j).sum(dim=1)
    torch.testing.assert_close(weights, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["random", "rank1", "one_zero_row"])
def test_graddrop_no_conflict_and_single_task(kind: str) -> None:
    """Rows of one sign pattern (``|J|`` here, and a single task): ``P`` is 0 or 1, nothing is
    dropped: ``d`` is the sum and the weights are 1."""
    for t in (1, 5):
        j = make_jacobian(kind, t).abs()
        direction, weights = GradDrop(t).aggregate(j, ones(t))
        torch.testing.assert_close(direction, j.sum(dim=0), rtol=1e-15, atol=0)
        torch.testing.assert_close(weights, ones(t))
    g = make_jacobian("random", 1)
    direction, weights = GradDrop(1).aggregate(g, ones(1))
    assert torch.equal(direction, g[0]) and torch.equal(weights, ones(1))


def test_graddrop_masked_task_changes_nothing_for_the_others() -> None:
    """An absent task (zero row, weight 0) adds nothing to either sum of ``P``: the same draw
    gives the same ``d`` as GradDrop on the present rows only."""
    j = make_jacobian("random", 4)
    present = torch.tensor([True, False, True, True])
    j[1] = 0.0
    torch.manual_seed(6)
    direction, weights = GradDrop(4).aggregate(j, ones(4), present=present)
    torch.manual_seed(6)
    alone, alone_w = GradDrop(3).aggregate(j[present], ones(3))
    assert torch.equal(direction, alone) and float(weights[1]) == 0.0
    assert torch.equal(weights[present], alone_w)


# --------------------------------------------------------------------------------------------
# DualProj
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dualproj_matches_torchjd(kind: str) -> None:
    """The same regularised QP (trace normalisation, ``norm_eps = reg_eps = 1e-4``): quadprog's
    solution and ours agree to 1e-9 (weights) and 1e-9 ``||J||`` (update)."""
    for t in TS:
        j = make_jacobian(kind, t)
        direction, weights = DualProj(t).aggregate(j, ones(t))
        close_directions(direction, tj.DualProj()(j), j, 1e-9, f"T={t}")
        expected = tj.DualProjWeighting()(j @ j.T)
        torch.testing.assert_close(weights, expected, rtol=1e-7, atol=1e-9, msg=f"T={t}")
        assert bool((weights >= 1.0 / t - 1e-12).all()), t


def test_dualproj_hand_derived() -> None:
    """``J = [[-4, 1, 1], [6, 1, 1]]``, ``g0 = (1, 1, 1)``, ``J g0 = (-2, 8)``: only ``g_1``
    conflicts, so ``pi(g0) = g0 + 2/18 g_1 = (5/9, 10/9, 10/9)`` (``g_2 . d = 50/9 > 0``),
    ``w = (1/2 + 1/9, 1/2)``; exact with a negligible ridge, within 1e-3 with the default."""
    expected = torch.tensor([5 / 9, 10 / 9, 10 / 9], dtype=F64)
    direction, weights = DualProj(2, reg_eps=1e-13).aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(direction, expected, rtol=0, atol=1e-9)
    torch.testing.assert_close(weights, torch.tensor([11 / 18, 0.5], dtype=F64), rtol=0, atol=1e-9)
    direction, _ = DualProj(2).aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(direction, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize(("kind", "t"), [("random", 5), ("scaled", 8), ("rank2", 14)])
def test_dualproj_conflicts_with_no_task(kind: str, t: int) -> None:
    """``J d >= 0`` (exactly with a negligible ridge); ``d = g0`` when ``g0`` conflicts with
    no task (``|J|``: all rows agree)."""
    j = make_jacobian(kind, t)
    direction, _ = DualProj(t, reg_eps=1e-13).aggregate(j, ones(t))
    assert float((j @ direction).min()) >= -1e-9 * frobenius(j) ** 2
    agree = j.abs()
    direction, weights = DualProj(t).aggregate(agree, ones(t))
    torch.testing.assert_close(weights, torch.full((t,), 1.0 / t, dtype=F64))
    g = solver_gramian(agree)
    assert torch.equal(dualproj_weights(g), weights)


# --------------------------------------------------------------------------------------------
# PCD
# --------------------------------------------------------------------------------------------


def _pcd_sequence(kind: str, t: int, steps: int = 4) -> list[Tensor]:
    return [make_jacobian(kind, t, seed=s) * (1.0 + 0.5 * s) for s in range(steps)]


@pytest.mark.parametrize("kind", KINDS)
def test_pcd_matches_torchjd_over_steps(kind: str) -> None:
    """Four steps (the moving average at work), the same updates as torchjd's ``PCD`` and the
    same weights as ``PCDWeighting`` (float64, and float32 with its looser dependence tolerance)."""
    for t in TS:
        for dtype in (F64, torch.float32):
            ours, theirs, weighting = PCD(t), tj.PCD(), tj.PCDWeighting()
            rel = 1e-12 if dtype == F64 else 1e-5
            for step, j in enumerate(_pcd_sequence(kind, t)):
                j = j.to(dtype)
                what = f"T={t} {dtype} step {step}"
                direction, weights = ours.aggregate(j, torch.ones(t, dtype=dtype))
                close_directions(direction, theirs(j), j, rel, what)
                expected = weighting(j @ j.T)
                atol = rel * float(expected.abs().max())
                torch.testing.assert_close(weights, expected, rtol=rel, atol=atol, msg=what)


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.0])
def test_pcd_tau_matches_torchjd(tau: float) -> None:
    """Larger ``tau``: more constraints active (and infeasible ones dropped)."""
    for kind, t in [("random", 5), ("scaled", 8), ("rank2", 8), ("duplicate", 14)]:
        ours, theirs = PCD(t, tau=tau, beta=0.9, eps=0.0), tj.PCD(tau=tau, beta=0.9, eps=0.0)
        for j in _pcd_sequence(kind, t, steps=3):
            direction, _ = ours.aggregate(j, ones(t))
            close_directions(direction, theirs(j), j, 1e-12)


def test_pcd_hand_derived() -> None:
    """First step, ``eps = 0``: the bias-corrected average is ``||g_t||^2``, so ``~g_t`` are unit
    vectors. ``g_0 = (2, 0)``, ``g_1 = (-1, 1)``: ``~g_1 . ~g_0 = -1/sqrt 2 < tau``, active:
    ``~d = ~g_0 + mu ~g_1`` with ``-1/sqrt 2 + mu = tau``; the update is ``~d`` at the norm of
    ``g_0`` (2): ``d = 2 ~d / ||~d||``, ``w = (1/2, mu / sqrt 2) 2 / ||~d||``."""
    tau = 0.02
    r2 = math.sqrt(2.0)
    mu = tau + 1.0 / r2
    d_tilde = torch.tensor([1.0 - mu / r2, mu / r2], dtype=F64)
    j = torch.tensor([[2.0, 0.0], [-1.0, 1.0]], dtype=F64)
    direction, weights = PCD(2, eps=0.0).aggregate(j, ones(2))
    torch.testing.assert_close(direction, 2.0 * d_tilde / d_tilde.norm(), rtol=1e-12, atol=1e-15)
    expected_w = torch.tensor([0.5, mu / r2], dtype=F64) * 2.0 / d_tilde.norm()
    torch.testing.assert_close(weights, expected_w, rtol=1e-12, atol=0)
    assert float(((j[1] / j[1].norm()) @ direction) / direction.norm() * d_tilde.norm()) == (
        pytest.approx(tau, abs=1e-12)
    )
    # a secondary that does not conflict: its constraint is inactive, d = g_0
    j = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=F64)
    direction, weights = PCD(2).aggregate(j, ones(2))
    torch.testing.assert_close(direction, j[0], rtol=1e-12, atol=0)
    assert float(weights[1]) == 0.0


def test_pcd_special_cases() -> None:
    """Infeasible constraints (opposite secondaries) are dropped: ``d = g_0``. A zero primary
    gradient: ``d = 0`` (the averages are still updated). One task: ``d = g_0``."""
    j = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=F64)
    direction, weights = PCD(3).aggregate(j, ones(3))
    torch.testing.assert_close(direction, j[0], rtol=1e-12, atol=0)
    assert torch.equal(direction, tj.PCD()(j))
    j = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, -1.0]], dtype=F64)
    method = PCD(3)
    direction, weights = method.aggregate(j, ones(3))
    assert torch.equal(direction, torch.zeros(2, dtype=F64)) and torch.equal(weights, 0 * weights)
    assert method.state_dict()["state"]["updates"].tolist() == [1, 1, 1]
    g = make_jacobian("random", 1)
    direction, weights = PCD(1).aggregate(g, ones(1))
    torch.testing.assert_close(direction, g[0], rtol=1e-14, atol=0)


def test_pcd_permuting_secondaries_permutes_weights() -> None:
    t = 8
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(t - 1)])
    a, b = PCD(t, tau=0.3), PCD(t, tau=0.3)
    for j in _pcd_sequence("random", t):
        direction, weights = a.aggregate(j, ones(t))
        direction_p, weights_p = b.aggregate(j[perm], ones(t))
        torch.testing.assert_close(weights_p, weights[perm], rtol=1e-10, atol=1e-13)
        close_directions(direction_p, direction, j, 1e-12)


def test_pcd_checkpoint_round_trip_is_bit_identical() -> None:
    seq = _pcd_sequence("scaled", 5, steps=6)
    original = PCD(5, beta=0.9)
    for j in seq[:3]:
        original.aggregate(j, ones(5))
    state = original.state_dict()
    assert set(state["state"]) == {"sq_norm_ema", "updates"}
    twin = PCD(5, beta=0.9)
    twin.load_state_dict(state)
    for j in seq[3:]:
        a, b = original.aggregate(j, ones(5)), twin.aggregate(j, ones(5))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(original._sq_norm_ema, twin._sq_norm_ema)


def _restricted(method: PCD, idx: list[int]) -> PCD:
    state = method.state_dict()["state"]
    other = PCD(len(idx), **{k: getattr(method.hp, k) for k in ("tau", "beta", "eps")})
    other.load_state_dict(
        {"method": "pcd", "num_tasks": len(idx), "state": {k: v[idx] for k, v in state.items()}}
    )
    return other


def test_pcd_masked_tasks() -> None:
    """An absent secondary task: its average and count stay; the present tasks get the weights
    and the state of PCD built for them alone, from the same state. An absent primary: the
    update is 0 (no primary to follow) and the present tasks' averages are still updated."""
    t, masked = 4, 2
    others = [0, 1, 3]
    method = PCD(t, tau=0.3, beta=0.8)
    for s, j in enumerate(_pcd_sequence("random", t, steps=6)):
        if s % 2 == 0:
            method.aggregate(j, ones(t))
            continue
        alone = _restricted(method, others)
        before = method.state_dict()["state"]
        present = torch.ones(t, dtype=torch.bool)
        present[masked] = False
        jm = j.clone()
        jm[masked] = 0.0
        direction, weights = method.aggregate(jm, ones(t), present=present)
        direction_a, weights_a = alone.aggregate(j[others], ones(3))
        # (the Gramian of 4 rows and of 3 may round differently: 1 ulp)
        assert float(weights[masked]) == 0.0
        torch.testing.assert_close(weights[others], weights_a, rtol=1e-14, atol=0)
        close_directions(direction, direction_a, j, 1e-14)
        after = method.state_dict()["state"]
        alone_state = alone.state_dict()["state"]
        for key in ("sq_norm_ema", "updates"):
            assert torch.equal(after[key][masked], before[key][masked])
            torch.testing.assert_close(after[key][others], alone_state[key], rtol=1e-15, atol=0)
    j = make_jacobian("random", t)
    present = torch.tensor([False, True, True, True])
    j[0] = 0.0
    before = method.state_dict()["state"]
    direction, weights = method.aggregate(j, ones(t), present=present)
    assert torch.equal(direction, torch.zeros_like(direction))
    assert torch.equal(weights, torch.zeros(t, dtype=F64))
    after = method.state_dict()["state"]
    assert after["updates"].tolist() == [before["updates"][0].item()] + [
        v + 1 for v in before["updates"][1:].tolist()
    ]
