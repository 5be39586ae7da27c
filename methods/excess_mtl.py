"""ExcessMTL: robust multi-task learning with excess risks (He et al., ICML 2024).

*Robust Multi-Task Learning with Excess Risks*, Y. He, S. Zhou, G. Zhang, H. Yun, Y. Xu,
B. Zeng, T. Chilimbi, H. Zhao, ICML 2024, arXiv:2402.02009 (Algorithm 1, eqs. 6-9). Reference
implementation used for the tests: ``torchjd.aggregation.ExcessMTL`` / ``ExcessMTLWeighting``
(torchjd 0.18.0); the official code (github.com/uiuctml/ExcessMTL, also in LibMTL) differs in the
baseline step (``baseline_step``) and in the scale of the weights (they sum to ``T`` there).

The weights follow an exponentiated-gradient ascent on the tasks' *excess* risks (distance to
the task's own optimum), estimated by a second-order expansion with an AdaGrad diagonal
Hessian: ``E_t ~ g_t^T H_t^-1 g_t``, ``H_t = diag(sqrt(sum_{s<=k} g_t,s^2))``, each divided by
its value at the first step (scale processing, Section 3.2), so that tasks far from their
optimum get more weight and noisy tasks (whose loss cannot be driven to 0) do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import HyperparameterError, check_choice, check_number, set_field
from methods.gradient import GradientAggregator, combine

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: added under the square root of the AdaGrad sum and to the baseline, as the reference code
EPSILON = 1e-7
#: ``baseline_step`` choices (see ``ExcessMTL``)
BASELINE_STEPS: tuple[str, ...] = ("update", "skip")


def accumulate_excess_risks(
    jacobian: Tensor,
    squared_sum: Tensor,
    squares: Tensor | None = None,
    roots: Tensor | None = None,
) -> Tensor:
    """Add this step's squared gradients to ``squared_sum`` (``S`` [T, n], in place) and
    return ``E_t = sum_k J_tk^2 / sqrt(S_tk + 1e-7)`` (Tensor[T]): eq. 6 with the AdaGrad
    diagonal ``H_t = sqrt(S_t)`` of eq. 7, ``S`` including this step's ``J_t^2``. ``J`` in
    ``S``'s dtype, on its device; ``squares``, ``roots``: [T, n] buffers for the
    intermediates (``GradientAggregator.scratch``), allocated when None."""
    squares = torch.mul(jacobian, jacobian, out=squares)
    squared_sum += squares
    roots = torch.add(squared_sum, EPSILON, out=roots).sqrt_()
    return squares.div_(roots).sum(dim=1)


def exponentiated_step(weights: Tensor, exponent: Tensor) -> Tensor:
    """``w' = softmax(log w + exponent)`` (eq. 9, ``w'_t ~ w_t exp(eta x_t)``, normalised),
    taken in log space so that a huge exponent saturates the weights instead of overflowing."""
    return torch.softmax(torch.log(weights) + exponent, dim=0)


@dataclass(frozen=True)
class ExcessMTLHyperparameters:
    robust_step_size: float = 0.01
    n_warmup_steps: int = 0
    baseline_step: str = "skip"

    def __post_init__(self) -> None:
        step = check_number("robust_step_size", self.robust_step_size, gt=0)
        set_field(self, "robust_step_size", step)
        warmup = self.n_warmup_steps
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise HyperparameterError(f"n_warmup_steps must be an int >= 0, got {warmup!r}")
        set_field(
            self, "baseline_step", check_choice("baseline_step", self.baseline_step, BASELINE_STEPS)
        )


class ExcessMTL(GradientAggregator):
    """ExcessMTL: weights ``w'_t ~ w_t exp(eta E_t / E_t^0)`` on the simplex, ``E_t`` the
    AdaGrad estimate of task ``t``'s risk (``accumulate_excess_risks``) and ``E_t^0`` its baseline;
    ``direction = w^T J`` (on the scale of the mean gradient: the weights sum to 1).

    Defaults as the authors' code (yifei-he/ExcessMTL, also LibMTL's): ``robust_step_size``
    (``eta``) ``= 0.01``, ``baseline_step = "skip"``, ``n_warmup_steps = 0``. The baseline
    ``E_t^0`` is the mean ``E_t`` over the warm-up steps (during which the weights stay
    uniform), or, without warm-up, ``E_t`` of the first step; on that first step ``"skip"``
    leaves the weights as they are, ``"update"`` takes the exponentiated step with the raw
    ``E_t`` (not divided by a baseline), as torchjd 0.18 does (torchjd's ``eta`` is 1.0:
    ``robust_step_size: 1.0, baseline_step: update`` is torchjd's ``ExcessMTLWeighting()``).
    The raw ``E_t`` is about ``||g_t||_1``: with ``eta = 1`` that first step can put nearly
    all the weight on one task for good, which is why the defaults are the authors'.

    State (the memory cost): the sum of squared gradients ``S`` [T, n], as large as ``J``
    (kept on ``J``'s device, in its dtype, at least float32), plus per task the weights, the
    baseline (NaN until set), the warm-up sum and count, and the number of steps. The weights
    start at 1 (the official code's start; only their ratios matter: the update normalises and
    the warm-up returns them normalised, ``1/T`` each, as torchjd's ``1/T`` start).

    Masked tasks: an absent task's row of ``S``, weight, baseline and warm-up sum stay as they
    were; the present tasks' weights are renormalised among themselves (the softmax runs over
    them only). A task absent from every warm-up step takes its first present step's ``E_t`` as
    baseline. Level ``parameters`` only: ``S`` is per coordinate of ``J``, and at the
    representation the coordinates are the samples of a different batch every step.
    """

    name = "excess_mtl"
    summary = "Exponentiated-gradient weights on AdaGrad excess-risk estimates (He 2024)."
    reference = (
        "He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi, Zhao, ICML 2024, arXiv:2402.02009; "
        "code: torchjd 0.18 ExcessMTLWeighting"
    )
    Hyperparameters = ExcessMTLHyperparameters
    AGGREGATION_LEVELS: ClassVar[tuple[str, ...]] = ("parameters",)
    #: the official code back-propagates ``sum_t w_t L_t``: heads get ``w_t grad L_t``
    default_heads = "weighted"

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        t = num_tasks
        self.loss_weights = torch.ones(t, dtype=torch.float64)
        self.baseline = torch.full((t,), torch.nan, dtype=torch.float64)
        self.warmup_sum = torch.zeros(t, dtype=torch.float64)
        self.warmup_count = torch.zeros(t, dtype=torch.int64)
        self.squared_sum: Tensor | None = None  # [T, n], created by the first step
        self.steps = 0

    def _squared_sum(self, jacobian: Tensor) -> Tensor:
        self.squared_sum = self.coordinate_state(
            self.squared_sum, jacobian, "accumulated squared gradients"
        )
        return self.squared_sum

    def compute_present(
        self, jacobian: Tensor, losses: Tensor, gramian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        weights = torch.zeros(self.num_tasks, dtype=torch.float64)
        if not bool(present.any()):
            return torch.zeros_like(jacobian[0]), weights
        squared_sum = self._squared_sum(jacobian)
        idx = present.nonzero().flatten()
        if bool(present.all()):  # the usual step: no copy of J's rows or the state's
            sub = jacobian
            wide = sub.to(squared_sum.dtype)
            risks = accumulate_excess_risks(
                wide, squared_sum, self.scratch("squares", wide), self.scratch("roots", wide)
            )
        else:
            rows = idx.to(jacobian.device)
            sub, sub_sum = jacobian[rows], squared_sum[rows]
            risks = accumulate_excess_risks(sub.to(squared_sum.dtype), sub_sum)
            squared_sum[rows] = sub_sum
        risks = risks.to("cpu", torch.float64)
        self.steps += 1
        if self.steps <= self.hp.n_warmup_steps:
            self.warmup_sum[idx] += risks
            self.warmup_count[idx] += 1
            current = self.loss_weights[idx]
            weights[idx] = current / current.sum()
            return combine(weights[idx], sub), weights
        baseline = self.baseline[idx]
        unset = torch.isnan(baseline)
        count = self.warmup_count[idx]
        from_warmup = unset & (count > 0)
        baseline = torch.where(from_warmup, self.warmup_sum[idx] / count.clamp(min=1), baseline)
        from_step = torch.isnan(baseline)  # no warm-up value: this step's E_t is the baseline
        baseline = torch.where(from_step, risks, baseline)
        ratio = risks / (baseline + EPSILON)
        raw = risks if self.hp.baseline_step == "update" else torch.zeros_like(risks)
        exponent = torch.where(from_step, raw, ratio) * self.hp.robust_step_size
        updated = exponentiated_step(self.loss_weights[idx], exponent)
        self.baseline[idx] = baseline
        self.loss_weights[idx] = updated
        weights[idx] = updated
        return combine(updated, sub), weights

    def _state(self) -> dict[str, Any]:
        state = {
            **super()._state(),
            "loss_weights": self.loss_weights.clone(),
            "baseline": self.baseline.clone(),
            "warmup_sum": self.warmup_sum.clone(),
            "warmup_count": self.warmup_count.clone(),
            "steps": self.steps,
        }
        if self.squared_sum is not None:
            state["squared_sum"] = self.squared_sum.to("cpu", copy=True)
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        t = self.num_tasks
        for key in ("loss_weights", "baseline", "warmup_sum", "warmup_count"):
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != (t,):
                raise self._error(f"state_dict {key} must be a Tensor[{t}]")
        self.loss_weights = state["loss_weights"].to("cpu", torch.float64).clone()
        self.baseline = state["baseline"].to("cpu", torch.float64).clone()
        self.warmup_sum = state["warmup_sum"].to("cpu", torch.float64).clone()
        self.warmup_count = state["warmup_count"].to("cpu", torch.int64).clone()
        self.steps = int(state.get("steps", 0))
        squared_sum = state.get("squared_sum")
        if squared_sum is not None and (squared_sum.ndim != 2 or squared_sum.shape[0] != t):
            raise self._error(f"state_dict squared_sum must be a Tensor[{t}, n]")
        self.squared_sum = None if squared_sum is None else squared_sum.clone()
