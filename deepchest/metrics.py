"""Per-task losses and metrics for multi-label classification with a label mask.

Metrics are exact and computed on a whole split (never averaged over batches): AUROC is the
rank-based area (scikit-learn), NaN where a task has only one class among its labelled
examples. Masked entries (unknown labels) count nowhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor
from torch.nn import functional as F


def masked_task_losses(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    """``L_t = sum_i m_it * BCE(z_it, y_it) / max(1, sum_i m_it)``: mean binary cross-entropy
    with logits over the labelled examples of each task, shape ``[T]``. A task with no
    labelled example in the batch gets 0 (and a zero gradient)."""
    labels = torch.where(mask, labels, 0.0)  # an unknown label may be stored as NaN
    elementwise = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    elementwise = torch.where(mask, elementwise, 0.0)
    return elementwise.sum(0) / mask.sum(0).clamp(min=1)


@dataclass(frozen=True)
class TaskMetrics:
    """One value per task, each a float64 ``Tensor[T]``; ``n_labeled`` is int64."""

    loss: Tensor
    accuracy: Tensor
    auroc: Tensor
    n_labeled: Tensor

    @property
    def mean_auroc(self) -> float:
        return _nanmean(self.auroc)

    @property
    def mean_accuracy(self) -> float:
        return _nanmean(self.accuracy)

    @property
    def mean_loss(self) -> float:
        return _nanmean(self.loss)


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def task_metrics(logits: Tensor, labels: Tensor, mask: Tensor) -> TaskMetrics:
    """Loss, accuracy at probability 0.5 and AUROC per task over a whole split."""
    logits, mask = logits.double().cpu(), mask.cpu().bool()
    labels = torch.where(mask, labels.double().cpu(), 0.0)  # unknown labels count nowhere
    num_tasks = labels.shape[1]
    n_labeled = mask.sum(0)
    elementwise = torch.where(
        mask, F.binary_cross_entropy_with_logits(logits, labels, reduction="none"), 0.0
    )
    correct = torch.where(mask, ((logits > 0).double() == labels).double(), 0.0)
    nan = torch.full((num_tasks,), math.nan, dtype=torch.float64)
    has = n_labeled > 0
    loss = torch.where(has, elementwise.sum(0) / n_labeled.clamp(min=1), nan)
    accuracy = torch.where(has, correct.sum(0) / n_labeled.clamp(min=1), nan)
    auroc = nan.clone()
    for t in range(num_tasks):
        y = labels[mask[:, t], t]
        if y.numel() and 0 < y.sum() < y.numel():
            auroc[t] = roc_auc_score(y.numpy(), logits[mask[:, t], t].numpy())
    return TaskMetrics(loss=loss, accuracy=accuracy, auroc=auroc, n_labeled=n_labeled.long())
