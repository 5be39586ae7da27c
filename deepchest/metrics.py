"""Per-task losses and metrics for multi-label classification with a label mask.

Metrics are exact and computed on a whole split (never averaged over batches): AUROC is the
rank-based area and AUPRC the average precision (scikit-learn), both NaN where a task has only
one class among its labelled examples; F1 is at probability 0.5, NaN where a task has no
positive label. Masked entries (unknown labels) count nowhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from sklearn.metrics import average_precision_score, roc_auc_score
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
    """One value per task, each a float64 ``Tensor[T]`` (``n_labeled``, ``n_positive`` int64),
    and two whole-sample figures: ``exact_match``, the fraction of examples whose every labelled
    finding is predicted right, and ``trivial_exact_match``, the same for the predictor that
    always says negative (the fraction of examples without a positive label)."""

    loss: Tensor
    accuracy: Tensor
    auroc: Tensor
    auprc: Tensor
    f1: Tensor
    n_labeled: Tensor
    n_positive: Tensor
    exact_match: float
    trivial_exact_match: float

    @property
    def mean_auroc(self) -> float:
        return _nanmean(self.auroc)

    @property
    def mean_accuracy(self) -> float:
        return _nanmean(self.accuracy)

    @property
    def mean_loss(self) -> float:
        return _nanmean(self.loss)

    @property
    def mean_auprc(self) -> float:
        return _nanmean(self.auprc)

    @property
    def macro_f1(self) -> float:
        return _nanmean(self.f1)


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def task_metrics(logits: Tensor, labels: Tensor, mask: Tensor) -> TaskMetrics:
    """Loss, accuracy and F1 at probability 0.5, AUROC and AUPRC per task over a whole split.

    With p_it = [z_it > 0] and only labelled entries counted::

        F1_t        = 2 TP_t / (2 TP_t + FP_t + FN_t)        (NaN when task t has no positive)
        exact_match = #{i : p_it = y_it for every labelled t} / #{i : some t labelled}
    """
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
    predicted = logits > 0
    positive = mask & (labels > 0.5)
    n_positive = positive.sum(0)
    true_pos = (predicted & positive).sum(0).double()
    false_pos = (predicted & mask & ~positive).sum(0).double()
    false_neg = n_positive.double() - true_pos
    f1 = torch.where(
        n_positive > 0, 2 * true_pos / (2 * true_pos + false_pos + false_neg).clamp(min=1), nan
    )
    auroc, auprc = nan.clone(), nan.clone()
    for t in range(num_tasks):
        y = labels[mask[:, t], t]
        if y.numel() and 0 < y.sum() < y.numel():
            scores = logits[mask[:, t], t].numpy()
            auroc[t] = roc_auc_score(y.numpy(), scores)
            auprc[t] = average_precision_score(y.numpy(), scores)
    any_labeled = mask.any(1)
    all_right = ((predicted == (labels > 0.5)) | ~mask).all(1)
    all_negative = ~positive.any(1)
    examples = int(any_labeled.sum())
    return TaskMetrics(
        loss=loss,
        accuracy=accuracy,
        auroc=auroc,
        auprc=auprc,
        f1=f1,
        n_labeled=n_labeled.long(),
        n_positive=n_positive.long(),
        exact_match=float((all_right & any_labeled).sum()) / examples if examples else math.nan,
        trivial_exact_match=(
            float((all_negative & any_labeled).sum()) / examples if examples else math.nan
        ),
    )
