"""Fixed (static) weighting: a weight per task, given once, the same at every step.

The baseline that Xin et al. (NeurIPS 2022, *Do Current Multi-Task Optimization Methods in
Deep Learning Even Help?*, arXiv:2209.11379) and Kurin et al. (NeurIPS 2022, *In Defense of
the Unitary Scalarization for Deep Multi-Task Learning*, arXiv:2201.04122) tune against the
specialised methods: a plain weighted sum of the losses. Reference implementation used for the
tests: ``torchjd.scalarization.Constant`` (torchjd 0.18.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from methods.base import LossWeighting, check_task_values, set_field

if TYPE_CHECKING:
    from torch import Tensor


@dataclass(frozen=True)
class FixedHyperparameters:
    # a list (one weight per task, in the task order) or a mapping task name -> weight (tasks
    # not named keep 1.0); None: every weight 1.0, equal weighting
    weights: list[float] | dict[str, float] | None = None

    def __post_init__(self) -> None:
        set_field(
            self,
            "weights",
            check_task_values("weights", self.weights, positive=False, item="weight"),
        )


class Fixed(LossWeighting):
    """Fixed weighting: ``L = sum_t w_t L_t`` with the ``weights`` given (default all 1, which
    is equal weighting). Stateless: the weights are the same at every step.

    Hyperparameters: ``weights``, a list of ``T`` non-negative numbers in task order, or a
    mapping task name -> weight (tasks it does not name keep 1.0).
    """

    name = "fixed"
    reference = "Xin et al., NeurIPS 2022, arXiv:2209.11379; code: torchjd 0.18 Constant"
    summary = "Static weights given per task: sum_t w_t L_t (Xin et al. 2022's baseline)."
    Hyperparameters = FixedHyperparameters

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self._weights = self._task_values("weights", self.hp.weights, item="weight")

    def _check_arguments(self) -> None:
        self._task_value_list("weights", self.hp.weights, item="weight")

    def compute_weights(self, losses: Tensor) -> Tensor:
        return self._weights.clone()
