"""DualProj: the mean gradient projected onto the dual cone of the task gradients.

From TorchJD (*Jacobian Descent for Multi-Objective Optimization*, P. Quinton, V. Rey, 2024,
arXiv:2406.16232, where it is the baseline beside UPGrad; the projection is eq. 11 of *Gradient
Episodic Memory for Continual Learning*, D. Lopez-Paz, M. Ranzato, NeurIPS 2017). Reference
implementation used for the tests: ``torchjd.aggregation.DualProj`` (torchjd 0.18.0, with its
default ``QuadprogProjector(norm_eps=1e-4, reg_eps=1e-4)`` and mean preference vector); here
the same quadratic program is solved by the active-set method of ``methods.upgrad``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.gradient import GradientAggregator, combine
from methods.upgrad import (
    DualConeHyperparameters,
    dual_cone_projection_weights,
    regularized_gramian,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def dualproj_weights(
    g: Tensor, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iters: int = 1000
) -> Tensor:
    """``w`` with ``w^T J = pi(g0)``, the projection of the mean gradient ``g0 = 1/T 1^T J``
    onto the dual cone ``{d : J d >= 0}``: ``w = argmin_{v >= 1/T} v^T G v``
    (``dual_cone_projection_weights`` with ``u = 1/T``; Proposition 1 of Quinton & Rey).

    The projection uses ``regularized_gramian(g, norm_eps, reg_eps)``, as torchjd (``w = 1/T``
    when ``tr G <= norm_eps``). ``w >= 1/T``; ``w = 1/T`` when ``g0`` conflicts with no task.
    """
    num_tasks = g.shape[0]
    q = regularized_gramian(g, norm_eps, reg_eps)
    u = torch.full((num_tasks,), 1.0 / num_tasks, dtype=g.dtype)
    return dual_cone_projection_weights(u, q, max_iters=max_iters)


class DualProj(GradientAggregator):
    """DualProj: ``d = pi(g0)``, the mean gradient projected onto the dual cone of the task
    gradients (the directions conflicting with none), ``d = w^T J``.

    Hyperparameters ``norm_eps``, ``reg_eps``, ``max_iters``: UPGrad's
    (``DualConeHyperparameters``). Reported weights: ``w >= 1/T`` (summing to more than 1 when the
    mean conflicts with a task).
    """

    name = "dualproj"
    summary = "Mean gradient projected onto the dual cone of the task gradients (torchjd)."
    reference = "P. Quinton, V. Rey, 2024, arXiv:2406.16232 (TorchJD); code: torchjd 0.18 DualProj"
    Hyperparameters = DualConeHyperparameters

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = dualproj_weights(
            gramian, norm_eps=hp.norm_eps, reg_eps=hp.reg_eps, max_iters=hp.max_iters
        )
        return combine(weights, jacobian), weights
