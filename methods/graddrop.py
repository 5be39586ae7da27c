"""GradDrop: gradient sign dropout (Chen et al., NeurIPS 2020).

*Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout*, Z. Chen,
J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai, D. Anguelov, NeurIPS 2020,
arXiv:2010.06808 (Algorithm 1, lines 10-15). Reference implementation used for the tests:
``torchjd.aggregation.GradDrop`` (torchjd 0.18.0, ``f`` the identity, no leak by default).

For every coordinate ``k`` of the update (a shared parameter), the sign purity
``P_k = 1/2 (1 + sum_t J_tk / sum_t |J_tk|)`` is the probability of keeping the positive
entries of column ``k``; with ``U_k ~ Uniform[0, 1)``, the kept entries are the positive ones if
``P_k > U_k`` and the negative ones if ``P_k < U_k``::

    M_tk = [P_k > U_k] [J_tk > 0] + [P_k < U_k] [J_tk < 0]
    d_k  = sum_t (l + (1 - l) M_tk) J_tk            (l: the leak)

so that (without leak) every coordinate of ``d`` is the sum of entries of one sign only. The
masks are per coordinate, so ``d`` is not ``w^T J`` for any ``w``: it needs ``J``'s entries, not
only the Gramian.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

from methods.base import check_number, set_field
from methods.gradient import GradientAggregator

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def sign_purity(jacobian: Tensor, buffer: Tensor | None = None) -> Tensor:
    """``P = 1/2 (1 + sum_t J_t / sum_t |J_t|)`` (Tensor[n], ``J``'s dtype): 1 where every entry
    of the column is ``>= 0``, 0 where every one is ``<= 0``; NaN for an all-zero column (which
    then keeps nothing, and has nothing to keep). ``buffer``: [T, n] scratch for ``|J|``."""
    magnitudes = torch.abs(jacobian, out=buffer).sum(dim=0)
    return 0.5 * (torch.ones_like(jacobian[0]) + jacobian.sum(dim=0) / magnitudes)


def graddrop_masks(jacobian: Tensor, purity: Tensor, uniform: Tensor) -> Tensor:
    """``M`` (Tensor[T, n] of bool): ``M_tk = [P_k > U_k] [J_tk > 0] or [P_k < U_k] [J_tk < 0]``."""
    positive = (purity > uniform) & (jacobian > 0)
    negative = (purity < uniform) & (jacobian < 0)
    return positive | negative


def graddrop(
    jacobian: Tensor, *, leak: float = 0.0, buffer: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(d, w)``: the GradDrop update (Tensor[n], ``J``'s dtype and device) and the fraction of
    each task's gradient it kept (Tensor[T], float64, CPU).

    One draw ``U = torch.rand(n)`` from torch's global generator of ``J``'s device, in ``J``'s
    dtype, as torchjd's: under the same seed the masks are torchjd's and ``d`` equals its output
    bit for bit (the rows are accumulated in the same order). ``w_t = (m_t * g_t) . g_t /
    ||g_t||^2`` with ``m_t = l + (1 - l) M_t`` (the coefficient of the projection of what was kept
    of ``g_t`` on ``g_t``: 1 when nothing of it was dropped, ``l`` when everything was; 1 for a
    zero gradient, of which nothing was dropped). ``buffer``: a [T, n] tensor of ``J``'s dtype
    and device for the intermediates (``GradientAggregator.scratch``), allocated when None;
    the arithmetic is the same either way.
    """
    if buffer is None:
        buffer = torch.empty_like(jacobian)
    purity = sign_purity(jacobian, buffer)
    uniform = torch.rand(purity.shape, dtype=jacobian.dtype, device=jacobian.device)
    masks = graddrop_masks(jacobian, purity, uniform)
    factors = buffer.copy_(masks).mul_(1.0 - leak).add_(leak)  # l + (1 - l) M, in J's dtype
    direction = torch.zeros_like(jacobian[0])
    for t in range(jacobian.shape[0]):  # row by row, as torchjd: the same rounding
        direction += factors[t] * jacobian[t]
    kept = factors.mul_(jacobian).mul_(jacobian).sum(dim=1)  # (m_t * g_t) . g_t
    kept = kept.to(device="cpu", dtype=torch.float64)
    norms2 = torch.mul(jacobian, jacobian, out=buffer).sum(dim=1)
    norms2 = norms2.to(device="cpu", dtype=torch.float64)
    fractions = torch.where(
        norms2 > 0, kept / norms2.clamp(min=torch.finfo(norms2.dtype).tiny), 1.0
    )
    return direction, fractions


@dataclass(frozen=True)
class GradDropHyperparameters:
    leak: float = 0.0

    def __post_init__(self) -> None:
        set_field(self, "leak", check_number("leak", self.leak, ge=0, le=1))


class GradDrop(GradientAggregator):
    """GradDrop: for every shared parameter, keep only the positive or only the negative task
    gradients, the positive ones with probability ``P`` = their share of the column's absolute
    sum (sign purity); ``d_k = sum_t (leak + (1 - leak) M_tk) J_tk``.

    ``leak`` (default 0, torchjd's): the share of each gradient that always passes, one value
    for every task (torchjd takes one per task; the paper's ``f`` is the identity here, as
    torchjd's default). Random: one ``torch.rand(n)`` per step from the global generator.

    Reported weights: the fraction of each task's gradient kept,
    ``w_t = (m_t * g_t) . g_t / ||g_t||^2`` in ``[leak, 1]`` (1 for a zero gradient); they are
    NOT the update's coefficients: ``d`` is not ``w^T J`` (per-coordinate masks). With
    ``heads: weighted`` each head gets ``w_t`` times its gradient. Consequences:

    * ``level: representation`` applies GradDrop to the representation's Jacobian (every
      sample's coordinates; the paper's GradDrop layer sits on the activations, with the sign
      purity summed over the batch, so this is close to, not the same as, the paper's layer);
      ``level: parameters`` (default) is torchjd's GradDrop.
    * ``ema`` and ``update_every`` would replace ``d`` by a combination of the weights, so
      they are refused (``direction_is_weighted_jacobian = False``).
    """

    name = "graddrop"
    summary = "Keep one sign per parameter, positive with prob. = sign purity (Chen 2020)."
    reference = (
        "Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai, D. Anguelov, NeurIPS "
        "2020, arXiv:2010.06808; code: torchjd 0.18 GradDrop"
    )
    Hyperparameters = GradDropHyperparameters
    direction_is_weighted_jacobian = False

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        # a kept buffer for the usual step (every task present); a fresh one for fewer rows
        full = jacobian.shape[0] == self.num_tasks
        buffer = self.scratch("graddrop", jacobian) if full else None
        return graddrop(jacobian, leak=self.hp.leak, buffer=buffer)
