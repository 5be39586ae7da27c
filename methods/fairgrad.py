"""FairGrad: fair resource allocation in multi-task learning (Ban & Ji, ICML 2024).

*Fair Resource Allocation in Multi-Task Learning*, H. Ban, K. Ji, ICML 2024, arXiv:2402.15638
(eq. 4 and Algorithm 1; the authors' code: ``FairGrad`` in ``methods/weight_methods.py`` of
github.com/OptMN-Lab/fairgrad, ``alpha`` 1.0 by default there). Reference implementation used
for the tests: ``torchjd.aggregation.FairGrad`` / ``FairGradWeighting`` (torchjd 0.18.0, a port
of the authors' code: ``scipy.optimize.least_squares`` on ``G x - x^(-1/alpha)`` from
``x = 1/T``, bounds ``x >= 0``; ``alpha`` has no default there).

The update ``d = x^T J`` maximises the alpha-fair utility of the task improvements
``u_t = g_t . d``; its weights ``x > 0`` solve (eq. 4; ``G = J J^T``, elementwise power)::

    G x = x^(-1/alpha)            i.e.  g_t . d = x_t^(-1/alpha) for every task t

(``alpha = 1`` is Nash-MTL's ``G x = 1 / x``). Here the system is solved to round-off by Newton's
method on the strictly convex potential whose stationary point it is,
``phi(x) = 1/2 x^T G x - sum_t F(x_t)`` with ``F' (x) = x^(-1/alpha)``.
"""

from __future__ import annotations

import math
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


def _potential_change(q: Tensor, a: Tensor, p: float, z: Tensor, step: Tensor) -> float:
    """``phi(z + step) - phi(z)`` for ``phi(z) = 1/2 z^T Q z - sum_t a_t F_p(z_t)``,
    ``F_p(z) = z^(1-p) / (1 - p)`` (``log z`` for ``p = 1``), written as differences (no
    cancellation between two large values of ``phi`` when the entries of ``z`` span many orders
    of magnitude): ``step . (Q z) + 1/2 step^T Q step - sum_t a_t z_t^(1-p) e(step_t / z_t)``
    with ``e(r) = ((1 + r)^(1-p) - 1) / (1 - p)`` (``log(1 + r)`` for ``p = 1``)."""
    log_ratio = torch.log1p(step / z)
    power = 1.0 - p
    change = log_ratio if p == 1.0 else z.pow(power) * torch.expm1(power * log_ratio) / power
    return float(step @ (q @ z) + 0.5 * step @ q @ step - a @ change)


def fairgrad_solve(q: Tensor, a: Tensor, p: float, *, max_iters: int = 100) -> Tensor:
    """``z > 0`` with ``Q z = a * z^(-p)`` (elementwise), the minimiser of the strictly convex
    ``phi(z) = 1/2 z^T Q z - sum_t a_t F_p(z_t)``, ``F_p' (z) = z^(-p)``.

    ``Q``: positive-definite Tensor[k, k] with unit-scale diagonal; ``a``: Tensor[k], ``> 0``;
    ``p = 1 / alpha > 0``. Newton's method from the solution for a diagonal ``Q``,
    ``z_t = (a_t / Q_tt)^(1 / (1 + p))``: Hessian ``Q + diag(p a z^(-p-1))``; the step is cut so
    that no entry of ``z`` shrinks by more than 100x (fraction to the boundary: the solution's
    entries can span many orders of magnitude, and ``phi`` is not self-concordant for
    ``p < 1``, so a full step can overshoot far past 0), then halved until the residual
    relative to each task's target, ``||(Q z - a z^-p) / (a z^-p)||``, or ``phi`` (Armijo, on
    its exact change) decreases enough. Stops when ``max_t |(Q z)_t z_t^p / a_t - 1| <= 1e-12``,
    when no step of length above 1e-12 makes progress (the round-off floor: a task's target
    below the round-off of ``(Q z)_t``, or a Pareto-stationary point held by the ridge), or
    after ``max_iters`` steps.
    """
    z = (a / q.diagonal()) ** (1.0 / (1.0 + p))
    for _ in range(max_iters):
        qz = q @ z
        target = a * z.pow(-p)
        if float((qz / target - 1.0).abs().max()) <= _RESIDUAL_TOL:
            break
        grad = qz - target
        step = torch.linalg.solve(q + torch.diag(p * target / z), -grad)
        slope = float(grad @ step)  # -(Newton decrement)^2
        if not slope < 0.0:
            break  # no descent direction left: round-off
        shrinking = step < 0.0
        t = 1.0
        if bool(shrinking.any()):
            t = min(t, 0.99 * float((z[shrinking] / -step[shrinking]).min()))
        # merit: the residual of every task relative to its own target (the entries of z and a
        # can span many orders of magnitude, below the round-off of phi's value)
        merit = float(((qz - target) / target).norm())
        while True:
            candidate = z + t * step
            residual = (q @ candidate - a * candidate.pow(-p)) / target
            if float(residual.norm()) <= (1.0 - 1e-4 * t) * merit:
                break
            change = _potential_change(q, a, p, z, t * step)
            if math.isfinite(change) and change <= 1e-4 * t * slope:
                break
            if t < 1e-12:
                return z
            t *= 0.5
        z = candidate
    return z


def fairgrad_weights(
    g: Tensor, *, alpha: float = 1.0, reg_eps: float = 1e-10, max_iters: int = 100
) -> Tensor:
    """``x`` (Tensor[T]) with ``G x = x^(-1/alpha)`` (``alpha > 0``), or ``1/T`` each for
    ``alpha = 0`` (linear scalarisation, as torchjd).

    Conditioning: with ``s = max_t G_tt``, ``n_t = sqrt(G_tt / s)`` and the correlation matrix
    ``C = D (G / s) D`` (``D = diag(1 / n)``), ``x = s^(-1/(1+p)) D z`` where
    ``(C + rho I) z = n^(p-1) z^(-p)`` (``p = 1 / alpha``; ``fairgrad_solve``), the same system
    written in unit-norm gradients; ``rho = reg_eps`` plus the magnitude of ``C``'s smallest
    eigenvalue if below ``-reg_eps / 2`` (round-off of a float32 Gramian). The ridge is
    ``rho ||g_t||^2`` on each ``G_tt``: it changes nothing measurable when the system has a
    solution, and keeps ``x`` finite when it has none (``G x = x^(-1/alpha) > 0`` has no
    solution when a non-negative combination of the gradients is 0, e.g. two opposite
    gradients: a Pareto-stationary point, where ``x`` grows like a power of ``1 / rho`` along
    the combinations that cancel, which hardly move ``d``). A task with a zero gradient
    (``||g_t||^2 <= 1e-24 max_s ||g_s||^2``, e.g. all its labels masked; it has no solution
    either) gets weight 0 and the others are solved without it. A zero ``J`` gives 0.

    Accuracy: to round-off for ``alpha`` from 0.5 to 10 on every test Jacobian. Far from
    ``alpha = 1`` with gradient norms spanning many orders of magnitude (1e6 for
    ``alpha <= 0.2`` or ``>= 100``), a task's share ``g_t . d`` can fall below the round-off of
    ``G x`` in float64: its weight is then only as accurate as that (finite; the update is
    dominated by the other tasks).
    """
    num_tasks = g.shape[0]
    if alpha == 0.0:
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=g.dtype)
    weights = torch.zeros(num_tasks, dtype=g.dtype)
    norms2 = g.diagonal()
    top = float(norms2.max())
    if not top > 0.0:
        return weights
    p = 1.0 / alpha
    alive = norms2 > ZERO_ROW * top
    n = (norms2[alive] / top).sqrt()
    c = g[alive][:, alive] / top / (n[:, None] * n[None, :])
    # a Gramian of float32 gradients can be slightly indefinite: lift it to PSD first
    low = float(torch.linalg.eigvalsh(c)[0])  # lifted only if the ridge is not enough
    ridge = reg_eps if low >= -0.5 * reg_eps else reg_eps - low
    c = c + ridge * torch.eye(c.shape[0], dtype=g.dtype)
    z = fairgrad_solve(c, n.pow(p - 1.0), p, max_iters=max_iters)
    weights[alive] = top ** (-1.0 / (1.0 + p)) * z / n
    return weights


@dataclass(frozen=True)
class FairGradHyperparameters:
    alpha: float = 1.0
    reg_eps: float = 1e-10
    max_iters: int = 100

    def __post_init__(self) -> None:
        set_field(self, "alpha", check_number("alpha", self.alpha, ge=0, le=100))
        set_field(self, "reg_eps", check_number("reg_eps", self.reg_eps, gt=0, le=1e-2))
        set_field(self, "max_iters", check_positive_int("max_iters", self.max_iters))


class FairGrad(GradientAggregator):
    """FairGrad: ``d = x^T J`` with ``G x = x^(-1/alpha)``, i.e. each task improves by
    ``g_t . d = x_t^(-1/alpha)``: the alpha-fair allocation of the update (``alpha = 0``: the
    mean gradient; ``alpha = 1``: Nash-MTL without its clipping; larger ``alpha``: fairer,
    towards max-min).

    Defaults: ``alpha = 1.0`` (the authors' code default; their run scripts use 2.0; torchjd has
    none), ``alpha <= 100`` (beyond, the weights of the least served tasks fall like
    ``exp(-alpha)``, below float64's range), ``reg_eps = 1e-10``
    (ridge on the gradients' correlation matrix, see ``fairgrad_weights``), ``max_iters = 100``
    (Newton steps). Deviations from torchjd (``scipy.optimize.least_squares`` from ``x = 1/T``,
    tolerances 1e-8): solved to round-off and independent of the gradients' scale; a zero
    gradient gets weight 0 (torchjd's grows to whatever its iterations reach: same update); where
    no solution exists (a Pareto-stationary point) torchjd returns wherever its iterations stop,
    ours the ridge's solution. Reported weights: ``x`` (not normalised: ``||d||^2 = sum_t
    x_t^(1 - 1/alpha)``).
    """

    name = "fairgrad"
    summary = "Alpha-fair update: weights x with G x = x^(-1/alpha) (Ban & Ji 2024)."
    reference = "H. Ban, K. Ji, ICML 2024, arXiv:2402.15638; code: torchjd 0.18 FairGradWeighting"
    Hyperparameters = FairGradHyperparameters

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = fairgrad_weights(
            gramian, alpha=hp.alpha, reg_eps=hp.reg_eps, max_iters=hp.max_iters
        )
        return combine(weights, jacobian), weights
