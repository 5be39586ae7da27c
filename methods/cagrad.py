"""CAGrad: conflict-averse gradient descent (Liu et al., NeurIPS 2021).

*Conflict-Averse Gradient Descent for Multi-task Learning*, B. Liu, X. Liu, X. Jin, P. Stone,
Q. Liu, NeurIPS 2021, arXiv:2110.14048 (Algorithm 1; the update rescaling ``rescale`` of the
authors' code, ``cagrad`` in ``nyuv2/utils.py`` of github.com/Cranial-XIX/CAGrad). Reference
implementation used for the tests: ``torchjd.aggregation.CAGrad`` (torchjd 0.18.0: the same dual
solved by cvxpy + Clarabel, no rescaling); the dual objective is also checked against scipy's
SLSQP, the authors' solver.

The update maximises the worst task improvement in a ball around the mean gradient ``g0``::

    max_{||d - g0|| <= r}  min_t g_t . d,        r = sqrt(phi) = c ||g0||

whose dual is ``min_{w in simplex} g_w . g0 + r ||g_w||`` (``g_w = w^T J``), with the solution
``d = g0 + r g_w / ||g_w||``. Here the primal is solved instead, exactly, as a one-dimensional
search over its value ``nu``: ``d(nu)`` is the projection of ``g0`` onto the polyhedron
``{d : J d >= nu}`` (a non-negative QP on the Gramian, ``d = g0 + J^T lam``, ``lam >= 0``) and
``nu*`` is the largest ``nu`` whose projection lies in the ball. Then ``w = lam / sum(lam)`` solves
the dual, ``||g_w|| = r / sum(lam)``, and ``d = (1/T + lam)^T J``.

Scale: ``d`` is on the scale of the MEAN gradient, as in the paper and torchjd, divided by
``1 + c^2`` by default as in the authors' code (their NYUv2 trainer also multiplies the result by
``T`` "to match the sum loss"; not done here, the learning rate absorbs it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

from methods.base import check_choice, check_number, set_field
from methods.gradient import GradientAggregator, combine, nonnegative_qp

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: ``rescale`` choices: the update is divided by 1, ``1 + c^2`` (the authors' default) or ``1 + c``.
RESCALES: tuple[str, ...] = ("none", "1+c^2", "1+c")

_QP_MAX_ITERS = 1000
_QP_TOL = 1e-14
_SEARCH_MAX_ITERS = 100
_SEARCH_RTOL = 1e-12


def rescale_factor(c: float, rescale: str) -> float:
    """The divisor of the update: ``1`` (``none``), ``1 + c^2`` (``1+c^2``) or ``1 + c``."""
    if rescale not in RESCALES:
        raise ValueError(f"rescale must be one of {', '.join(RESCALES)}")
    return {"none": 1.0, "1+c^2": 1.0 + c * c, "1+c": 1.0 + c}[rescale]


def projection_multipliers(q: Tensor, b: Tensor, nu: float) -> Tensor:
    """``lam >= 0`` with ``g0 + J^T lam`` the projection of ``g0`` onto ``{d : J d >= nu}``.

    ``lam = argmin_{lam >= 0} 1/2 lam^T Q lam + (b - nu)^T lam`` with ``Q = J J^T`` (positive
    definite) and ``b = J g0``: the dual of ``min ||d - g0||^2 s.t. J d >= nu``. The squared
    distance moved is ``lam^T Q lam``.
    """
    return nonnegative_qp(q, b - nu, max_iters=_QP_MAX_ITERS, tol=_QP_TOL)


def conflict_averse_multipliers(q: Tensor, b: Tensor, r2: float) -> tuple[Tensor, float]:
    """``(lam, nu*)``: the multipliers of the CAGrad update ``d = g0 + J^T lam`` and its value.

    ``nu* = max {nu : D(nu) <= r^2}`` with ``D(nu) = lam(nu)^T Q lam(nu)`` the squared distance
    from ``g0`` to ``{d : J d >= nu}`` (continuous and non-decreasing, zero below ``min_t b_t``).
    ``D`` is piecewise quadratic: with the free set ``P`` of ``lam(nu)``,
    ``lam_P = nu a - beta`` (``a = Q_PP^-1 1``, ``beta = Q_PP^-1 b_P``), so on that piece
    ``D(nu) = nu^2 sum(a) - 2 nu sum(beta) + b_P . beta`` and its larger root is the next guess;
    a bracket ``[min_t b_t, min_t (b_t + r ||g_t||)]`` (no ``d`` in the ball does better than
    ``b_t + r ||g_t||`` on task ``t``) and bisection safeguard it. Stops when
    ``|D - r^2| <= 1e-12 r^2``.
    """
    r = math.sqrt(r2)
    lo = float(b.min())
    hi = float((b + r * q.diagonal().sqrt()).min())
    step_tol = 1e-14 * max(1.0, abs(lo), abs(hi))
    nu = hi
    lam = projection_multipliers(q, b, nu)
    for _ in range(_SEARCH_MAX_ITERS):
        dist2 = float(lam @ q @ lam)
        if abs(dist2 - r2) <= _SEARCH_RTOL * r2:
            break
        if dist2 > r2:
            hi = nu
        else:
            lo = nu
        guess = math.nan
        free = lam > 0
        if bool(free.any()):
            sub = q[free][:, free]
            a = torch.linalg.solve(sub, torch.ones_like(b[free]))
            beta = torch.linalg.solve(sub, b[free])
            sa, sb = float(a.sum()), float(beta.sum())
            disc = sb * sb - sa * (float(b[free] @ beta) - r2)
            if sa > 0 and disc >= 0:
                guess = (sb + math.sqrt(disc)) / sa
        if abs(guess - nu) <= step_tol or hi - lo <= step_tol:
            break  # the root of this piece is nu itself (D is only known up to round-off)
        nu = guess if lo < guess < hi else 0.5 * (lo + hi)
        lam = projection_multipliers(q, b, nu)
    return lam, nu


def cagrad_weights(
    g: Tensor,
    *,
    c: float = 0.4,
    rescale: str = "1+c^2",
    reg_eps: float = 1e-10,
    norm_eps: float = 1e-4,
) -> Tensor:
    """The effective CAGrad weights ``w_eff`` (``d = w_eff^T J``) from the Gramian ``G``.

    ``w_eff = (1/T + lam) / s`` with ``lam`` from ``conflict_averse_multipliers`` and ``s`` the
    ``rescale`` divisor. ``G`` is divided by its trace (``d`` is positively homogeneous in ``J``,
    so ``w_eff`` does not change) and ``rho * I`` is added, ``rho = reg_eps`` plus the magnitude
    of the smallest eigenvalue if below ``-reg_eps / 2`` (round-off of a float32 Gramian): the
    QPs need a positive-definite ``Q``, and the result is the exact CAGrad of
    ``[J, sqrt(rho) I]``. Then ``b = Q 1/T`` (``= J g0``) and ``r^2 = c^2 ||g0||^2 = c^2 mean(b)``.

    Degenerate case: ``min_w g_w . g0 + r ||g_w||`` is attained at ``g_w = 0`` (``0`` is in the
    convex hull of the gradients, a Pareto-stationary point, e.g. with a zero task gradient; then
    ``d = g0 + r g_w / ||g_w||`` is undefined). It is detected as ``nu* > 0`` with
    ``||g_w|| = r / sum(lam) < max(norm_eps, 10 sqrt(rho))`` (relative to ``||J||_F``; the ridge
    alone makes ``||g_w||`` about ``sqrt(rho)`` there). Every ``d`` in the ball with ``J d >= 0``
    is then optimal; the one closest to ``g0``, ``lam = lam(0)`` (the projection of ``g0`` onto
    ``{J d >= 0}``), is returned (``d = g0`` when ``g0`` conflicts with no task). A zero ``J``
    gives ``1/T / s`` (``d = 0``).
    """
    num_tasks = g.shape[0]
    mean = torch.full((num_tasks,), 1.0 / num_tasks, dtype=g.dtype)
    factor = rescale_factor(c, rescale)
    trace = float(g.diagonal().sum())
    if not trace > 0.0:
        return mean / factor
    q = g / trace
    # a Gramian of float32 gradients can be slightly indefinite: lift it to PSD first
    low = float(torch.linalg.eigvalsh(q)[0])  # lifted only if the ridge is not enough
    ridge = reg_eps if low >= -0.5 * reg_eps else reg_eps - low
    q = q + ridge * torch.eye(num_tasks, dtype=g.dtype)
    b = q @ mean
    r2 = c * c * float(b.mean())
    if not r2 > 0.0:
        return mean / factor
    lam, nu = conflict_averse_multipliers(q, b, r2)
    threshold = max(norm_eps, 10.0 * math.sqrt(ridge))
    if nu > 0.0 and math.sqrt(r2) < threshold * float(lam.sum()):
        lam = projection_multipliers(q, b, 0.0)
    return (mean + lam) / factor


@dataclass(frozen=True)
class CAGradHyperparameters:
    c: float = 0.4
    rescale: str = "1+c^2"
    reg_eps: float = 1e-10
    norm_eps: float = 1e-4

    def __post_init__(self) -> None:
        set_field(self, "c", check_number("c", self.c, ge=0))
        set_field(self, "rescale", check_choice("rescale", self.rescale, RESCALES))
        set_field(self, "reg_eps", check_number("reg_eps", self.reg_eps, gt=0, le=1e-4))
        set_field(self, "norm_eps", check_number("norm_eps", self.norm_eps, ge=0, le=1))


class CAGrad(GradientAggregator):
    """CAGrad: the direction in the ball ``||d - g0|| <= c ||g0||`` around the mean gradient that
    maximises the smallest task improvement ``min_t g_t . d``; ``d = g0 + c ||g0|| g_w / ||g_w||``
    with ``w = argmin_{simplex} g_w . g0 + c ||g0|| ||g_w||``, divided by ``1 + c^2`` (the
    authors' default ``rescale``; ``none`` as the paper's Algorithm 1 and torchjd, ``1+c``).

    ``reg_eps``: ridge on the trace-normalised Gramian; ``norm_eps``: ``||g_w|| / ||J||_F`` below
    which the point is treated as Pareto-stationary (see ``cagrad_weights``). Reported weights:
    the effective ``w_eff = (1/T + lam) / s`` with ``d = w_eff^T J`` (``1/T`` each for ``c = 0``).
    """

    name = "cagrad"
    reference = "Liu et al., NeurIPS 2021, arXiv:2110.14048; code: Cranial-XIX/CAGrad"
    summary = "Best worst-task improvement in a ball around the mean gradient (Liu 2021)."
    Hyperparameters = CAGradHyperparameters

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = cagrad_weights(
            gramian,
            c=hp.c,
            rescale=hp.rescale,
            reg_eps=hp.reg_eps,
            norm_eps=hp.norm_eps,
        )
        return combine(weights, jacobian), weights
