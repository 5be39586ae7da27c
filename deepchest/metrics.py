"""Per-task losses and metrics for multi-label classification with a label mask.

Metrics are exact and computed on a whole split (never averaged over batches): AUROC is the
rank-based area and AUPRC the average precision (scikit-learn), both NaN where a task has only
one class among its labelled examples; F1 is at probability 0.5, NaN where a task has no
positive label. Because a fixed 0.5 says little on rare findings, each split also gets, per
task, the threshold that maximises its F1 (:func:`f1_thresholds`; 0.5 where the split has no
positive to tune on), and F1 can be measured at thresholds chosen elsewhere (the trainloop picks
them on validation and applies them to test, so tuned F1 covers the same tasks as F1 at 0.5).
Masked entries (unknown labels) count nowhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score
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
    always says negative (the fraction of examples without a positive label).

    ``f1_threshold`` is the logit threshold that maximises F1 on this split (0 for a task
    without a positive here) and ``best_f1`` that F1 (in-sample, so optimistic; NaN without a
    positive); ``tuned_f1`` is F1 at the thresholds given to
    :func:`task_metrics` (chosen on another split), all NaN when none were given."""

    loss: Tensor
    accuracy: Tensor
    auroc: Tensor
    auprc: Tensor
    f1: Tensor
    n_labeled: Tensor
    n_positive: Tensor
    exact_match: float
    trivial_exact_match: float
    f1_threshold: Tensor
    best_f1: Tensor
    tuned_f1: Tensor

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

    @property
    def macro_tuned_f1(self) -> float:
        return _nanmean(self.tuned_f1)


def _nanmean(values: Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def _f1(predicted: Tensor, positive: Tensor, mask: Tensor) -> Tensor:
    """Per task ``2 TP / (2 TP + FP + FN)`` over labelled entries; NaN without a positive."""
    n_positive = positive.sum(0)
    true_pos = (predicted & positive).sum(0).double()
    false_pos = (predicted & mask & ~positive).sum(0).double()
    false_neg = n_positive.double() - true_pos
    f1 = 2 * true_pos / (2 * true_pos + false_pos + false_neg).clamp(min=1)
    return torch.where(n_positive > 0, f1, math.nan)


def f1_thresholds(logits: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per task, the logit threshold c maximising F1 of the rule ``z >= c`` over the labelled
    entries, and that F1 (both float64 ``[T]``). A task without a positive label here has no
    F1 to maximise: its threshold falls back to logit 0 (probability 0.5, the fixed threshold
    of ``f1``) and its F1 is NaN, so thresholds chosen on one split cover every task on the
    split they are applied to, and tuned F1 there averages the same tasks as F1 at 0.5.

    The candidates are the observed scores (scikit-learn's ``precision_recall_curve``); with
    precision P_k and recall R_k at candidate c_k, F1_k = 2 P_k R_k / (P_k + R_k) (0 when both
    are 0), and ties go to the lowest threshold (numpy's argmax over increasing c_k).
    """
    logits, mask = logits.double().cpu(), mask.cpu().bool()
    labels = torch.where(mask, labels.double().cpu(), 0.0)
    num_tasks = labels.shape[1]
    threshold = torch.zeros(num_tasks, dtype=torch.float64)  # logit 0: probability 0.5
    best = torch.full((num_tasks,), math.nan, dtype=torch.float64)
    for t in range(num_tasks):
        y = labels[mask[:, t], t].numpy() > 0.5
        if not y.any():
            continue
        precision, recall, candidates = precision_recall_curve(y, logits[mask[:, t], t].numpy())
        # the last (precision 1, recall 0) point has no threshold
        precision, recall = precision[:-1], recall[:-1]
        denominator = precision + recall
        f1 = np.divide(
            2 * precision * recall,
            denominator,
            out=np.zeros_like(denominator),
            where=denominator > 0,
        )
        k = int(np.argmax(f1))
        threshold[t], best[t] = float(candidates[k]), float(f1[k])
    return threshold, best


def task_metrics(
    logits: Tensor, labels: Tensor, mask: Tensor, thresholds: Tensor | None = None
) -> TaskMetrics:
    """Loss, accuracy and F1 at probability 0.5, AUROC and AUPRC per task over a whole split;
    F1 at each task's own best threshold (:func:`f1_thresholds`) and, with ``thresholds`` (logits,
    ``[T]``, NaN = none for that task: tuned F1 NaN there), at those.

    With p_it = [z_it > 0] and only labelled entries counted::

        F1_t        = 2 TP_t / (2 TP_t + FP_t + FN_t)        (NaN when task t has no positive)
        exact_match = #{i : p_it = y_it for every labelled t} / #{i : some t labelled}

    ``tuned_f1`` is F1_t with p_it = [z_it >= thresholds_t] (Lipton et al., "Thresholding
    Classifiers to Maximize F1 Score", 2014: choose the threshold on held-out data).
    """
    f1_threshold, best_f1 = f1_thresholds(logits, labels, mask)
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
    f1 = _f1(predicted, positive, mask)
    tuned_f1 = nan.clone()
    if thresholds is not None:
        cut = thresholds.double().cpu()
        tuned_f1 = torch.where(torch.isnan(cut), math.nan, _f1(logits >= cut, positive, mask))
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
        f1_threshold=f1_threshold,
        best_f1=best_f1,
        tuned_f1=tuned_f1,
    )
