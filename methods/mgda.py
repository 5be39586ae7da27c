"""MGDA: multiple-gradient descent, min-norm aggregation (Sener & Koltun, NeurIPS 2018).

*Multi-Task Learning as Multi-Objective Optimization*, O. Sener, V. Koltun, NeurIPS 2018,
arXiv:1810.04650 (MGDA of Desideri 2012; gradient normalisations from the authors' code,
``gradient_normalizers`` in ``min_norm_solvers.py``). Reference implementation used for the
tests: ``torchjd.aggregation.MGDA`` (torchjd 0.18.0; Frank-Wolfe, no normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

from methods.base import check_choice, check_number, set_field
from methods.gradient import (
    GradientAggregator,
    check_positive_int,
    combine,
    nonnegative_qp,
    trace_normalized,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

NORMALIZATIONS: tuple[str, ...] = ("none", "l2", "loss", "loss+")


def gradient_scales(g: Tensor, losses: Tensor, normalization: str) -> Tensor:
    """The scales ``s_t`` dividing each task gradient before the weights are searched for.

    ``none``: 1; ``l2``: ``||g_t||``; ``loss``: ``L_t``; ``loss+``: ``L_t ||g_t||``. A scale that
    is not a positive finite number (a zero gradient, a zero loss) is replaced by 1 (the row is
    then zero anyway, or left as is).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}")
    norms = g.diagonal().clamp(min=0.0).sqrt()
    losses = losses.to(dtype=g.dtype, device=g.device)
    scales = {
        "none": torch.ones_like(norms),
        "l2": norms,
        "loss": losses,
        "loss+": losses * norms,
    }[normalization]
    ok = torch.isfinite(scales) & (scales > torch.finfo(g.dtype).tiny)
    return torch.where(ok, scales, torch.ones_like(scales))


def min_norm_weights(g: Tensor, *, reg_eps: float = 1e-10, max_iters: int = 1000) -> Tensor:
    """``w = argmin_{w >= 0, sum w = 1} w^T G w``: the min-norm point ``w^T J`` of the convex hull
    of the rows of ``J`` (``G = J J^T``).

    ``G`` is divided by its trace first (same minimisers). ``T = 2``: the exact closed form
    ``w_1 = clip((G_22 - G_12) / (G_11 + G_22 - 2 G_12), 0, 1)``, ``w_2 = 1 - w_1`` (``1/2`` when
    the two rows are equal). ``T > 2``: with ``Q = G + reg_eps I``, the nonnegative QP
    ``x = argmin_{x >= 0} 1/2 x^T Q x - 1^T x`` is solved exactly by an active-set method and
    ``w = x / sum x``: its KKT conditions (``Q x - 1 >= 0``, ``= 0`` where ``x > 0``) are those of
    the min-norm problem for ``Q`` with multiplier ``1 / sum x``. The ridge makes ``Q`` positive
    definite and moves the optimal value ``||w^T J||^2`` by at most ``reg_eps tr(G)``.
    """
    num_tasks = g.shape[0]
    g = trace_normalized(g)
    if num_tasks == 1:
        return torch.ones(1, dtype=g.dtype)
    if num_tasks == 2:
        denominator = g[0, 0] + g[1, 1] - 2 * g[0, 1]
        if not float(denominator) > 0.0:
            w1 = torch.tensor(0.5, dtype=g.dtype)
        else:
            w1 = ((g[1, 1] - g[0, 1]) / denominator).clamp(0.0, 1.0)
        return torch.stack([w1, 1.0 - w1])
    q = g + reg_eps * torch.eye(num_tasks, dtype=g.dtype)
    x = nonnegative_qp(q, -torch.ones(num_tasks, dtype=g.dtype), max_iters=max_iters, tol=1e-13)
    total = x.sum()
    if not float(total) > 0.0:  # cannot happen for a positive-definite Q; kept as a guard
        return torch.full((num_tasks,), 1.0 / num_tasks, dtype=g.dtype)
    return x / total


def mgda_weights(
    g: Tensor,
    losses: Tensor,
    *,
    normalization: str = "none",
    reg_eps: float = 1e-10,
    max_iters: int = 1000,
) -> Tensor:
    """The MGDA weights ``w`` (on the simplex) of the gradients scaled by ``1 / s_t``.

    ``w = min_norm_weights(D G D)`` with ``D = diag(1 / s)`` (``gradient_scales``). The update is
    ``w^T J`` with the UNscaled gradients, as in Sener & Koltun's code.
    """
    d = 1.0 / gradient_scales(g, losses, normalization)
    return min_norm_weights(d[:, None] * g * d[None, :], reg_eps=reg_eps, max_iters=max_iters)


@dataclass(frozen=True)
class MGDAHyperparameters:
    normalization: str = "none"
    reg_eps: float = 1e-10
    max_iters: int = 1000

    def __post_init__(self) -> None:
        set_field(
            self, "normalization", check_choice("normalization", self.normalization, NORMALIZATIONS)
        )
        set_field(self, "reg_eps", check_number("reg_eps", self.reg_eps, gt=0, le=1))
        set_field(self, "max_iters", check_positive_int("max_iters", self.max_iters))


class MGDA(GradientAggregator):
    """MGDA: the min-norm point of the convex hull of the task gradients, ``d = w^T J`` with
    ``w = argmin_{simplex} ||w^T J~||^2`` where ``J~`` has rows ``g_t / s_t`` (``normalization``:
    ``none`` | ``l2`` | ``loss`` | ``loss+``; the update uses the unscaled ``J``).

    ``reg_eps``: ridge on the trace-normalised Gramian (solver tolerance: the optimal value is
    exact up to ``reg_eps tr(G)``); ``max_iters``: cap on the active-set solves. Reported weights:
    ``w`` (they sum to 1). A zero task gradient (e.g. a task fully masked in the batch) makes the
    min-norm point, hence the update, zero.
    """

    name = "mgda"
    reference = "Sener & Koltun, NeurIPS 2018, arXiv:1810.04650; code: torchjd 0.18 MGDA"
    # the authors' training script back-propagates sum_t w_t L_t: heads get w_t grad L_t
    default_heads = "weighted"
    summary = "Min-norm point of the convex hull of the task gradients (Sener & Koltun 2018)."
    Hyperparameters = MGDAHyperparameters

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = mgda_weights(
            gramian,
            losses.to(device="cpu"),
            normalization=hp.normalization,
            reg_eps=hp.reg_eps,
            max_iters=hp.max_iters,
        )
        return combine(weights, jacobian), weights
