"""IMTL-L: impartial multi-task learning, loss part (Liu et al., ICLR 2021).

*Towards Impartial Multi-task Learning*, L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang,
Q. Liao, W. Zhang, ICLR 2021 (openreview.net/forum?id=IMPnRXEWpvr). Reference code: LibMTL
``LibMTL/weighting/IMTL.py`` (its ``loss_scale``, combined there with IMTL-G); reference
implementation used for the tests: ``torchjd.scalarization.IMTLL`` (torchjd 0.18.0).
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


def imtl_l_objective(losses: Tensor, log_scale: Tensor, present: Tensor | None = None) -> Tensor:
    """``sum_t exp(s_t) L_t - s_t`` with the learnable scales ``s`` (``log_scale``), summed over
    the ``present`` tasks only (all when None): an absent task's ``s_t`` gets gradient 0, not the
    ``-1`` of its ``-s_t`` term (which would raise its weight without bound while its loss is 0).

    ``d/ds_t = exp(s_t) L_t - 1``: zero at ``exp(s_t) = 1 / L_t``, where every scaled loss is 1.
    ``d/dL_t = exp(s_t)`` (``imtl_l_weights``)."""
    terms = torch.exp(log_scale) * losses - log_scale
    if present is None:
        return terms.sum()
    return torch.where(present, terms, torch.zeros_like(terms)).sum()


def imtl_l_weights(log_scale: Tensor, present: Tensor) -> Tensor:
    """The effective weights ``dObjective/dL_t = exp(s_t)`` on the ``present`` tasks, else 0."""
    weights = torch.exp(log_scale)
    return torch.where(present.to(weights.device), weights, torch.zeros_like(weights))


class IMTLL(LearnedTaskScales):
    """IMTL-L: learnable log-scales ``s_t`` (init 0), objective ``sum_t exp(s_t) L_t - s_t``; ``s``
    is optimised with its own ``lr`` (default 0.025, as uncertainty's) and no weight decay.
    Reported weights: ``exp(s_t)``, the effective ``dObjective/dL_t`` (0 for an absent task).

    The training loop must call ``to(device)`` and add ``optimizer_group()`` to its optimizer.
    Equal to ``2 * uncertainty`` at ``s = -log sigma^2`` (torchjd's docstring): the same optima,
    weights twice uncertainty's, and under Adam the same ``s`` trajectory up to its sign and
    Adam's ``eps``. The paper and LibMTL learn ``s`` with the network's optimizer and learning
    rate; here ``lr`` is its own, as for uncertainty.

    Masked tasks (``LearnedTaskScales``): the objective sums over the tasks present in the step
    only, so an absent task's ``s_t`` gets gradient 0 (not the ``-1`` of its ``-s_t`` term), and
    ``on_step_end`` puts back the ``s_t`` of the absent tasks as they were before the optimizer
    step. The present tasks' ``s`` follow exactly the trajectory of the method built for them
    alone. ``s`` is ``method.log_scale``, checkpointed as ``log_scale``.
    """

    name = "imtl_l"
    summary = "Learned per-task log-scales s: sum_t exp(s_t) L_t - s_t (IMTL-L, Liu 2021)."
    reference = "Liu et al., ICLR 2021; code: torchjd 0.18 IMTLL"
    scale_name = "log_scale"
    log_scale: torch.nn.Parameter

    def scaled_objective(self, losses: Tensor, scales: Tensor, present: Tensor) -> Tensor:
        """``imtl_l_objective``: ``d/ds_t = exp(s_t) Lbar_t - 1``, ``d/dL_t = exp(s_t)``."""
        return imtl_l_objective(losses, scales, present)

    def scale_weights(self, scales: Tensor, present: Tensor) -> Tensor:
        return imtl_l_weights(scales, present)
