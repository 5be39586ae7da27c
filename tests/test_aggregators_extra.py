"""Gradient-level methods CAGrad, Aligned-MTL and Nash-MTL against hand-derived values, torchjd
0.18.0 (with its cagrad / nash-mtl extras: cvxpy, Clarabel, ECOS), scipy, and the properties they
promise."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

from methods.aligned_mtl import AlignedMTL, aligned_mtl_weights, balance_transformation
from methods.cagrad import CAGrad, cagrad_weights
from methods.gradient import GradientAggregator, solver_gramian
from methods.nash_mtl import NashMTL, nash_mtl_weights
from tests.jacobians import F64, J_FIXED, SIZES, cases, make_jacobian, ones

torchjd_aggregation = pytest.importorskip("torchjd.aggregation")
pytest.importorskip("cvxpy")  # torchjd's CAGrad and NashMTL need it (extras cagrad, nash-mtl)
scipy_optimize = pytest.importorskip("scipy.optimize")

CLASSES: tuple[type[GradientAggregator], ...] = (CAGrad, AlignedMTL, NashMTL)


def frobenius(j: Tensor) -> float:
    """``||J||_F`` (at least 1e-150): the scale of ``d``; its square is that of ``G``."""
    return max(float(j.norm()), 1e-150)


def unit(v: Tensor) -> Tensor:
    return v / v.norm()


def embed(rows: list[list[float]], n: int = 6) -> Tensor:
    """The rows padded with zeros to ``n`` columns (hand-derived cases in a larger space)."""
    j = torch.zeros(len(rows), n, dtype=F64)
    j[:, : len(rows[0])] = torch.tensor(rows, dtype=F64)
    return j


# --------------------------------------------------------------------------------------------
# Common
# --------------------------------------------------------------------------------------------


def test_class_attributes_and_defaults() -> None:
    assert [c.name for c in CLASSES] == ["cagrad", "aligned_mtl", "nash_mtl"]
    for cls in CLASSES:
        assert cls.level == "parameters"
        assert isinstance(cls.summary, str) and "\n" not in cls.summary
    defaults = {cls.name: vars(cls.Hyperparameters()) for cls in CLASSES}
    assert defaults == {
        "cagrad": {"c": 0.4, "rescale": "1+c^2", "reg_eps": 1e-10, "norm_eps": 1e-4},
        "aligned_mtl": {"scale_mode": "min", "rank_rtol": 0.0},
        "nash_mtl": {"max_norm": 1.0, "reg_eps": 1e-10, "max_iters": 100},
    }


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("kind", ["random", "scaled", "wide", "one_zero_row"])
def test_permuting_tasks_permutes_weights(cls: type[GradientAggregator], kind: str) -> None:
    t = 8
    j = make_jacobian(kind, t)
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(5))
    direction, weights = cls(t).aggregate(j, ones(t))
    direction_p, weights_p = cls(t).aggregate(j[perm], ones(t))
    # solver round-off only; at the Pareto-stationary "wide" point Nash-MTL's weights are ~1e5,
    # set by the ridge and known to the round-off floor of its Newton solve only
    rtol = 1e-3 if (cls is NashMTL and kind == "wide") else 1e-5
    torch.testing.assert_close(weights_p, weights[perm], atol=1e-6, rtol=rtol)
    torch.testing.assert_close(direction_p, direction, atol=1e-7 * frobenius(j), rtol=1e-6)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("kind", "t"), [("random", 5), ("duplicate", 8), ("one_zero_row", 3)])
def test_direction_is_weights_at_jacobian_and_scaling(
    cls: type[GradientAggregator], kind: str, t: int
) -> None:
    """``d = w^T J``; all three are positively homogeneous: ``J -> s J`` keeps CAGrad's and
    Aligned-MTL's weights (``d -> s d``) and Nash-MTL's ``d`` (``alpha -> alpha / s``)."""
    j = make_jacobian(kind, t)
    method = cls(t) if cls is not NashMTL else cls(t, max_norm=0.0)
    direction, weights = method.aggregate(j, ones(t))
    torch.testing.assert_close(weights @ j, direction, atol=1e-12 * frobenius(j), rtol=0)
    for s in (1e-6, 1e4):
        direction_s, weights_s = method.aggregate(s * j, ones(t))
        if cls is NashMTL:
            torch.testing.assert_close(direction_s, direction, atol=1e-9, rtol=1e-9)
            torch.testing.assert_close(s * weights_s, weights, atol=1e-9, rtol=1e-9)
        else:
            torch.testing.assert_close(direction_s, s * direction, atol=1e-9 * s, rtol=1e-8)
            torch.testing.assert_close(weights_s, weights, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("t", [1, 2, 3, 14])
def test_zero_jacobian(cls: type[GradientAggregator], t: int) -> None:
    j = torch.zeros(t, 7, dtype=F64)
    direction, weights = cls(t).aggregate(j, torch.zeros(t, dtype=F64))
    assert torch.equal(direction, torch.zeros(7, dtype=F64))
    assert torch.isfinite(weights).all()


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("kind", "t"), cases())
def test_finite_on_every_kind(cls: type[GradientAggregator], kind: str, t: int) -> None:
    j = make_jacobian(kind, t)
    direction, weights = cls(t).aggregate(j, ones(t))
    assert torch.isfinite(direction).all() and torch.isfinite(weights).all()
    direction, weights = cls(t).aggregate(j.float(), torch.ones(t))  # float32 Gramian
    assert direction.dtype == torch.float32 and weights.dtype == torch.float32
    assert torch.isfinite(direction).all() and torch.isfinite(weights).all()


@pytest.mark.parametrize("cls", CLASSES)
def test_aggregate_is_pure(cls: type[GradientAggregator]) -> None:
    j = make_jacobian("random", 5)
    m = cls(5)
    first = m.aggregate(j, ones(5))
    second = m.aggregate(j.clone(), ones(5))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert m.state_dict()["state"] == {}


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (CAGrad, {"c": -0.1}, "c must be"),
        (CAGrad, {"rescale": "1+c2"}, "rescale must be one of none, 1\\+c\\^2, 1\\+c"),
        (CAGrad, {"reg_eps": 0.0}, "reg_eps must be"),
        (CAGrad, {"norm_eps": -1.0}, "norm_eps must be"),
        (AlignedMTL, {"scale_mode": "mean"}, "scale_mode must be one of min, median, rmse"),
        (AlignedMTL, {"rank_rtol": -1e-3}, "rank_rtol must be"),
        (NashMTL, {"max_norm": -1.0}, "max_norm must be"),
        (NashMTL, {"reg_eps": 0.0}, "reg_eps must be"),
        (NashMTL, {"max_iters": 0}, "max_iters must be a positive int"),
        (NashMTL, {"update_weights_every": 2}, "unknown hyperparameter 'update_weights_every'"),
    ],
)
def test_bad_hyperparameters(cls: type[GradientAggregator], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=f"method '{cls.name}': {match}"):
        cls(3, **kwargs)


# --------------------------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------------------------


def cagrad_dual(j: Tensor, w: Tensor, c: float) -> float:
    """``g_w . g0 + c ||g0|| ||g_w||`` for ``w`` on the simplex."""
    g0 = j.mean(dim=0)
    u = w @ j
    return float(u @ g0 + c * g0.norm() * u.norm())


def test_cagrad_fixed_value() -> None:
    """``g0 = (1, 1, 1)``, ``r = 0.4 sqrt(3)``. On the hull ``u = (x, 1, 1)``, ``x in [-4, 6]``,
    the dual ``x + 2 + r sqrt(x^2 + 2)`` has derivative ``>= 1 - r > 0``: ``u* = g_1`` and
    ``d = g0 + r g_1 / ||g_1|| = g0 + 0.4 / sqrt(6) g_1``."""
    k = 0.4 / math.sqrt(6.0)
    expected_w = torch.tensor([0.5 + k, 0.5], dtype=F64)
    expected = torch.tensor([1.0 - 4 * k, 1.0 + k, 1.0 + k], dtype=F64)
    torch.testing.assert_close(
        expected, torch.tensor([0.3468, 1.1633, 1.1633], dtype=F64), atol=1e-4, rtol=0
    )
    direction, weights = CAGrad(2, rescale="none").aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(direction, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(weights, expected_w, atol=1e-9, rtol=0)
    direction, weights = CAGrad(2).aggregate(J_FIXED, ones(2))  # the authors' 1 / (1 + c^2)
    torch.testing.assert_close(direction, expected / 1.16, atol=1e-9, rtol=0)
    torch.testing.assert_close(weights, expected_w / 1.16, atol=1e-9, rtol=0)
    direction, _ = CAGrad(2, rescale="1+c").aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(direction, expected / 1.4, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        torchjd_aggregation.CAGrad(c=0.4)(J_FIXED), expected, atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("c", [0.0, 0.4, 1.0, 2.5])
@pytest.mark.parametrize("t", [1, 2, 3, 7])
def test_cagrad_hand_derived(c: float, t: int) -> None:
    """Orthogonal equal-norm rows ``k e_t``: the dual is minimised at ``w = 1/T`` (``u = g0``),
    so ``d = (1 + c) g0``; identical rows ``g``: ``d = g + c ||g|| g / ||g|| = (1 + c) g``. Both
    give the weights ``(1 + c) / T`` (``T = 1`` included)."""
    expected_w = torch.full((t,), (1.0 + c) / t, dtype=F64)
    orthogonal = 3.0 * torch.eye(t, 9, dtype=F64)
    identical = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64).repeat(t, 1)
    for j in (orthogonal, identical):
        # identical rows: the ridge alone splits lam between them (to ~1e-7)
        direction, weights = CAGrad(t, c=c, rescale="none").aggregate(j, ones(t))
        torch.testing.assert_close(weights, expected_w, atol=1e-6, rtol=0)
        torch.testing.assert_close(direction, (1.0 + c) * j.mean(dim=0), atol=1e-9, rtol=0)
        _, weights = CAGrad(t, c=c).aggregate(j, ones(t))
        torch.testing.assert_close(weights, expected_w / (1.0 + c * c), atol=1e-6, rtol=0)


def test_cagrad_c_zero_is_the_mean() -> None:
    j = make_jacobian("random", 6)
    direction, weights = CAGrad(6, c=0.0).aggregate(j, ones(6))
    torch.testing.assert_close(weights, torch.full((6,), 1 / 6, dtype=F64))
    torch.testing.assert_close(direction, j.mean(dim=0))


@pytest.mark.parametrize(
    ("rows", "expected_d"),
    [
        # a zero task gradient: 0 is in the hull and g0 = (0.5, 0) conflicts with nobody: d = g0
        ([[0.0, 0.0], [1.0, 0.0]], [0.5, 0.0]),
        # opposite gradients: g0 = 0, r = 0: d = 0
        ([[1.0, 2.0], [-1.0, -2.0]], [0.0, 0.0]),
        # 0 = (g1 + g2) / 2 in the hull, a zero row; J g0 = (0, 0, 1/4, 0) >= 0: d = g0
        ([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], [0.0, 0.25]),
        # g0 = (0.1, 1/3) conflicts with g2, but cos(u, g0) >= -0.29 > -c on the cone of the
        # hull {u_2 >= 0}: degenerate; the projection of g0 onto {J d >= 0} = {d_1 = 0, d_2 >= 0}
        ([[1.0, 0.0], [-1.0, 0.0], [0.3, 1.0]], [0.0, 1.0 / 3.0]),
    ],
)
def test_cagrad_pareto_stationary(rows: list[list[float]], expected_d: list[float]) -> None:
    """``0`` in the convex hull with ``min_w g_w . g0 + r ||g_w||`` at ``g_w = 0``: every ``d``
    of the ball with ``J d >= 0`` is optimal (value 0); the one closest to ``g0`` is returned
    (torchjd returns 0, the authors' code ``g0`` plus the SLSQP round-off direction)."""
    j = embed(rows)
    t = j.shape[0]
    direction, weights = CAGrad(t, rescale="none").aggregate(j, ones(t))
    torch.testing.assert_close(
        direction[:2], torch.tensor(expected_d, dtype=F64), atol=1e-8, rtol=0
    )
    assert float((j @ direction).min()) >= -1e-9
    g0 = j.mean(dim=0)
    assert float((direction - g0).norm()) <= 0.4 * float(g0.norm()) + 1e-9


@pytest.mark.parametrize(("kind", "t"), cases() + [("correlated", t) for t in SIZES])
def test_cagrad_matches_torchjd(kind: str, t: int) -> None:
    """Same direction as torchjd's (no rescaling) up to Clarabel's accuracy, a dual objective
    never worse, and no primal-dual gap. torchjd is called on ``J / ||J||_F`` (its ``norm_eps``
    on the trace is absolute; ``d`` is homogeneous). Where torchjd finds ``||g_w|| < norm_eps``
    it returns 0; ours is then checked to be primal optimal (value ``min_t g_t . d = 0``)."""
    c = 0.4
    j = make_jacobian(kind, t)
    s = frobenius(j)
    direction, weights = CAGrad(t, c=c, rescale="none").aggregate(j, ones(t))
    if kind == "zero":
        assert torch.equal(direction, torch.zeros_like(direction))
        return
    jn = j / s
    theirs = torchjd_aggregation.CAGradWeighting(c=c)(jn @ jn.T)
    g0 = jn.mean(dim=0)
    r = c * float(g0.norm())
    d = direction / s
    assert float((d - g0).norm()) <= r * (1 + 1e-9) + 1e-12  # in the ball
    primal = float((jn @ d).min())
    if float(theirs.abs().sum()) == 0.0:  # torchjd's Pareto-stationary case
        assert kind in ("scaled", "one_zero_row")
        # ours: the projection of g0 onto {J d >= 0} (value 0), or, for "scaled" (rows of
        # 1e-6 ||J||_F, below the ridge's resolution sqrt(reg_eps) = 1e-5), nearly as good
        assert primal >= (-1e-9 if kind == "one_zero_row" else -1e-6)
        return
    torch.testing.assert_close(direction, theirs @ j, atol=5e-5 * s, rtol=0)
    lam, lam_theirs = weights - 1 / t, theirs - 1 / t
    ours_dual = cagrad_dual(jn, lam / lam.sum(), c)
    theirs_dual = cagrad_dual(jn, lam_theirs / lam_theirs.sum(), c)
    assert ours_dual <= theirs_dual + 1e-8
    assert abs(ours_dual - theirs_dual) <= 1e-6
    assert abs(ours_dual - primal) <= 1e-8  # strong duality: both optimal


@pytest.mark.parametrize(
    ("kind", "t"), [("random", 3), ("correlated", 5), ("rank2", 8), ("duplicate", 14)]
)
def test_cagrad_dual_not_worse_than_scipy_slsqp(kind: str, t: int) -> None:
    """The authors solve the dual with scipy's SLSQP; ours is at least as good (tightened)."""
    c = 0.4
    j = make_jacobian(kind, t)
    j = j / j.norm()
    g = (j @ j.T).numpy()
    b = g.mean(axis=1)
    r = c * math.sqrt(float(b.mean()))

    def objective(w):
        return float(w @ b + r * math.sqrt(max(float(w @ g @ w), 1e-30)))

    def gradient(w):
        return b + r * (g @ w) / math.sqrt(max(float(w @ g @ w), 1e-30))

    res = scipy_optimize.minimize(
        objective,
        [1.0 / t] * t,
        jac=gradient,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * t,
        constraints=[{"type": "eq", "fun": lambda w: 1.0 - w.sum()}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    _, weights = CAGrad(t, c=c, rescale="none").aggregate(j, ones(t))
    lam = weights - 1 / t
    ours = cagrad_dual(j, lam / lam.sum(), c)
    assert ours <= float(res.fun) + 1e-9
    assert abs(ours - float(res.fun)) <= 1e-6


def test_cagrad_weights_function_matches_class() -> None:
    j = make_jacobian("random", 5)
    _, weights = CAGrad(5, c=0.7, rescale="1+c").aggregate(j, ones(5))
    torch.testing.assert_close(weights, cagrad_weights(solver_gramian(j), c=0.7, rescale="1+c"))


# --------------------------------------------------------------------------------------------
# Aligned-MTL
# --------------------------------------------------------------------------------------------


def test_aligned_mtl_fixed_value() -> None:
    """``B = sqrt(lambda_min) G^-1/2`` from scipy's matrix square root, independently; the update
    is ``(B 1)^T J``, twice torchjd's mean."""
    linalg = pytest.importorskip("scipy.linalg")
    g = (J_FIXED @ J_FIXED.T).numpy()  # [[18, -22], [-22, 38]]: eigenvalues 28 -+ sqrt(584)
    lam_min = 28.0 - math.sqrt(584.0)
    b = math.sqrt(lam_min) * linalg.inv(linalg.sqrtm(g).real)
    expected_w = torch.as_tensor(b.sum(axis=1), dtype=F64)
    direction, weights = AlignedMTL(2).aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(weights, expected_w, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(direction, expected_w @ J_FIXED, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(
        direction, torch.tensor([0.4266, 1.9346, 1.9346], dtype=F64), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(direction, 2 * torchjd_aggregation.AlignedMTL()(J_FIXED))


def test_aligned_mtl_hand_derived() -> None:
    # orthogonal rows of norms n_t: G = diag(n^2), B = diag(n_min / n): the update sums the rows
    # rescaled to the smallest norm
    norms = torch.tensor([1.0, 2.0, 4.0], dtype=F64)
    j = torch.diag(norms) @ torch.eye(3, 5, dtype=F64)
    direction, weights = AlignedMTL(3).aggregate(j, ones(3))
    torch.testing.assert_close(weights, 1.0 / norms)
    torch.testing.assert_close(direction, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0], dtype=F64))
    _, weights = AlignedMTL(3, scale_mode="median").aggregate(j, ones(3))
    torch.testing.assert_close(weights, 2.0 / norms)
    _, weights = AlignedMTL(3, scale_mode="rmse").aggregate(j, ones(3))
    torch.testing.assert_close(weights, math.sqrt(7.0) / norms)
    # identical rows g: rank 1, B = 1 1^T / T, weights 1, update T g
    g = torch.tensor([2.0, -1.0, 0.5], dtype=F64)
    direction, weights = AlignedMTL(4).aggregate(g.repeat(4, 1), ones(4))
    torch.testing.assert_close(weights, ones(4))
    torch.testing.assert_close(direction, 4 * g)
    # one task: its own gradient
    direction, weights = AlignedMTL(1).aggregate(g[None], ones(1))
    torch.testing.assert_close(direction, g)
    torch.testing.assert_close(weights, ones(1))


@pytest.mark.parametrize("kind", ["random", "rank2", "duplicate", "one_zero_row", "wide"])
def test_aligned_gradients_are_orthogonal_with_equal_norms(kind: str) -> None:
    """``(B J)(B J)^T = B G B = lambda_min V V^T`` (the projector onto the range of ``G``)."""
    j = make_jacobian(kind, 8)
    g = solver_gramian(j)
    b = balance_transformation(g)
    aligned = b @ j
    eigenvalues, vectors = torch.linalg.eigh(g)
    keep = eigenvalues > eigenvalues.max() * 8 * torch.finfo(F64).eps
    projector = vectors[:, keep] @ vectors[:, keep].T
    expected = float(eigenvalues[keep].min()) * projector
    torch.testing.assert_close(aligned @ aligned.T, expected, atol=1e-9 * float(g.trace()), rtol=0)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize(("kind", "t"), cases())
def test_aligned_mtl_matches_torchjd(scale_mode: str, kind: str, t: int) -> None:
    j = make_jacobian(kind, t)
    expected = t * torchjd_aggregation.AlignedMTL(scale_mode=scale_mode)(j)
    direction, _ = AlignedMTL(t, scale_mode=scale_mode).aggregate(j, ones(t))
    torch.testing.assert_close(direction, expected, atol=1e-10 * frobenius(j), rtol=1e-9)


def test_aligned_mtl_rank_tolerance() -> None:
    """A third direction of relative size 1e-6 (eigenvalue 1e-12 of lambda_max) is kept by the
    default cut-off ``T eps`` in float64 (and scales everything down to it), dropped by
    ``rank_rtol = 1e-10`` and by the float32 cut-off."""
    j = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1e-6]], dtype=F64)
    w_keep = aligned_mtl_weights(solver_gramian(j))
    w_drop = aligned_mtl_weights(solver_gramian(j), rank_rtol=1e-10)
    w_f32 = aligned_mtl_weights(solver_gramian(j), dtype_eps=torch.finfo(torch.float32).eps)
    assert float((w_keep @ j).norm()) < 1e-4
    assert float((w_drop @ j).norm()) > 0.1
    torch.testing.assert_close(w_f32, w_drop)
    direction, _ = AlignedMTL(3, rank_rtol=1e-10).aggregate(j, ones(3))
    torch.testing.assert_close(direction, w_drop @ j)


def test_aligned_mtl_float32_rank_deficient_matches_float64() -> None:
    """Noise eigenvalues of a float32 Gramian fall below ``T eps_float32 lambda_max``."""
    j = make_jacobian("rank2", 6)
    d64, _ = AlignedMTL(6).aggregate(j, ones(6))
    d32, _ = AlignedMTL(6).aggregate(j.float(), torch.ones(6))
    torch.testing.assert_close(d32.double(), d64, atol=1e-3 * frobenius(j), rtol=1e-3)


# --------------------------------------------------------------------------------------------
# Nash-MTL
# --------------------------------------------------------------------------------------------


def torchjd_nash(j: Tensor) -> Tensor:
    """torchjd's (stateful) NashMTL weights, fresh instance, no norm clipping."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy: "not DPP"
        try:
            return torchjd_aggregation.NashMTL(n_tasks=j.shape[0], max_norm=0.0).weighting(j)
        except Exception:  # its solver fails on some singular Gramians
            return torch.full((j.shape[0],), math.nan, dtype=j.dtype)


def nash_residual(g: Tensor, alpha: Tensor) -> float:
    """``max_t |alpha_t (G alpha)_t - 1|``: 0 at the solution of ``G alpha = 1 / alpha``."""
    return float((alpha * (g @ alpha) - 1.0).abs().max())


def test_nash_mtl_fixed_value() -> None:
    """``T = 2``: ``alpha_t = 1 / (||g_t|| sqrt(1 + cos))`` solves ``G alpha = 1 / alpha``
    (``p a^2 + q a b = 1 = q a b + s b^2`` gives ``b / a = sqrt(p / s)``), so
    ``d = (g^_1 + g^_2) / sqrt(1 + cos)``, of norm ``sqrt(2)``; clipped to norm 1 by default
    (the direction only: the reported ``alpha``, which the heads get, stays unclipped)."""
    cos = -22.0 / math.sqrt(18.0 * 38.0)
    expected_w = torch.tensor(
        [1 / math.sqrt(18.0 * (1 + cos)), 1 / math.sqrt(38.0 * (1 + cos))], dtype=F64
    )
    direction, weights = NashMTL(2, max_norm=0.0).aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(weights, expected_w, atol=1e-9, rtol=0)
    torch.testing.assert_close(
        weights, torch.tensor([0.5915, 0.4071], dtype=F64), atol=1e-4, rtol=0
    )
    expected = (unit(J_FIXED[0]) + unit(J_FIXED[1])) / math.sqrt(1 + cos)
    torch.testing.assert_close(direction, expected, atol=1e-9, rtol=0)
    direction, weights = NashMTL(2).aggregate(J_FIXED, ones(2))
    torch.testing.assert_close(direction, expected / math.sqrt(2.0), atol=1e-9, rtol=0)
    torch.testing.assert_close(weights, expected_w, atol=1e-9, rtol=0)
    torch.testing.assert_close(torchjd_nash(J_FIXED), expected_w, atol=1e-6, rtol=0)


@pytest.mark.parametrize("t", [1, 2, 3, 7])
def test_nash_mtl_hand_derived(t: int) -> None:
    # orthogonal rows: alpha_t = 1 / ||g_t||, d = sum of the unit gradients (norm sqrt(T))
    norms = torch.linspace(0.5, 3.0, t, dtype=F64)
    j = torch.diag(norms) @ torch.eye(t, 9, dtype=F64)
    direction, weights = NashMTL(t, max_norm=0.0).aggregate(j, ones(t))
    torch.testing.assert_close(weights, 1.0 / norms)
    torch.testing.assert_close(direction, torch.eye(t, 9, dtype=F64).sum(dim=0))
    direction, weights = NashMTL(t).aggregate(j, ones(t))  # the direction clipped to norm 1
    torch.testing.assert_close(weights, 1.0 / norms)
    torch.testing.assert_close(direction, torch.eye(t, 9, dtype=F64).sum(dim=0) / math.sqrt(t))
    # identical rows g: T a^2 ||g||^2 = 1, d = sqrt(T) g / ||g||
    g = torch.tensor([2.0, -1.0, 0.5], dtype=F64)
    direction, weights = NashMTL(t, max_norm=0.0).aggregate(g.repeat(t, 1), ones(t))
    torch.testing.assert_close(
        weights, torch.full((t,), 1 / (float(g.norm()) * math.sqrt(t)), dtype=F64)
    )
    torch.testing.assert_close(direction, math.sqrt(t) * unit(g))


def test_nash_mtl_zero_row_gets_zero_weight() -> None:
    """A task with a zero gradient (all labels masked) gets weight 0; the others are solved
    without it."""
    j = make_jacobian("random", 5)
    j[2] = 0.0
    _, weights = NashMTL(5, max_norm=0.0).aggregate(j, ones(5))
    keep = [0, 1, 3, 4]
    _, expected = NashMTL(4, max_norm=0.0).aggregate(j[keep], ones(4))
    assert float(weights[2]) == 0.0
    torch.testing.assert_close(weights[keep], expected, atol=1e-12, rtol=1e-12)


def test_nash_mtl_opposite_gradients() -> None:
    """``0`` in the hull: no solution; the ridge keeps ``alpha`` finite and ``d`` stays ~0."""
    g = torch.tensor([1.0, -2.0, 3.0], dtype=F64)
    j = torch.stack([g, -g])
    direction, weights = NashMTL(2).aggregate(j, ones(2))
    assert torch.isfinite(weights).all() and float(weights.min()) > 0
    assert float(direction.norm()) < 1e-6


@pytest.mark.parametrize("kind", ["random", "correlated", "duplicate", "scaled"])
@pytest.mark.parametrize("t", SIZES)
def test_nash_mtl_solves_the_bargaining_equation(kind: str, t: int) -> None:
    """Where a solution exists (0 not in the hull), ``G alpha = 1 / alpha`` to the ridge's
    accuracy, even for row norms from 1e-3 to 1e3 (per-task rescaling leaves ``d`` unchanged);
    ``||d|| = sqrt(T)`` before clipping, ``min(sqrt(T), max_norm)`` after."""
    j = make_jacobian(kind, t)
    g = solver_gramian(j)
    direction, weights = NashMTL(t, max_norm=0.0).aggregate(j, ones(t))
    assert float(weights.min()) > 0
    assert nash_residual(g, weights) <= 1e-7
    torch.testing.assert_close(float(direction.norm()), math.sqrt(t), atol=1e-7, rtol=0)
    scales = torch.logspace(-2, 2, t, dtype=F64)
    direction_s, weights_s = NashMTL(t, max_norm=0.0).aggregate(scales[:, None] * j, ones(t))
    torch.testing.assert_close(direction_s, direction, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(weights_s * scales, weights, atol=1e-7, rtol=1e-7)
    for max_norm in (0.5, 1.0, 100.0):
        direction_c, _ = NashMTL(t, max_norm=max_norm).aggregate(j, ones(t))
        torch.testing.assert_close(float(direction_c.norm()), min(math.sqrt(t), max_norm))


@pytest.mark.parametrize(("kind", "t"), cases() + [("correlated", t) for t in SIZES])
def test_nash_mtl_matches_torchjd_where_it_converges(kind: str, t: int) -> None:
    """torchjd (the authors' CCP with cvxpy/ECOS) does not converge on every input (singular or
    badly scaled Gramians); where its weights satisfy ``G alpha = 1 / alpha`` to 1e-5, ours agree.
    It converges at least on the well-conditioned kinds."""
    j = make_jacobian(kind, t)
    g = solver_gramian(j)
    _, weights = NashMTL(t, max_norm=0.0).aggregate(j, ones(t))
    theirs = torchjd_nash(j)
    converged = bool(torch.isfinite(theirs).all()) and nash_residual(g, theirs) <= 1e-5
    if kind in ("random", "correlated"):
        assert converged
    if converged:
        assert nash_residual(g, weights) <= 1e-7
        torch.testing.assert_close(weights, theirs, atol=0, rtol=1e-4)


@pytest.mark.parametrize("t", SIZES)
def test_nash_mtl_scaled_matches_torchjd_on_unit_rows(t: int) -> None:
    """torchjd fails on row norms from 1e-3 to 1e3, but the solution is equivariant to per-task
    scaling: torchjd on the unit rows ``D J``, mapped back (``alpha = D alpha'``), agrees."""
    j = make_jacobian("scaled", t)
    norms = j.norm(dim=1)
    theirs = torchjd_nash(j / norms[:, None]) / norms
    _, weights = NashMTL(t, max_norm=0.0).aggregate(j, ones(t))
    assert nash_residual(solver_gramian(j), theirs) <= 1e-5
    torch.testing.assert_close(weights, theirs, atol=0, rtol=1e-6)


def test_nash_mtl_weights_function_matches_class() -> None:
    j = make_jacobian("random", 5)
    direction, weights = NashMTL(5, max_norm=0.3).aggregate(j, ones(5))
    clipped = nash_mtl_weights(solver_gramian(j), max_norm=0.3)
    torch.testing.assert_close(weights, nash_mtl_weights(solver_gramian(j), max_norm=0.0))
    torch.testing.assert_close(direction, clipped @ j)  # the clip is the direction's


@pytest.mark.parametrize(
    "name", ["pcgrad", "mgda", "upgrad", "imtl_g", "cagrad", "aligned_mtl", "nash_mtl"]
)
@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_non_finite_jacobian_gives_a_non_finite_direction_not_an_error(name, bad):
    """An fp16 step whose scaled gradients overflowed: GradScaler must see a non-finite
    gradient and skip the step, so no solver may raise on it."""
    import methods

    j = make_jacobian("random", 5)
    j[2, 3] = bad
    direction, weights = methods.create(name, 5).aggregate(j, ones(5))
    assert direction.shape == (j.shape[1],) and weights.shape == (5,)
    assert not bool(torch.isfinite(direction).all())
