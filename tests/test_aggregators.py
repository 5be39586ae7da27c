"""Gradient-level methods (PCGrad, MGDA, UPGrad, IMTL-G) against fixed values, torchjd 0.18.0
and the properties they promise."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import Tensor

from methods.gradient import GradientAggregator, nonnegative_qp
from methods.imtl_g import IMTLG
from methods.mgda import MGDA, NORMALIZATIONS, mgda_weights
from methods.pcgrad import PCGrad
from methods.upgrad import UPGrad
from tests.jacobians import F64, J_FIXED, SIZES, cases, make_jacobian, ones

torchjd_aggregation = pytest.importorskip("torchjd.aggregation")

HAS_QUADPROG = all(importlib.util.find_spec(m) is not None for m in ("quadprog", "qpsolvers"))


def scale(j: Tensor) -> float:
    """``||J||_F^2`` (at least 1e-300), the scale of ``G`` and of ``||d||^2``."""
    return max(float((j * j).sum()), 1e-300)


# --------------------------------------------------------------------------------------------
# Fixed values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (PCGrad, [0.5848, 3.8012, 3.8012]),
        (MGDA, [0.0, 1.0, 1.0]),
        (UPGrad, [0.2929, 1.9004, 1.9004]),
        (IMTLG, [0.0767, 1.0, 1.0]),
    ],
)
def test_fixed_values(cls: type[GradientAggregator], expected: list[float]) -> None:
    torch.manual_seed(0)
    direction, weights = cls(2).aggregate(J_FIXED, ones(2))
    assert direction.dtype == F64 and weights.shape == (2,)
    torch.testing.assert_close(direction, torch.tensor(expected, dtype=F64), atol=1e-4, rtol=0)
    torch.testing.assert_close(weights @ J_FIXED, direction, atol=1e-12, rtol=0)


COMMON = {"update_every": 1, "ema": 0.0}  # every gradient-level method's


def test_class_attributes() -> None:
    for cls in (PCGrad, MGDA, UPGrad, IMTLG):
        assert cls.level == "parameters"
        assert isinstance(cls.summary, str) and "\n" not in cls.summary
    assert [c.name for c in (PCGrad, MGDA, UPGrad, IMTLG)] == ["pcgrad", "mgda", "upgrad", "imtl_g"]
    assert MGDA.hyperparameter_defaults() == {
        "level": "parameters",
        "normalization": "none",
        "reg_eps": 1e-10,
        "max_iters": 1000,
        **COMMON,
    }
    assert UPGrad.hyperparameter_defaults() == {
        "level": "parameters",
        "norm_eps": 1e-4,
        "reg_eps": 1e-4,
        "max_iters": 1000,
        **COMMON,
    }
    only_level = {"level": "parameters", **COMMON}
    assert PCGrad.hyperparameter_defaults() == only_level == IMTLG.hyperparameter_defaults()


# --------------------------------------------------------------------------------------------
# Against torchjd 0.18.0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "t"), cases())
def test_pcgrad_matches_torchjd(kind: str, t: int) -> None:
    j = make_jacobian(kind, t)
    for seed in (0, 1):
        torch.manual_seed(seed)
        expected = torchjd_aggregation.PCGrad()(j)
        torch.manual_seed(seed)
        direction, weights = PCGrad(t).aggregate(j, ones(t))
        torch.testing.assert_close(direction, expected, atol=1e-12 * scale(j) ** 0.5, rtol=1e-12)
        torch.manual_seed(seed)
        expected_w = torchjd_aggregation.PCGradWeighting()(j @ j.T)
        torch.testing.assert_close(weights, expected_w, atol=1e-12, rtol=1e-12)


def test_pcgrad_order_matters_and_seed_fixes_it() -> None:
    j = make_jacobian("random", 8, seed=3)
    results = []
    for seed in (0, 0, 1, 2, 3):
        torch.manual_seed(seed)
        results.append(PCGrad(8).aggregate(j, ones(8))[0])
    assert torch.equal(results[0], results[1])
    assert any(not torch.allclose(results[0], r) for r in results[2:])


@pytest.mark.parametrize(("kind", "t"), cases())
def test_mgda_objective_matches_torchjd(kind: str, t: int) -> None:
    """torchjd's Frank-Wolfe (epsilon 1e-3) is only approximate: ours is never worse, and is an
    exact minimiser (KKT: every g_t . d >= ||d||^2, with equality where w_t > 0)."""
    j = make_jacobian(kind, t)
    s = scale(j)
    direction, weights = MGDA(t).aggregate(j, ones(t))
    assert torch.all(weights >= 0) and abs(float(weights.sum()) - 1.0) < 1e-12
    ours = float(direction @ direction)
    theirs = torchjd_aggregation.MGDA()(j)
    assert ours <= float(theirs @ theirs) + 1e-9 * s
    products = j @ direction
    assert float(products.min()) >= ours - 1e-9 * s
    active = weights > 1e-6
    torch.testing.assert_close(
        products[active], torch.full_like(products[active], ours), atol=1e-8 * s, rtol=0
    )


@pytest.mark.parametrize(("kind", "t"), [("random", 5), ("scaled", 8), ("rank2", 14)])
def test_mgda_objective_matches_converged_torchjd(kind: str, t: int) -> None:
    """Against a tightly converged Frank-Wolfe (sublinear: 1e-5 of the scale after 20000 steps)."""
    j = make_jacobian(kind, t)
    direction, _ = MGDA(t).aggregate(j, ones(t))
    theirs = torchjd_aggregation.MGDA(epsilon=1e-12, max_iters=20000)(j)
    ours, ref = float(direction @ direction), float(theirs @ theirs)
    assert ours <= ref + 1e-9 * scale(j)
    assert abs(ours - ref) <= 1e-5 * scale(j)


@pytest.mark.parametrize("t", SIZES)
def test_mgda_normalizations_find_weights_on_scaled_gradients(t: int) -> None:
    j = make_jacobian("scaled", t)
    losses = torch.linspace(0.5, 2.0, t, dtype=F64)
    norms = j.norm(dim=1)
    for normalization, s in [
        ("none", ones(t)),
        ("l2", norms),
        ("loss", losses),
        ("loss+", losses * norms),
    ]:
        direction, weights = MGDA(t, normalization=normalization).aggregate(j, losses)
        torch.testing.assert_close(direction, weights @ j)  # the update uses the raw gradients
        scaled = j / s[:, None]
        expected = mgda_weights(scaled @ scaled.T, ones(t))  # min-norm on the scaled rows
        torch.testing.assert_close(weights, expected, atol=1e-6, rtol=1e-6)


def _scipy_projector():  # an independent QP solver (scipy's NNLS) inside torchjd's UPGrad
    nnls = pytest.importorskip("scipy.optimize").nnls
    from torchjd._linalg import DualConeProjector, normalize, regularize

    class NNLSProjector(DualConeProjector):
        def __call__(self, u: Tensor, g: Tensor) -> Tensor:
            g = regularize(normalize(g, 1e-4), 1e-4)
            chol = torch.linalg.cholesky(g).T.numpy()  # G = chol^T chol
            rows = []
            for row in u.reshape(-1, u.shape[-1]):
                # v = u + x, x >= 0: min ||chol (u + x)||^2
                x, _ = nnls(chol, -(chol @ row.numpy()), maxiter=10_000)
                rows.append(row + torch.as_tensor(x, dtype=g.dtype))
            return torch.stack(rows).reshape(u.shape)

    return NNLSProjector()


@pytest.mark.parametrize(("kind", "t"), cases())
def test_upgrad_matches_torchjd_with_scipy_qp(kind: str, t: int) -> None:
    j = make_jacobian(kind, t)
    expected = torchjd_aggregation.UPGrad(projector=_scipy_projector())(j)
    direction, _ = UPGrad(t).aggregate(j, ones(t))
    torch.testing.assert_close(direction, expected, atol=1e-8 * scale(j) ** 0.5, rtol=1e-7)


@pytest.mark.skipif(not HAS_QUADPROG, reason="torchjd's default UPGrad needs quadprog+qpsolvers")
@pytest.mark.parametrize(("kind", "t"), cases())
def test_upgrad_matches_torchjd_quadprog(kind: str, t: int) -> None:
    j = make_jacobian(kind, t)
    expected = torchjd_aggregation.UPGrad()(j)
    direction, _ = UPGrad(t).aggregate(j, ones(t))
    torch.testing.assert_close(direction, expected, atol=1e-8 * scale(j) ** 0.5, rtol=1e-6)


@pytest.mark.parametrize(("kind", "t"), cases())
def test_imtl_g_matches_torchjd(kind: str, t: int) -> None:
    j = make_jacobian(kind, t)
    expected = torchjd_aggregation.IMTLG()(j)
    direction, weights = IMTLG(t).aggregate(j, ones(t))
    torch.testing.assert_close(direction, expected, atol=1e-8 * scale(j) ** 0.5, rtol=1e-6)
    if kind != "zero":
        assert abs(float(weights.sum()) - 1.0) < 1e-9


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "t"), cases())
def test_no_conflict(kind: str, t: int) -> None:
    """MGDA: ``J d >= 0``. UPGrad: ``J d >= -reg_eps tr(G) w`` (the KKT bound of its ridge-
    regularised QPs, as torchjd's), so ``J d >= 0`` up to round-off for a tiny ``reg_eps``."""
    j = make_jacobian(kind, t)
    s = scale(j)
    direction, _ = MGDA(t).aggregate(j, ones(t))
    assert float((j @ direction).min()) >= -1e-9 * s
    direction, weights = UPGrad(t).aggregate(j, ones(t))
    assert torch.all(j @ direction >= -1e-4 * s * weights - 1e-9 * s)
    direction, weights = UPGrad(t, reg_eps=1e-12).aggregate(j, ones(t))
    assert torch.all(j @ direction >= -1e-12 * s * weights - 1e-9 * s)


@pytest.mark.parametrize("cls", [MGDA, UPGrad, IMTLG])
@pytest.mark.parametrize("kind", ["random", "scaled", "wide", "one_zero_row"])
def test_permuting_tasks_permutes_weights(cls: type[GradientAggregator], kind: str) -> None:
    t = 8
    j = make_jacobian(kind, t)
    losses = torch.linspace(0.5, 2.0, t, dtype=F64)
    perm = torch.randperm(t, generator=torch.Generator().manual_seed(5))
    direction, weights = cls(t).aggregate(j, losses)
    direction_p, weights_p = cls(t).aggregate(j[perm], losses[perm])
    # solver round-off only (the ridge of MGDA / pinv's cut-off: G's condition number is ~1e12
    # for "scaled")
    torch.testing.assert_close(weights_p, weights[perm], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(direction_p, direction, atol=1e-7 * scale(j) ** 0.5, rtol=1e-5)


@pytest.mark.parametrize("cls", [PCGrad, MGDA, UPGrad, IMTLG])
@pytest.mark.parametrize("t", [1, 2, 3, 14])
def test_zero_jacobian(cls: type[GradientAggregator], t: int) -> None:
    j = torch.zeros(t, 7, dtype=F64)
    for normalization in NORMALIZATIONS if cls is MGDA else ("",):
        kwargs = {"normalization": normalization} if cls is MGDA else {}
        direction, weights = cls(t, **kwargs).aggregate(j, torch.zeros(t, dtype=F64))
        assert torch.equal(direction, torch.zeros(7, dtype=F64))
        assert torch.isfinite(weights).all()


@pytest.mark.parametrize("cls", [PCGrad, MGDA, UPGrad, IMTLG])
def test_float32_and_single_task(cls: type[GradientAggregator]) -> None:
    j = make_jacobian("random", 5).float()
    torch.manual_seed(0)
    direction, weights = cls(5).aggregate(j, torch.ones(5))
    assert direction.dtype == torch.float32 and weights.dtype == torch.float32
    assert torch.isfinite(direction).all()
    g = torch.tensor([[3.0, -4.0]], dtype=F64)  # one task: the update is its gradient
    direction, weights = cls(1).aggregate(g, ones(1))
    torch.testing.assert_close(direction, g[0])
    torch.testing.assert_close(weights, ones(1))


def test_aggregate_is_pure() -> None:
    j = make_jacobian("random", 5)
    for cls in (MGDA, UPGrad, IMTLG):
        m = cls(5)
        first = m.aggregate(j, ones(5))
        second = m.aggregate(j.clone(), ones(5))
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
        assert m.state_dict()["state"] == {}


def test_nonnegative_qp_kkt() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=F64)
    q = a @ a.T + 0.1 * torch.eye(6, dtype=F64)
    c = torch.randn(6, generator=gen, dtype=F64)
    x = nonnegative_qp(q, c, max_iters=100, tol=1e-14)
    grad = q @ x + c
    assert torch.all(x >= 0) and torch.all(grad >= -1e-10)
    assert float((x * grad).abs().max()) < 1e-10


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def test_bad_normalization_rejected() -> None:
    with pytest.raises(ValueError, match=r"method 'mgda': normalization must be one of none, l2, "):
        MGDA(3, normalization="L2")


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (MGDA, {"max_iters": 0}, "max_iters must be a positive int"),
        (MGDA, {"reg_eps": 0.0}, "reg_eps must be"),
        (UPGrad, {"reg_eps": 0.0}, "reg_eps must be"),
        (UPGrad, {"norm_eps": -1.0}, "norm_eps must be"),
        (UPGrad, {"max_iters": 2.5}, "max_iters must be a positive int"),
        (PCGrad, {"seed": 1}, "unknown hyperparameter 'seed'"),
    ],
)
def test_bad_hyperparameters(cls: type[GradientAggregator], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(3, **kwargs)


def test_bad_inputs() -> None:
    m = UPGrad(3)
    with pytest.raises(ValueError, match=r"jacobian must be a Tensor of shape \(3, n\)"):
        m.aggregate(torch.zeros(2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"losses must be a Tensor of shape \(3,\)"):
        m.aggregate(torch.zeros(3, 4), torch.zeros(2))
    with pytest.raises(ValueError, match="floating point"):
        m.aggregate(torch.zeros(3, 4, dtype=torch.long), torch.zeros(3))
