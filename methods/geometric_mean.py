"""Geometric loss strategy (GLS): the geometric mean of the task losses (Chennupati et al., 2019).

*MultiNet++: Multi-Stream Feature Aggregation and Geometric Loss Strategy for Multi-Task
Learning*, S. Chennupati, G. Sistu, S. Yogamani, S. A. Rawashdeh, CVPR Workshops 2019,
arXiv:1904.08492. Reference code: LibMTL ``LibMTL/weighting/GLS.py``; reference implementation
used for the tests: ``torchjd.scalarization.GeometricMean`` (torchjd 0.18.0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.base import LossWeighting

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def active_tasks(losses: Tensor, present: Tensor) -> Tensor:
    """The tasks whose logarithm is taken: ``present`` and with a positive loss (Tensor[T] of bool).

    A present task with loss exactly 0 is left out like an absent one: ``log 0`` would make the
    geometric mean 0 and its gradient ``0 / 0``."""
    return present.to(losses.device) & (losses.detach() > 0)


def geometric_mean_objective(losses: Tensor, active: Tensor) -> Tensor:
    """``k * exp(1/k sum_{t in A} log L_t)``: ``k`` times the geometric mean of the ``k`` active
    tasks' losses (``A``: ``active``, Tensor[T] of bool); 0 when ``k = 0``.

    Never takes ``log 0``: an inactive task's loss is replaced by 1 before the logarithm (so no
    ``inf``/``NaN`` reaches the gradient through ``torch.where``), and its gradient is 0. The
    logarithms avoid the reference's ``prod(L) ** (1/T)``, whose product under- or overflows for
    many small or large losses. The gradient w.r.t. ``L_t`` is ``GM_A / L_t`` on ``A``.
    """
    safe = torch.where(active, losses, torch.ones_like(losses))
    logs = torch.where(active, torch.log(safe), torch.zeros_like(losses))
    k = active.sum().to(losses.dtype)
    return k * torch.exp(logs.sum() / k.clamp(min=1))


def geometric_mean_weights(losses: Tensor, active: Tensor) -> Tensor:
    """The effective weights ``d(k GM_A)/dL_t = GM_A / L_t`` on the active tasks, 0 elsewhere.

    They are 1 when the active losses are equal (equal weighting's weights) and weigh a task
    inversely to its loss: ``sum_t w_t grad L_t = GM_A sum_{t in A} grad log L_t``."""
    safe = torch.where(active, losses, torch.ones_like(losses))
    logs = torch.where(active, torch.log(safe), torch.zeros_like(losses))
    k = active.sum().to(losses.dtype)
    gm = torch.exp(logs.sum() / k.clamp(min=1))
    return torch.where(active, gm / safe, torch.zeros_like(losses))


class GeometricMean(LossWeighting):
    """Geometric loss strategy: objective ``T * (prod_t L_t)^(1/T)``, the geometric mean of the
    losses times ``T``. Stateless; no hyperparameters. Reported weights: the effective weights
    ``dObjective/dL_t = GM / L_t`` (not a weighted sum: ``objective`` is overridden).

    Deviation from the references (torchjd's ``GeometricMean``, LibMTL's ``GLS``): the objective
    is theirs times ``T`` (the sum-``T`` convention of RLW, DWA and FAMO: at equal losses the
    weights are equal weighting's 1s, instead of ``1/T``).

    Masked tasks: the geometric mean runs over the ``k`` tasks present in the step whose loss is
    positive (an absent task's loss is 0: its ``log`` is never taken) and is multiplied by
    ``k``: exactly the method built for those tasks alone. The other tasks get weight 0.
    """

    name = "geometric_mean"
    summary = "Geometric mean of the losses, times T: weights GM / L_t (GLS, Chennupati 2019)."
    reference = (
        "Chennupati et al., CVPR Workshops 2019, arXiv:1904.08492; code: torchjd 0.18 GeometricMean"
    )

    def compute_present_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        return geometric_mean_weights(losses, active_tasks(losses, present))

    def objective(
        self, losses: Tensor, *, reduced: Tensor, weights: Tensor, present: Tensor | None = None
    ) -> Tensor:
        """``k GM_A(L~)`` with ``L~ = losses - losses.detach() + reduced``: the value of the
        reduced losses and the gradient ``sum_t (GM_A(reduced) / reduced_t) grad L_t`` of this
        worker's losses (DDP then averages it). Single-process ``L~ == losses`` exactly."""
        present = self._present(reduced, present)
        mixed = losses - losses.detach() + reduced.to(dtype=losses.dtype)
        return geometric_mean_objective(mixed, active_tasks(reduced, present))
