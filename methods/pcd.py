"""PCD: priority-constrained descent (as in torchjd 0.18).

*Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical
Multi-Objective Optimization*, TMLR 2026, arXiv:2606.29521 (the citation torchjd's docstring
gives; the authors' code: github.com/DaraVaram/priority-constrained-descent). Reference
implementation used for the tests: ``torchjd.aggregation.PCD`` / ``PCDWeighting`` (torchjd
0.18.0).

Task 0 is the primary objective, the others are secondary. With the normalised gradients
``~g_t = s_t g_t``, ``s_t = 1 / sqrt(^v_t + eps)`` (``^v_t``: the bias-corrected exponential
moving average, decay ``beta``, of ``||g_t||^2`` over the steps)::

    ~d = argmin_d 1/2 ||d - ~g_0||^2   subject to   ~g_j . d >= tau ||~g_j||^2,  j = 1..T-1

i.e. follow the primary gradient as closely as possible while every secondary task keeps a
fraction ``tau`` of the first-order progress of a step along its own normalised gradient. The
update is ``~d`` rescaled to the norm of ``g_0``. By the KKT conditions
``~d = ~g_0 + sum_j mu_j ~g_j`` with multipliers ``mu >= 0``, so ``d = w^T J`` with
``w = [1, mu] * s * ||g_0|| / ||~d||``; the QP is solved on the Gramian only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lazy_loader

from methods.base import HyperparameterError, check_number, set_field
from methods.gradient import GradientAggregator, combine

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def priority_multipliers(
    q: Tensor, taus: Tensor, *, tol: float = 1e-9, dependence_tol: float = 1e-9
) -> Tensor:
    """``w = [1, mu_1, ..., mu_{k-1}]`` with ``~d = w^T ~J`` the solution of PCD's QP, from the
    Gramian ``Q`` (Tensor[k, k], float64) of the normalised gradients, the primary first, and
    the fractions ``taus`` (Tensor[k - 1]); ``[1, 0, ..., 0]`` when the constraints are
    infeasible.

    Dual active-set method of Goldfarb & Idnani (1983) for the identity Hessian, as torchjd's
    (the authors enumerate the working sets instead): the iterate ``d = ~g_0 + sum_j mu_j ~g_j``
    is always the minimiser subject to the active constraints (as equalities), so every product
    is read off ``Q``. The slack of constraint ``j`` is ``(Q_s mu - b)_j`` with ``Q_s`` the
    secondaries' block and ``b_j = tau_j Q_jj - Q_j0``. While some constraint ``p`` is violated
    by more than ``tol max_t Q_tt`` (the most violated first), it is brought in: the primal step
    ``z = ~g_p - sum_{j active} r_j ~g_j`` (``Q_AA r = Q_Ap``, the part of ``~g_p`` orthogonal to
    the active gradients) with the dual step ``+1`` on ``mu_p``, ``-r`` on the active ``mu``; the
    step length is the smaller of the one that satisfies ``p`` (``-slack_p / ||z||^2``) and the
    one at which an active multiplier reaches 0 (that constraint is then dropped, and ``p``
    tried again). ``||z||^2 <= dependence_tol Q_pp`` counts as ``z = 0`` (``~g_p`` a combination
    of the active gradients); then if no multiplier can decrease, the constraints are
    infeasible. At most ``10 k`` inner steps (against cycling on round-off).
    """
    size = q.shape[0]
    weights = torch.zeros(size, dtype=q.dtype)
    weights[0] = 1.0
    if size == 1:
        return weights
    qs = q[1:, 1:]
    b = taus * qs.diagonal() - q[1:, 0]
    mu = torch.zeros(size - 1, dtype=q.dtype)
    active: list[int] = []
    atol = tol * max(float(q.diagonal().max()), torch.finfo(q.dtype).tiny)
    budget = 10 * size
    while budget > 0:
        slack = qs @ mu - b
        slack[active] = 0.0  # active constraints hold as equalities (up to round-off)
        p = int(slack.argmin())
        violation = float(slack[p])
        if violation >= -atol:
            break
        while budget > 0:
            budget -= 1
            if active:
                r = torch.linalg.solve(qs[active][:, active], qs[active, p])
                z2 = float(qs[p, p] - qs[p, active] @ r)
                ratios = torch.where(r > 0.0, mu[active] / r, math.inf)
                k = int(ratios.argmin())
                to_drop = float(ratios[k])
            else:
                r = torch.zeros(0, dtype=q.dtype)
                z2 = float(qs[p, p])
                k, to_drop = -1, math.inf
            to_satisfy = -violation / z2 if z2 > dependence_tol * float(qs[p, p]) else math.inf
            length = min(to_drop, to_satisfy)
            if length == math.inf:
                return weights  # infeasible: the secondaries' constraints are dropped
            mu[active] -= length * r
            mu[p] += length
            if to_satisfy <= to_drop:
                active.append(p)
                break
            mu[active[k]] = 0.0
            del active[k]
            violation = float(qs[p] @ mu - b[p])
    weights[1:] = mu.clamp(min=0.0)
    return weights


def pcd_weights(g: Tensor, scales: Tensor, tau: float, *, precision: float) -> Tensor:
    """The PCD weights ``w`` (Tensor[k], ``d = w^T J``) from the Gramian ``G`` (Tensor[k, k],
    float64; task 0 the primary) and the scales ``s`` (``1 / sqrt(^v + eps)``, 0 for a task
    whose average is 0).

    ``w = m * s * sqrt(G_00 / (m^T ~G m))`` with ``m = priority_multipliers(~G, tau)``,
    ``~G = G * s s^T``. Zero when ``G_00 = 0`` (no primary gradient) or when ``~d`` is 0 up to
    the round-off of ``G`` (``||~d||^2 <= precision (sum_t |m_t| ||~g_t||)^2``; ``precision``:
    ``10 eps`` of ``J``'s dtype, also the floor of the dependence tolerance).
    """
    weights = torch.zeros(g.shape[0], dtype=g.dtype)
    primary2 = float(g[0, 0])
    if not primary2 > 0.0:
        return weights
    normalized = g * torch.outer(scales, scales)
    taus = torch.full((g.shape[0] - 1,), tau, dtype=g.dtype)
    m = priority_multipliers(normalized, taus, dependence_tol=max(1e-9, precision))
    length2 = float(m @ normalized @ m)
    magnitude = float(m.abs() @ normalized.diagonal().sqrt()) ** 2
    if length2 > precision * magnitude:
        weights = m * scales * math.sqrt(primary2 / length2)
    return weights


@dataclass(frozen=True)
class PCDHyperparameters:
    tau: float = 0.02
    beta: float = 0.999
    eps: float = 1e-8

    def __post_init__(self) -> None:
        set_field(self, "tau", check_number("tau", self.tau, ge=0, le=1))
        beta = check_number("beta", self.beta, ge=0)
        if not beta < 1.0:
            raise HyperparameterError(f"beta must be a finite number >= 0 and < 1, got {beta!r}")
        set_field(self, "beta", beta)
        set_field(self, "eps", check_number("eps", self.eps, ge=0))


class PCD(GradientAggregator):
    """PCD: follow the primary task's gradient (task 0) as closely as possible while every
    other task keeps a fraction ``tau`` of the first-order progress of its own normalised
    gradient; the result has the norm of the primary gradient (see the module docstring).

    Defaults as torchjd's: ``tau = 0.02`` (one value for every secondary task; torchjd also takes
    a vector), ``beta = 0.999`` (decay of the moving average of the squared gradient norms),
    ``eps = 1e-8``. Not symmetric in the tasks: task 0 (the first of ``task_names``) is the
    primary. Reported weights: ``w`` with ``d = w^T J`` (``w_0 > 0``, the others ``>= 0``; 0 for
    a secondary task whose constraint is inactive). Special cases, as torchjd: a zero primary
    gradient gives ``d = 0``; infeasible constraints (e.g. two opposite secondary gradients)
    are dropped (``d = g_0``); a non-finite ``J`` gives NaN and leaves the average unchanged.

    State: the moving average of each task's squared gradient norm and its number of updates
    (per task, for the bias correction; torchjd counts the calls, the same when every task is
    present). Masked tasks: an absent task's average and count stay as they were and the present
    tasks' are updated as by PCD built for them alone; when the primary task is absent the
    update is 0 (what torchjd gives for a zero primary row: PCD has no primary to follow) while
    the present tasks' averages are still updated.
    """

    name = "pcd"
    summary = "Follow task 0's gradient, others keep a share tau of their progress (PCD 2026)."
    reference = (
        "Priority-Constrained Descent, TMLR 2026, arXiv:2606.29521 (as cited by torchjd); "
        "code: torchjd 0.18 PCD"
    )
    Hyperparameters = PCDHyperparameters

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self._sq_norm_ema = torch.zeros(self.num_tasks, dtype=torch.float64)
        self._updates = torch.zeros(self.num_tasks, dtype=torch.int64)

    def _scales(self, sq_norms: Tensor, idx: Tensor) -> Tensor:
        """Update the present tasks' (``idx``) averages with ``sq_norms`` (Tensor[k]) and
        return their scales ``1 / sqrt(^v + eps)`` (0 where the denominator is 0)."""
        beta = self.hp.beta
        ema = beta * self._sq_norm_ema[idx] + (1.0 - beta) * sq_norms
        self._sq_norm_ema[idx] = ema
        self._updates[idx] += 1
        correction = torch.tensor(
            [1.0 - beta ** int(n) for n in self._updates[idx]], dtype=torch.float64
        )
        denominators = (ema / correction + self.hp.eps).sqrt()
        return torch.where(denominators > 0.0, 1.0 / denominators, 0.0)

    def compute_present(
        self, jacobian: Tensor, losses: Tensor, gramian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        weights = torch.zeros(self.num_tasks, dtype=gramian.dtype)
        idx = present.nonzero().flatten()
        if idx.numel() == 0:
            return torch.zeros_like(jacobian[0]), weights
        sub = gramian[idx][:, idx]
        scales = self._scales(sub.diagonal(), idx)
        if not bool(present[0]):
            return torch.zeros_like(jacobian[0]), weights
        precision = 10.0 * torch.finfo(jacobian.dtype).eps
        sub_weights = pcd_weights(sub, scales, self.hp.tau, precision=precision)
        weights[idx] = sub_weights
        return combine(sub_weights, jacobian[idx.to(jacobian.device)]), weights

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        present = torch.ones(self.num_tasks, dtype=torch.bool)
        return self.compute_present(jacobian, losses, gramian, present)

    def _state(self) -> dict[str, Any]:
        return {
            **super()._state(),
            "sq_norm_ema": self._sq_norm_ema.clone(),
            "updates": self._updates.clone(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        self._sq_norm_ema = state["sq_norm_ema"].to("cpu", torch.float64).clone()
        self._updates = state["updates"].to("cpu", torch.int64).clone()
