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
    elementwise = F.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
    weights = mask.to(elementwise.dtype)
    return (elementwise * weights).sum(0) / weights.sum(0).clamp(min=1)


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
    logits, labels, mask = logits.double().cpu(), labels.double().cpu(), mask.cpu().bool()
    num_tasks = labels.shape[1]
    n_labeled = mask.sum(0)
    elementwise = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    correct = ((logits > 0).double() == labels).double()
    nan = torch.full((num_tasks,), math.nan, dtype=torch.float64)
    has = n_labeled > 0
    loss = torch.where(has, (elementwise * mask).sum(0) / n_labeled.clamp(min=1), nan)
    accuracy = torch.where(has, (correct * mask).sum(0) / n_labeled.clamp(min=1), nan)
    auroc = nan.clone()
    for t in range(num_tasks):
        y = labels[mask[:, t], t]
        if y.numel() and 0 < y.sum() < y.numel():
            auroc[t] = roc_auc_score(y.numpy(), logits[mask[:, t], t].numpy())
    return TaskMetrics(loss=loss, accuracy=accuracy, auroc=auroc, n_labeled=n_labeled.long())
