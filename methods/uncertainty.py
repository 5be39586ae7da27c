"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

*Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics*,
A. Kendall, Y. Gal, R. Cipolla, CVPR 2018, arXiv:1705.07115. Reference implementation used for
the tests: ``torchjd.scalarization.UW`` (torchjd 0.18.0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.task_scales import LearnedTaskScales

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def uncertainty_objective(losses: Tensor, log_var: Tensor, present: Tensor | None = None) -> Tensor:
    """``L = sum_t 0.5 * exp(-s_t) * L_t + 0.5 * s_t`` with ``s_t = log sigma_t^2``, the sum over
    the ``present`` tasks only (all when None): an absent task's ``s_t`` gets no gradient."""
    terms = 0.5 * torch.exp(-log_var) * losses + 0.5 * log_var
    if present is None:
        return terms.sum()
    return torch.where(present, terms, torch.zeros_like(terms)).sum()


def uncertainty_weights(log_var: Tensor) -> Tensor:
    """The effective task weights ``0.5 * exp(-s_t)`` (1 / (2 sigma_t^2))."""
    return 0.5 * torch.exp(-log_var)


class Uncertainty(LearnedTaskScales):
    """Uncertainty weighting: learnable log-variances ``s_t`` (init 0), objective
    ``sum_t 0.5 exp(-s_t) L_t + 0.5 s_t``; ``s`` is optimised with its own ``lr`` (default 0.025)
    and no weight decay. Reported weights: ``0.5 exp(-s_t)``.

    The training loop must call ``to(device)`` and add ``optimizer_group()`` to its optimizer.

    Masked tasks (``LearnedTaskScales``): the objective sums over the tasks present in the step
    only, so an absent task's ``s_t`` gets gradient 0 (not the ``+ 0.5`` of its ``0.5 s_t``
    term), and ``on_step_end`` puts back the ``s_t`` of the absent tasks as they were before the
    optimizer step. The present tasks' ``s`` follow exactly the trajectory of the method built
    for them alone. ``s`` is ``method.log_var``, checkpointed as ``log_var``.
    """

    name = "uncertainty"
    reference = "Kendall, Gal & Cipolla, CVPR 2018, arXiv:1705.07115; code: torchjd 0.18 UW"
    summary = "Learned per-task log-variances s: sum_t 0.5 exp(-s_t) L_t + 0.5 s_t (Kendall 2018)."
    scale_name = "log_var"
    log_var: torch.nn.Parameter

    def scaled_objective(self, losses: Tensor, scales: Tensor, present: Tensor) -> Tensor:
        """``uncertainty_objective``: ``d/ds_t = 0.5 - 0.5 exp(-s_t) Lbar_t``,
        ``d/dL_t = 0.5 exp(-s_t)``."""
        return uncertainty_objective(losses, scales, present)

    def scale_weights(self, scales: Tensor, present: Tensor) -> Tensor:
        """``0.5 exp(-s_t)`` on every task, present or not (an absent task's loss is 0)."""
        return uncertainty_weights(scales)
