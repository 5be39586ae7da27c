"""Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).

*End-to-End Multi-Task Learning with Attention*, S. Liu, E. Johns, A. J. Davison, CVPR 2019,
arXiv:1803.10704. Reference code: https://github.com/lorenmt/mtan (``lambda_weight`` in the
training scripts); reference implementation used for the tests: ``torchjd.scalarization.DWA``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lazy_loader

from methods.base import EpochStats, LossWeighting, check_number, set_field

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def dwa_weights(older: Tensor, newer: Tensor, temperature: float) -> Tensor:
    """``w_t = k * softmax_t(r_t / temperature)`` with ``r_t = newer_t / older_t``, the softmax
    over the ``k`` tasks whose ratio is finite; weight 1 for the others.

    ``older``/``newer`` are the epoch-averaged losses of epochs e-2 and e-1. A ratio that is not
    finite (a NaN loss: a task without labels all epoch; or x / 0) leaves its task out: weight 1,
    as in the first two epochs, and the other tasks' weights are those of DWA without it.
    Returns float64; the weights sum to ``T``.
    """
    older = older.detach().to(dtype=torch.float64, device="cpu")
    newer = newer.detach().to(dtype=torch.float64, device="cpu")
    ratio = newer / older
    finite = torch.isfinite(ratio)
    logits = torch.where(finite, ratio / temperature, -torch.inf)
    weights = finite.sum().to(ratio.dtype) * torch.softmax(logits, dim=0)
    return torch.where(finite, weights, torch.ones_like(ratio))


@dataclass(frozen=True)
class DWAHyperparameters:
    temperature: float = 2.0

    def __post_init__(self) -> None:
        set_field(self, "temperature", check_number("temperature", self.temperature, gt=0))


class DWA(LossWeighting):
    """Dynamic Weight Average: ``w_t = T softmax_t(r_t / temperature)``, ``r_t = Lbar_t(e-1) /
    Lbar_t(e-2)`` from the epoch-averaged train losses (``EpochStats.train_loss``); ``w_t = 1``
    in the first two epochs. Weights sum to ``T``; constant within an epoch.

    Masked tasks: a task without labels in an epoch has a NaN ``train_loss`` there (the loop
    averages each task's loss over the steps in which it had labels). It keeps weight 1 and is
    left out of the softmax until it has a finite ratio again, and its history keeps the last
    epoch in which it had labels (``older`` only moves on from a finite epoch), so its ratio,
    once it is back, is over its own last two labelled epochs.
    """

    name = "dwa"
    reference = "Liu, Johns & Davison, CVPR 2019, arXiv:1803.10704; code: lorenmt/mtan"
    summary = "Per-epoch softmax of the loss ratios of the last two epochs, times T (Liu 2019)."
    Hyperparameters = DWAHyperparameters
    first_reweighted_epoch = 3  # weights from the loss ratio of epochs 1 and 2

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.history: list[Tensor] = []  # epoch-averaged train losses, at most the last two
        self._w = torch.ones(num_tasks, dtype=torch.float64)

    def compute_weights(self, losses: Tensor) -> Tensor:
        return self._w

    def on_epoch_end(self, stats: EpochStats) -> None:
        loss = stats.train_loss
        if loss.shape != (self.num_tasks,):
            raise self._error(
                f"EpochStats.train_loss has shape {tuple(loss.shape)}, expected ({self.num_tasks},)"
            )
        loss = loss.detach().to(dtype=torch.float64, device="cpu")
        if self.history:
            newer = self.history[-1]
            older = self.history[0] if len(self.history) == 2 else torch.full_like(newer, math.nan)
            # an epoch without labels (NaN) does not push the task's last labelled epoch out
            self.history = [torch.where(torch.isnan(newer), older, newer), loss]
        else:
            self.history = [loss]
        self._update()

    def _update(self) -> None:
        if len(self.history) < 2:
            self._w = torch.ones(self.num_tasks, dtype=torch.float64)
        else:
            self._w = dwa_weights(self.history[0], self.history[1], self.hp.temperature)

    def _state(self) -> dict[str, Any]:
        return {"history": [h.clone() for h in self.history]}

    def _load_state(self, state: dict[str, Any]) -> None:
        history = state.get("history")
        if (
            not isinstance(history, list)
            or len(history) > 2
            or not all(
                isinstance(h, torch.Tensor) and h.shape == (self.num_tasks,) for h in history
            )
        ):
            raise self._error(
                f"state_dict history must be a list of at most 2 Tensor[{self.num_tasks}]"
            )
        self.history = [h.detach().to(dtype=torch.float64, device="cpu").clone() for h in history]
        self._update()
