"""PCGrad: projecting conflicting gradients (Yu et al., NeurIPS 2020).

*Gradient Surgery for Multi-Task Learning*, T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman,
C. Finn, NeurIPS 2020, arXiv:2001.06782 (Algorithm 1). Reference implementation used for the
tests: ``torchjd.aggregation.PCGrad`` (torchjd 0.18.0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.gradient import GradientAggregator, combine

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def pcgrad_weights(g: Tensor) -> Tensor:
    """The weights ``w`` with ``sum_i g_i^PC = w^T J``, from the Gramian ``G = J J^T``.

    For each task ``i`` (in order), with a fresh random order of the tasks
    (``torch.randperm(T)``, the global CPU generator; ``i`` itself is skipped)::

        g_i^PC <- g_i
        for j in order:  if g_i^PC . g_j < 0:  g_i^PC <- g_i^PC - (g_i^PC . g_j) / ||g_j||^2 g_j

    (always against the ORIGINAL ``g_j``), and the update is ``sum_i g_i^PC``. Each ``g_i^PC`` is
    a combination ``c_i^T J`` of the rows, so all products are read off the Gramian
    (``g_i^PC . g_j = (G c_i)_j``) and ``w = sum_i c_i``. A zero ``g_j`` never conflicts.
    ``T`` calls to ``torch.randperm``, so a seed fixes the result.
    """
    num_tasks = g.shape[0]
    weights = torch.zeros(num_tasks, dtype=g.dtype)
    for i in range(num_tasks):
        order = torch.randperm(num_tasks).tolist()
        c = torch.zeros(num_tasks, dtype=g.dtype)
        c[i] = 1.0
        for j in order:
            if j == i:
                continue
            dot = g[j] @ c
            if dot < 0.0:
                c[j] -= dot / g[j, j]
        weights += c
    return weights


class PCGrad(GradientAggregator):
    """PCGrad: each task gradient is projected onto the normal plane of every other task gradient
    it conflicts with (random order per task), and the projected gradients are summed.

    Reported weights: the effective coefficients ``w`` with ``direction = w^T J`` (``w_t = 1``
    when no pair conflicts, as torchjd's ``PCGradWeighting``). Random: draws ``T`` task orders from
    torch's global RNG per call.
    """

    name = "pcgrad"
    reference = "Yu et al., NeurIPS 2020, arXiv:2001.06782; code: torchjd 0.18 PCGrad"
    summary = "Project each task gradient off the gradients it conflicts with, then sum (Yu 2020)."

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        weights = pcgrad_weights(gramian)
        return combine(weights, jacobian), weights
