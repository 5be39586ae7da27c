"""Equal weighting: the plain sum of the task losses."""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.base import LossWeighting

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def equal_weights(num_tasks: int) -> Tensor:
    """``w_t = 1`` for every task, so the objective is ``sum_t L_t``."""
    return torch.ones(num_tasks, dtype=torch.float32)


class Equal(LossWeighting):
    """Equal weighting (the usual multi-task baseline).

    Formula: ``L = sum_t L_t``, i.e. ``w_t = 1``. Convention of this harness: equal weighting SUMS
    the losses, it does not average them (averaging is the same direction with the learning rate
    divided by ``T``).

    Hyperparameters: none.
    """

    name = "equal"
    reference = "Unitary scalarization: Kurin et al., NeurIPS 2022, arXiv:2201.04122"
    summary = "Sum of the task losses (w_t = 1)."

    def compute_weights(self, losses: Tensor) -> Tensor:
        return equal_weights(self.num_tasks)
