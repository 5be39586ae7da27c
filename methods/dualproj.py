"""DualProj: the mean gradient projected onto the dual cone of the task gradients.

From TorchJD (*Jacobian Descent for Multi-Objective Optimization*, P. Quinton, V. Rey, 2024,
arXiv:2406.16232, where it is the baseline beside UPGrad; the projection is eq. 11 of *Gradient
Episodic Memory for Continual Learning*, D. Lopez-Paz, M. Ranzato, NeurIPS 2017). Reference
implementation used for the tests: ``torchjd.aggregation.DualProj`` (torchjd 0.18.0, with its
default ``QuadprogProjector(norm_eps=1e-4, reg_eps=1e-4)`` and mean preference vector); here
the same quadratic program is solved by the active-set method of ``methods.upgrad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from methods.base import check_number, set_field
from methods.gradient import GradientAggregator, check_positive_int, combine, trace_normalized
from methods.upgrad import dual_cone_projection_weights


def dualproj_weights(
    g: Tensor, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iters: int = 1000
) -> Tensor:
    """``w`` with ``w^T J = pi(g0)``, the projection of the mean gradient ``g0 = 1/T 1^T J``
    onto the dual cone ``{d : J d >= 0}``: ``w = argmin_{v >= 1/T} v^T G v``
    (``dual_cone_projection_weights`` with ``u = 1/T``; Proposition 1 of Quinton & Rey).

    As torchjd: ``G`` is divided by its trace (the zero matrix when ``tr G <= norm_eps``, then
    ``w = 1/T``) and ``reg_eps * I`` is added (a strictly convex QP with a unique solution).
    ``w >= 1/T``; ``w = 1/T`` when ``g0`` conflicts with no task.
    """
    num_tasks = g.shape[0]
    q = trace_normalized(g, norm_eps) + reg_eps * torch.eye(num_tasks, dtype=g.dtype)
    u = torch.full((num_tasks,), 1.0 / num_tasks, dtype=g.dtype)
    return dual_cone_projection_weights(u, q, max_iters=max_iters)


@dataclass(frozen=True)
class DualProjHyperparameters:
    norm_eps: float = 1e-4
    reg_eps: float = 1e-4
    max_iters: int = 1000

    def __post_init__(self) -> None:
        set_field(self, "norm_eps", check_number("norm_eps", self.norm_eps, ge=0))
        set_field(self, "reg_eps", check_number("reg_eps", self.reg_eps, gt=0))
        set_field(self, "max_iters", check_positive_int("max_iters", self.max_iters))


class DualProj(GradientAggregator):
    """DualProj: ``d = pi(g0)``, the mean gradient projected onto the dual cone of the task
    gradients (the directions conflicting with none), ``d = w^T J``.

    ``norm_eps``: a Gramian with trace ``<= norm_eps`` is treated as zero (the update is then the
    mean gradient); ``reg_eps``: ridge added to the trace-normalised Gramian (torchjd's defaults,
    ``> 0`` required here); ``max_iters``: cap on the active-set solves. Reported weights:
    ``w >= 1/T`` (summing to more than 1 when the mean conflicts with a task).
    """

    name = "dualproj"
    summary = "Mean gradient projected onto the dual cone of the task gradients (torchjd)."
    reference = "P. Quinton, V. Rey, 2024, arXiv:2406.16232 (TorchJD); code: torchjd 0.18 DualProj"
    Hyperparameters = DualProjHyperparameters

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = dualproj_weights(
            gramian, norm_eps=hp.norm_eps, reg_eps=hp.reg_eps, max_iters=hp.max_iters
        )
        return combine(weights, jacobian), weights
