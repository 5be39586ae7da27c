"""IMTL-G: impartial multi-task learning, gradient part (Liu et al., ICLR 2021).

*Towards Impartial Multi-task Learning*, L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang,
Q. Liao, W. Zhang, ICLR 2021. Generalised to linearly dependent gradients with a pseudo-inverse in
*Jacobian Descent for Multi-Objective Optimization*, P. Quinton, V. Rey, 2024, arXiv:2406.16232.
Reference implementation used for the tests: ``torchjd.aggregation.IMTLG`` (torchjd 0.18.0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.gradient import GradientAggregator, combine, trace_normalized

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: ``|sum_t v_t|`` below this (on the trace-normalised Gramian) gives zero weights.
ZERO_SUM = 1e-12


def imtl_g_weights(g: Tensor) -> Tensor:
    """``w = v / sum_t v_t`` with ``v = G^+ sqrt(diag G)`` (zero when ``|sum v| < 1e-12``).

    The update ``d = w^T J`` then has the same projection on every unit task gradient,
    ``g_t . d / ||g_t|| = 1 / sum v`` (for linearly independent ``g_t``; IMTL-G's condition), and
    ``sum_t w_t = 1``. ``G`` is first divided by its trace (which leaves ``w`` unchanged) so that
    the zero threshold is relative to the scale of the gradients; ``G^+`` is
    ``torch.linalg.pinv``'s (relative cut-off). A zero Jacobian gives ``w = 0``.
    """
    g = trace_normalized(g)
    v = torch.linalg.pinv(g) @ g.diagonal().clamp(min=0.0).sqrt()
    total = v.sum()
    if not float(total.abs()) >= ZERO_SUM:
        return torch.zeros_like(v)
    return v / total


class IMTLG(GradientAggregator):
    """IMTL-G: the combination ``w^T J`` (``sum w = 1``) whose projections on the unit task
    gradients are all equal, ``w = G^+ ||g|| / sum(G^+ ||g||)`` (torchjd's pseudo-inverse form).
    Reported weights: ``w``.
    """

    name = "imtl_g"
    reference = "Liu et al., ICLR 2021; code: torchjd 0.18 IMTLG"
    summary = "Weights giving equal projections on all unit task gradients, sum 1 (Liu 2021)."

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        weights = imtl_g_weights(gramian)
        return combine(weights, jacobian), weights
