"""Scale-invariant loss: the sum of the log task losses, ``sum_t log L_t``.

The scale-invariant baseline (SI) of *Multi-Task Learning as a Bargaining Game*, A. Navon,
A. Shamsian, I. Achituve, H. Maron, K. Kawaguchi, G. Chechik, E. Fetaya, ICML 2022,
arXiv:2202.01017 (``ScaleInvariantLinearScalarization`` in ``methods/weight_methods.py`` of
github.com/AvivNavon/nash-mtl), also a baseline of FAMO (B. Liu, Y. Feng, P. Stone, Q. Liu,
NeurIPS 2023, arXiv:2306.03792). Not in torchjd: the tests derive the values by hand.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.base import LossWeighting
from methods.geometric_mean import active_tasks

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def scale_invariant_objective(losses: Tensor, active: Tensor) -> Tensor:
    """``sum_{t in A} log L_t`` over the ``active`` tasks (Tensor[T] of bool); 0 when none.

    Its gradient ``sum_{t in A} grad L_t / L_t`` does not change when a loss is multiplied by a
    constant (hence the name). An inactive task's loss is replaced by 1 before the logarithm, so
    ``log 0`` is never taken and its gradient is 0 (not ``0 * inf``)."""
    safe = torch.where(active, losses, torch.ones_like(losses))
    return torch.where(active, torch.log(safe), torch.zeros_like(losses)).sum()


def scale_invariant_weights(losses: Tensor, active: Tensor) -> Tensor:
    """The effective weights ``d/dL_t sum log L = 1 / L_t`` on the active tasks, 0 elsewhere."""
    safe = torch.where(active, losses, torch.ones_like(losses))
    return torch.where(active, 1.0 / safe, torch.zeros_like(losses))


class ScaleInvariant(LossWeighting):
    """Scale-invariant loss: objective ``sum_t log L_t``; the model's update is
    ``sum_t grad L_t / L_t``, the same whatever each loss's scale. Stateless; no hyperparameters.
    Reported weights: the effective weights ``dObjective/dL_t = 1 / L_t`` (``objective`` is
    overridden; its value is the sum of logs, not ``sum_t w_t L_t``).

    As the reference (``torch.sum(torch.log(losses))``): no normalisation; the weights sum to
    ``sum_t 1 / L_t`` (``T`` when every loss is 1; larger for losses below 1, e.g. cross-entropy
    late in training).

    Masked tasks: the sum runs over the tasks present in the step whose loss is positive (the
    log of an absent task's 0 is never taken); the others get weight 0. The terms do not
    interact, so this is the method built for those tasks alone.
    """

    name = "scale_invariant"
    summary = "Sum of the log losses: update sum_t grad L_t / L_t (Navon 2022's SI baseline)."
    reference = "Navon et al., ICML 2022, arXiv:2202.01017 (baseline SI); code: AvivNavon/nash-mtl"

    def compute_present_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        return scale_invariant_weights(losses, active_tasks(losses, present))

    def objective(
        self, losses: Tensor, *, reduced: Tensor, weights: Tensor, present: Tensor | None = None
    ) -> Tensor:
        """``sum_{t in A} log L~_t`` with ``L~ = losses - losses.detach() + reduced``: the value of
        the reduced losses and the gradient ``sum_t grad L_t / reduced_t`` of this worker's
        losses (DDP then averages it to ``grad Lbar_t / Lbar_t``, the full batch's). Single-process
        ``L~ == losses`` exactly."""
        present = self._present(reduced, present)
        mixed = losses - losses.detach() + reduced.to(dtype=losses.dtype)
        return scale_invariant_objective(mixed, active_tasks(reduced, present))
