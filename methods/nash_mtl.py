"""Nash-MTL: multi-task learning as a bargaining game (Navon et al., ICML 2022).

*Multi-Task Learning as a Bargaining Game*, A. Navon, A. Shamsian, I. Achituve, H. Maron,
K. Kawaguchi, G. Chechik, E. Fetaya, ICML 2022, arXiv:2202.01017 (Algorithm 1; ``max_norm`` from
the authors' code, ``NashMTL`` in ``methods/weight_methods.py`` of github.com/AvivNavon/nash-mtl).
Reference implementation used for the tests: ``torchjd.aggregation.NashMTL`` (torchjd 0.18.0, a
port of the authors' code: cvxpy + ECOS).

The Nash bargaining solution is ``d = alpha^T J`` with ``alpha > 0`` solving
``G alpha = 1 / alpha`` (elementwise; ``G = J J^T``): every task gets ``g_t . d = 1 / alpha_t``.
The authors approach it by up to 20 convex-concave iterations of cvxpy problems (stopping after a
change below 1e-6); here it is solved to machine precision by Newton's method on the strictly
convex ``f(alpha) = 1/2 alpha^T G alpha - sum_t log alpha_t`` whose stationary point it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

from methods.base import check_number, set_field
from methods.gradient import GradientAggregator, check_positive_int, combine

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: A task whose squared gradient norm is at most this fraction of the largest is treated as zero.
ZERO_ROW = 1e-24
_RESIDUAL_TOL = 1e-12


def _objective(q: Tensor, x: Tensor) -> float:
    return float(0.5 * x @ q @ x - x.log().sum())


def nash_solve(q: Tensor, *, max_iters: int = 100) -> Tensor:
    """``x > 0`` with ``Q x = 1 / x``: the minimiser of ``f(x) = 1/2 x^T Q x - sum log x``.

    ``Q``: a positive-definite Tensor[k, k] with unit-scale diagonal. Newton's method from
    ``x = 1`` (the solution for ``Q = I``): ``H = Q + diag(1 / x^2)``, step ``-H^-1 grad f``,
    halved until ``x`` stays positive and ``f`` decreases (Armijo); ``f`` is self-concordant, so
    the full step is taken near the solution (quadratic convergence). Stops when
    ``max_t |x_t (Q x)_t - 1| <= 1e-12``, after the full step once the squared Newton decrement
    is below 1e-12, when a decrement below 1/4 does not allow the full step (round-off), or after
    ``max_iters`` steps.
    """
    x = torch.ones(q.shape[0], dtype=q.dtype)
    for _ in range(max_iters):
        qx = q @ x
        if float((x * qx - 1.0).abs().max()) <= _RESIDUAL_TOL:
            break
        grad = qx - 1.0 / x
        step = torch.linalg.solve(q + torch.diag(1.0 / (x * x)), -grad)
        slope = float(grad @ step)  # -(Newton decrement)^2, about 2 (f(x) - min f)
        if -slope <= 1e-12:  # quadratic convergence: this full step lands at round-off level
            x = x + step
            break
        f0 = _objective(q, x)
        t = 1.0
        while True:
            candidate = x + t * step
            if bool((candidate > 0).all()) and _objective(q, candidate) <= f0 + 1e-4 * t * slope:
                break
            if -slope < 1.0 / 16.0 or t < 1e-12:
                # a decrement < 1/4 always allows the full step in exact arithmetic: the
                # round-off floor is reached (at a Pareto-stationary point x ~ rho^-1/2)
                return x
            t *= 0.5
        x = candidate
    return x


def nash_mtl_weights(
    g: Tensor, *, max_norm: float = 1.0, reg_eps: float = 1e-10, max_iters: int = 100
) -> Tensor:
    """``alpha`` (Tensor[T]) with ``G alpha = 1 / alpha``, scaled so ``||alpha^T J|| <= max_norm``.

    The solution is equivariant to a rescaling of each task (``g_t -> s_t g_t`` gives
    ``alpha_t -> alpha_t / s_t`` and the same ``d``), so it is found on the correlation matrix
    ``C = D G D``, ``D = diag(1 / ||g_t||)``: ``alpha = D x`` with ``(C + rho I) x = 1 / x``
    (``nash_solve``; ``rho = reg_eps`` plus the magnitude of ``C``'s smallest eigenvalue if it is
    below ``-reg_eps / 2``, the round-off of a float32 Gramian). A solution exists iff ``0`` is
    not in the convex hull of the gradients; the ridge keeps it finite otherwise (a
    Pareto-stationary point: ``x`` then grows like ``rho^-1/2`` along the combinations that
    cancel, which hardly move ``d``). A task with a zero gradient
    (``||g_t||^2 <= 1e-24 max_s ||g_s||^2``, e.g. all its labels masked) gets ``alpha_t = 0`` and
    the others are solved without it. ``||d||^2 = alpha^T G alpha = T`` (up to the ridge); if
    ``max_norm > 0`` and ``||d|| > max_norm``, ``alpha`` is scaled by ``max_norm / ||d||`` (the
    authors clip the shared gradient's norm to ``max_norm``). A zero ``J`` gives ``alpha = 0``.
    """
    num_tasks = g.shape[0]
    alpha = torch.zeros(num_tasks, dtype=g.dtype)
    norms2 = g.diagonal()
    top = float(norms2.max())
    if not top > 0.0:
        return alpha
    alive = norms2 > ZERO_ROW * top
    inv = norms2[alive].rsqrt()
    c = inv[:, None] * g[alive][:, alive] * inv[None, :]
    # a Gramian of float32 gradients can be slightly indefinite: lift it to PSD first
    low = float(torch.linalg.eigvalsh(c)[0])  # lifted only if the ridge is not enough
    ridge = reg_eps if low >= -0.5 * reg_eps else reg_eps - low
    c = c + ridge * torch.eye(c.shape[0], dtype=g.dtype)
    alpha[alive] = inv * nash_solve(c, max_iters=max_iters)
    if max_norm > 0.0:
        norm = max(float(alpha @ g @ alpha), 0.0) ** 0.5
        if norm > max_norm:
            alpha = alpha * (max_norm / norm)
    return alpha


@dataclass(frozen=True)
class NashMTLHyperparameters:
    max_norm: float = 1.0
    reg_eps: float = 1e-10
    max_iters: int = 100

    def __post_init__(self) -> None:
        set_field(self, "max_norm", check_number("max_norm", self.max_norm, ge=0))
        set_field(self, "reg_eps", check_number("reg_eps", self.reg_eps, gt=0, le=1e-2))
        set_field(self, "max_iters", check_positive_int("max_iters", self.max_iters))


class NashMTL(GradientAggregator):
    """Nash-MTL: the Nash bargaining solution ``d = alpha^T J`` with ``G alpha = 1 / alpha``
    (each task's improvement ``g_t . d = 1 / alpha_t``; ``||d|| = sqrt(T)``), its norm clipped to
    ``max_norm`` (default 1, the authors'; 0 disables).

    ``reg_eps``: ridge on the gradients' correlation matrix (keeps ``alpha`` finite at a
    Pareto-stationary point); ``max_iters``: cap on the Newton steps. Reported weights:
    ``alpha``, unclipped; the clip applies to the shared gradient only (``shared_max_norm``),
    as in the authors' ``NashMTL.backward``: they back-propagate ``sum_t alpha_t L_t`` (so the
    heads get ``alpha_t grad L_t``, unclipped) and then clip the shared parameters' gradient
    norm, also in the steps that reuse ``alpha`` (``update_every``, their
    ``update_weights_every``).
    """

    name = "nash_mtl"
    reference = "Navon et al., ICML 2022, arXiv:2202.01017; code: AvivNavon/nash-mtl"
    # the authors' training script back-propagates sum_t w_t L_t: heads get w_t grad L_t
    default_heads = "weighted"
    summary = "Nash bargaining solution G alpha = 1/alpha, norm clipped (Navon 2022)."
    Hyperparameters = NashMTLHyperparameters

    @property
    def shared_max_norm(self) -> float | None:
        return self.hp.max_norm or None

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = nash_mtl_weights(
            gramian, max_norm=0.0, reg_eps=hp.reg_eps, max_iters=hp.max_iters
        )
        return self.clip_shared(combine(weights, jacobian)), weights
