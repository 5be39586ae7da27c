"""Random loss weighting (Lin et al., TMLR 2022).

*Reasonable Effectiveness of Random Weighting: A Litmus Test for Multi-Task Learning*, B. Lin,
F. Ye, Y. Zhang, I. W. Tsang, TMLR 2022, arXiv:2111.10603 (Algorithm 2, normal distribution).
Reference implementations: LibMTL ``weighting/RLW.py`` and ``torchjd.scalarization.Random``,
both ``softmax(torch.randn(T))`` (sum 1); see the scale convention below.
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


def rlw_weights(num_tasks: int) -> Tensor:
    """``w = T * softmax(z)``, ``z ~ N(0, I_T)`` drawn with torch's global (CPU) RNG, float32.

    Positive, sum ``T`` and ``E[w_t] = 1``: the expectation is equal weighting, which in this
    harness SUMS the losses (``w_t = 1``). LibMTL and torchjd use ``softmax(z)`` (sum 1).
    """
    z = torch.randn(num_tasks, dtype=torch.float32)
    return num_tasks * torch.softmax(z, dim=0)


class RLW(LossWeighting):
    """Random loss weighting: every step ``w = T * softmax(z)``, ``z ~ N(0, I_T)``.

    The draw uses torch's global CPU RNG (one ``torch.randn(T)`` per step), so seeding torch
    makes it reproducible. Scaled to sum ``T`` (not 1 as in LibMTL/torchjd) so that, like every
    method here, its expected weights match equal weighting's ``w_t = 1``.
    """

    name = "rlw"
    reference = "Lin et al., TMLR 2022, arXiv:2111.10603; code: LibMTL RLW"
    summary = "Random weights each step: T * softmax(z), z ~ N(0, I) (Lin 2022; sum T)."

    def compute_weights(self, losses: Tensor) -> Tensor:
        return rlw_weights(self.num_tasks)
