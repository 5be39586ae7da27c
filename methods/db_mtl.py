"""DB-MTL: dual balancing of loss scales and gradient magnitudes (Lin et al., 2023).

*Dual-Balancing for Multi-Task Learning*, B. Lin, W. Jiang, F. Ye, Y. Zhang, P. Chen, Y.-C. Chen,
S. Liu, J. T. Kwok, 2023, arXiv:2308.12029. Reference code: the authors' LibMTL,
``LibMTL/weighting/DB_MTL.py`` (github.com/median-research-group/LibMTL), whose hyperparameter
names ``DB_beta``, ``DB_beta_sigma`` (defaults 0.9, 0) are kept without the prefix. Not in
torchjd: tested against hand-derived values and a transcription of LibMTL's update.

1. Loss-scale balancing: every task minimises ``log L_t`` instead of ``L_t``, whose gradient is
   ``g_t / L_t`` (``L_t + 1e-8`` in the code).
2. Gradient-magnitude balancing: an EMA ``m_t`` of those gradients is kept per task, and every
   ``m_t`` is scaled to the largest norm: ``d = sum_t (max_s ||m_s|| / ||m_t||) m_t``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import check_number, set_field
from methods.gradient import GradientAggregator

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: added to the losses (``log(L + 1e-8)``) and to the norms, as in the reference code
EPSILON = 1e-8


def ema_rate(beta: float, beta_sigma: float, step: int) -> float:
    """``beta_k = beta / k^beta_sigma`` for the ``k``-th step (1-based): the weight of the old
    average in the EMA (``beta_sigma = 0``: a constant ``beta``)."""
    return beta / step**beta_sigma


def log_loss_gradients(jacobian: Tensor, losses: Tensor, out: Tensor | None = None) -> Tensor:
    """``grad log(L_t + 1e-8) = g_t / (L_t + 1e-8)`` (Tensor[T, n]): the loss-scale balancing.
    ``losses`` [T] on ``J``'s device; the losses are cross-entropies, ``>= 0``. ``out``: a
    [T, n] buffer for the result (``GradientAggregator.scratch``)."""
    return torch.div(jacobian, (losses + EPSILON)[:, None], out=out)


def magnitude_scales(averages: Tensor) -> Tensor:
    """``alpha_t = max_s ||m_s|| / (||m_t|| + 1e-8)`` (Tensor[T]) for the averaged gradients
    ``m`` [T, n]: every ``alpha_t m_t`` has (nearly) the largest norm; a zero ``m_t`` gets 0 when
    every ``m`` is zero, else ``1e8 max ||m||`` times a zero vector."""
    norms = averages.norm(dim=1)
    return norms.max() / (norms + EPSILON)


@dataclass(frozen=True)
class DBMTLHyperparameters:
    beta: float = 0.9
    beta_sigma: float = 0.0

    def __post_init__(self) -> None:
        set_field(self, "beta", check_number("beta", self.beta, ge=0, le=1))
        set_field(self, "beta_sigma", check_number("beta_sigma", self.beta_sigma, ge=0))


class DBMTL(GradientAggregator):
    """DB-MTL: ``m_t <- g_t / L_t + beta_k (m_t - g_t / L_t)`` (``beta_k = beta / k^beta_sigma``,
    ``m_t`` starting at 0, no bias correction, as the reference code), then
    ``d = sum_t alpha_t m_t`` with ``alpha_t = max_s ||m_s|| / ||m_t||``.

    Defaults as LibMTL: ``beta = 0.9``, ``beta_sigma = 0`` (a constant EMA rate; ``beta = 0`` is
    no averaging). The direction is NOT ``weights @ J`` (it is a combination of the EMAs,
    ``direction_is_weighted_jacobian = False``); the reported weights are
    ``w_t = alpha_t / (L_t + 1e-8)``, the weights of this step's gradients without the EMA
    (``d = w^T J`` exactly when ``beta = 0``). Heads: their own ``grad L_t`` by default
    (LibMTL's get ``grad log L_t``), ``alpha_t grad log L_t`` with ``heads: weighted``. So
    ``ema`` and ``update_every`` (which replace the update by ``w^T J``) are refused by the
    base class. Level ``parameters`` only: the coordinates of ``m`` at the representation would
    be the samples of a different batch every step (LibMTL refuses ``rep_grad`` too).

    State (the memory cost): the averaged gradients ``m`` [T, n], as large as ``J`` (on ``J``'s
    device, in its dtype, at least float32), and the step count ``k``. Masked tasks: an absent
    task's ``m_t`` stays as it was and is left out of ``d`` and of the max; ``k`` counts the
    steps with any task present.
    """

    name = "db_mtl"
    summary = "Log-loss gradients, EMA-averaged and scaled to the largest norm (Lin 2023)."
    reference = (
        "Lin, Jiang, Ye, Zhang, Chen, Chen, Liu, Kwok, 2023, arXiv:2308.12029; "
        "code: LibMTL weighting/DB_MTL.py"
    )
    Hyperparameters = DBMTLHyperparameters
    AGGREGATION_LEVELS: ClassVar[tuple[str, ...]] = ("parameters",)
    direction_is_weighted_jacobian: ClassVar[bool] = False

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.averages: Tensor | None = None  # m [T, n], created by the first step
        self.steps = 0

    def _averages(self, jacobian: Tensor) -> Tensor:
        self.averages = self.coordinate_state(self.averages, jacobian, "averaged gradients")
        return self.averages

    def compute_present(
        self, jacobian: Tensor, losses: Tensor, gramian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        weights = torch.zeros(self.num_tasks, dtype=torch.float64)
        if not bool(present.any()):
            return torch.zeros_like(jacobian[0]), weights
        averages = self._averages(jacobian)
        idx = present.nonzero().flatten()
        rows = idx.to(jacobian.device)
        sub_losses = losses[idx.to(losses.device)].to(jacobian.device, averages.dtype)
        self.steps += 1
        rate = ema_rate(self.hp.beta, self.hp.beta_sigma, self.steps)
        # m' = s + beta_k (m - s), s the log-loss gradients
        if bool(present.all()):  # the usual step: in place, through kept buffers
            wide = jacobian.to(averages.dtype)
            scaled = log_loss_gradients(wide, sub_losses, out=self.scratch("scaled", wide))
            gap = torch.sub(averages, scaled, out=self.scratch("gap", wide)).mul_(rate)
            updated = torch.add(scaled, gap, out=averages)
        else:
            scaled = log_loss_gradients(jacobian[rows].to(averages.dtype), sub_losses)
            updated = scaled + rate * (averages[rows] - scaled)
            averages[rows] = updated
        alpha = magnitude_scales(updated)
        weights[idx] = (alpha / (sub_losses + EPSILON)).to("cpu", torch.float64)
        return alpha @ updated, weights

    def _state(self) -> dict[str, Any]:
        state = {**super()._state(), "steps": self.steps}
        if self.averages is not None:
            state["averages"] = self.averages.to("cpu", copy=True)
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        averages = state.get("averages")
        if averages is not None and (averages.ndim != 2 or averages.shape[0] != self.num_tasks):
            raise self._error(f"state_dict averages must be a Tensor[{self.num_tasks}, n]")
        self.averages = None if averages is None else averages.clone()
        self.steps = int(state.get("steps", 0))
