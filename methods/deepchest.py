"""DeepChest: dynamic gradient-free task weighting (Mohamed et al., 2025, arXiv:2505.23595).

Reference code: https://github.com/youssefkhalil320/DeepChest-MTL
(``multitask_learning/MTL_training/weighting/dwbstl.py``, class ``DynamicLossWeight``, called once
per epoch with the epoch's per-task train accuracies).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lazy_loader

from methods.base import (
    EpochStats,
    HyperparameterError,
    LossWeighting,
    check_choice,
    check_number,
    set_field,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

SIGNALS: tuple[str, ...] = ("train_accuracy", "val_accuracy", "val_loss")


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def threshold(signal: Tensor) -> float:
    """``tau = mean_t s_t`` over the tasks whose signal is not NaN (NaN when there are none).

    The sum is exact (``math.fsum``), so tau does not depend on the order of the tasks.
    """
    values = [v for v in signal.tolist() if not math.isnan(v)]
    return math.fsum(values) / len(values) if values else math.nan


def deepchest_update(
    w: Tensor,
    signal: Tensor,
    *,
    increase: float,
    decrease: float,
    max_weight: float,
    min_weight: float | None = None,
    higher_is_better: bool = True,
) -> Tensor:
    """One DeepChest epoch update of the task weights ``w`` (Tensor[T]) from ``signal`` (Tensor[T]).

    With ``tau`` = ``threshold(signal)``, a task is *lagging* when ``s_t < tau`` (strictly; ``s_t >
    tau`` when ``higher_is_better`` is False, e.g. for a loss), and::

        w_t <- min(w_t * increase, max_weight)         if task t is lagging
        w_t <- w_t / decrease                          otherwise (ties with tau included)
        w_t <- max(w_t, min_weight)                    (only the decreased ones; if min_weight)

    A task whose signal is NaN keeps its weight (and is left out of tau). No normalisation.
    Returns a new float64 tensor.
    """
    w = w.detach().to(dtype=torch.float64, device="cpu")
    s = signal.detach().to(dtype=torch.float64, device="cpu")
    tau = threshold(s)
    if math.isnan(tau):
        return w.clone()
    lagging = s < tau if higher_is_better else s > tau  # NaN compares False
    up = torch.clamp(w * increase, max=max_weight)
    down = w / decrease
    if min_weight is not None:
        down = torch.clamp(down, min=min_weight)
    updated = torch.where(lagging, up, down)
    return torch.where(torch.isnan(s), w, updated)


def weight_from_accuracy(accuracy: float) -> float:
    """Initial weight of a task from its single-task accuracy: ``w = 1 + (1 - acc) / 2``."""
    return 1.0 + (1.0 - accuracy) / 2.0


def load_initial_weights(
    path: str, num_tasks: int, task_names: Sequence[str] | None = None
) -> list[float]:
    """Initial weights from a JSON of single-task accuracies, as ``1 + (1 - acc) / 2``.

    The JSON is a list of ``num_tasks`` numbers (in task order) or an object ``{task_name: acc}``
    with exactly the names of ``task_names``. Raises ``ValueError`` naming the file and the problem.
    """

    def fail(problem: str) -> ValueError:
        return ValueError(f"initial_weights file {path!r}: {problem}")

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise fail(f"cannot read it ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise fail(f"not valid JSON ({exc})") from None

    if isinstance(data, list):
        if len(data) != num_tasks:
            raise fail(f"has {len(data)} accuracies, expected {num_tasks} (one per task)")
        labels = [f"entry {i}" for i in range(num_tasks)]
        accuracies = data
    elif isinstance(data, dict):
        if task_names is None:
            raise fail("is an object {task_name: accuracy} but no task_names were given")
        unknown = sorted(set(data) - set(task_names))
        if unknown:
            raise fail(f"unknown task name(s) {unknown}; tasks are {list(task_names)}")
        missing = [n for n in task_names if n not in data]
        if missing:
            raise fail(f"missing task name(s) {missing}")
        labels = [f"task {n!r}" for n in task_names]
        accuracies = [data[n] for n in task_names]
    else:
        raise fail(
            f"must hold a list of {num_tasks} accuracies or an object {{task_name: accuracy}}, "
            f"got a JSON {type(data).__name__}"
        )

    weights = []
    for label, acc in zip(labels, accuracies, strict=True):
        if isinstance(acc, bool) or not isinstance(acc, int | float) or not 0.0 <= acc <= 1.0:
            raise fail(f"{label}: accuracy must be a number in [0, 1], got {acc!r}")
        weights.append(weight_from_accuracy(float(acc)))
    return weights


# --------------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeepChestHyperparameters:
    signal: str = "train_accuracy"
    increase: float = 1.1
    decrease: float = 1.05
    max_weight: float = 1.5
    min_weight: float | None = None
    initial_weights: str | None = None

    def __post_init__(self) -> None:
        check_choice("signal", self.signal, SIGNALS)
        set_field(self, "increase", check_number("increase", self.increase, gt=1))
        set_field(self, "decrease", check_number("decrease", self.decrease, gt=1))
        set_field(self, "max_weight", check_number("max_weight", self.max_weight, gt=0))
        if self.min_weight is not None:
            value = self.min_weight
            try:
                value = check_number("min_weight", value, gt=0, le=self.max_weight)
            except HyperparameterError:
                raise HyperparameterError(
                    f"min_weight must be None or a number in (0, max_weight={self.max_weight:g}], "
                    f"got {value!r}"
                ) from None
            set_field(self, "min_weight", value)
        if self.initial_weights is not None:
            if not isinstance(self.initial_weights, str | os.PathLike):
                raise HyperparameterError(
                    "initial_weights must be None or the path of a JSON file, "
                    f"got {self.initial_weights!r}"
                )
            set_field(self, "initial_weights", os.fspath(self.initial_weights))


class DeepChest(LossWeighting):
    """DeepChest (Mohamed et al., 2025, arXiv:2505.23595): performance-driven task weights.

    One weight per task, updated once per epoch (``on_epoch_end``) from a per-task signal ``s``
    (by default the epoch's train accuracy, as the reference code does). With ``tau = mean_t s_t``::

        w_t <- min(w_t * increase, max_weight)   if s_t < tau   (s_t > tau for signal=val_loss)
        w_t <- w_t / decrease                    otherwise, then max(w_t, min_weight) if set

    The step objective is ``sum_t w_t L_t`` (no normalisation). Initial weights are 1, or
    ``1 + (1 - acc_t) / 2`` from a JSON of single-task accuracies (``initial_weights``).

    Hyperparameters (defaults): ``signal`` = ``"train_accuracy"`` (or ``"val_accuracy"``,
    ``"val_loss"``), ``increase`` = 1.1, ``decrease`` = 1.05, ``max_weight`` = 1.5,
    ``min_weight`` = None, ``initial_weights`` = None.

    Deviations from the reference code (``DynamicLossWeight``):

    * ``decrease`` (hard-coded 1.05 there), ``min_weight`` (no floor there) and the ``signal``
      choice are additions; the defaults reproduce the reference.
    * A task whose signal is NaN (no labels in that split) keeps its weight and is left out of tau;
      the reference counts such a task as accuracy 0, which up-weights it.
    * The reference reads pre-computed weights from its config; here the JSON holds single-task
      accuracies and the formula ``1 + (1 - acc) / 2`` is applied.
    * tau is computed with an exact sum, so it does not depend on the task order.

    Masked tasks: a task without labels in the epoch has a NaN signal (``EpochStats``): it keeps
    its weight and is left out of tau, so the other tasks are updated exactly as by DeepChest
    without it. Its per-step weight is constant within the epoch, so a batch without its labels
    changes nothing (its loss is 0).
    """

    name = "deepchest"
    reference = "Mohamed et al., 2025, arXiv:2505.23595; code: the authors' training script"
    summary = "Per-epoch weights: up-weight tasks below the mean train accuracy, decay the rest."
    Hyperparameters = DeepChestHyperparameters
    first_reweighted_epoch = 2  # the first update is at the end of epoch 1

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self._w = torch.tensor(self._initial_weights(), dtype=torch.float64)
        self.epochs_seen = 0

    def _initial_weights(self) -> list[float]:
        if self.hp.initial_weights is None:
            return [1.0] * self.num_tasks
        try:
            return load_initial_weights(self.hp.initial_weights, self.num_tasks, self.task_names)
        except ValueError as exc:
            raise self._error(str(exc)) from None

    def _check_arguments(self) -> None:
        self._initial_weights()

    @property
    def current_weights(self) -> Tensor:
        """The current task weights (float32 copy, CPU)."""
        return self._w.to(torch.float32)

    def compute_weights(self, losses: Tensor) -> Tensor:
        return self._w

    def on_epoch_end(self, stats: EpochStats) -> None:
        signal = getattr(stats, self.hp.signal)
        if signal is None:
            raise self._error(
                f"signal {self.hp.signal!r} needs validation statistics, but "
                f"EpochStats.{self.hp.signal} is None (no validation split?); "
                "use signal='train_accuracy'"
            )
        if signal.shape != (self.num_tasks,):
            raise self._error(
                f"EpochStats.{self.hp.signal} has shape {tuple(signal.shape)}, "
                f"expected ({self.num_tasks},)"
            )
        self._w = deepchest_update(
            self._w,
            signal,
            increase=self.hp.increase,
            decrease=self.hp.decrease,
            max_weight=self.hp.max_weight,
            min_weight=self.hp.min_weight,
            higher_is_better=self.hp.signal != "val_loss",
        )
        self.epochs_seen += 1

    def _state(self) -> dict[str, Any]:
        return {"weights": self._w.clone(), "epochs_seen": self.epochs_seen}

    def _load_state(self, state: dict[str, Any]) -> None:
        w = state.get("weights")
        if not isinstance(w, torch.Tensor) or w.shape != (self.num_tasks,):
            shape = tuple(w.shape) if isinstance(w, torch.Tensor) else repr(w)
            raise self._error(f"state_dict weights must be a Tensor[{self.num_tasks}], got {shape}")
        self._w = w.detach().to(dtype=torch.float64, device="cpu").clone()
        self.epochs_seen = int(state.get("epochs_seen", 0))
