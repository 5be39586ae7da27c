"""Per-task losses and metrics against hand-computed values, with masks."""

from __future__ import annotations

import math

import pytest
import torch

from deepchest.metrics import f1_thresholds, masked_task_losses, task_metrics


def test_metrics_by_hand():
    # task 0: labels 1,0,1,0 with logits ranking 3 of 4 pairs right -> AUROC 0.75
    logits = torch.tensor([[2.0, 1.0], [0.5, -1.0], [-0.5, 3.0], [-1.0, 0.0]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    mask = torch.ones_like(labels, dtype=torch.bool)
    m = task_metrics(logits, labels, mask)
    assert m.auroc[0] == pytest.approx(0.75)
    assert math.isnan(m.auroc[1])  # one class only
    assert m.accuracy[0] == pytest.approx(2 / 4)  # predictions at p=0.5: 1,1,0,0
    assert m.accuracy[1] == pytest.approx(2 / 4)  # logits > 0 for two of four positives
    expected = sum(math.log1p(math.exp(-z)) for z in (1.0, -1.0, 3.0, 0.0)) / 4
    assert m.loss[1] == pytest.approx(expected)
    assert m.n_labeled.tolist() == [4, 4]
    assert m.mean_auroc == pytest.approx(0.75)  # NaN tasks left out of the mean


def test_masked_entries_count_nowhere_even_as_nan():
    logits = torch.tensor([[2.0], [-2.0], [5.0]])
    labels = torch.tensor([[1.0], [0.0], [float("nan")]])  # unknown, stored as NaN
    mask = torch.tensor([[True], [True], [False]])
    m = task_metrics(logits, labels, mask)
    assert m.auroc[0] == 1.0 and m.accuracy[0] == 1.0 and m.n_labeled[0] == 2
    losses = masked_task_losses(logits, labels, mask)
    assert torch.isfinite(losses).all()
    assert losses[0] == pytest.approx(math.log1p(math.exp(-2.0)))


def test_task_with_no_labels():
    logits = torch.zeros(3, 2, requires_grad=True)
    labels = torch.ones(3, 2)
    mask = torch.tensor([[True, False]] * 3)
    losses = masked_task_losses(logits, labels, mask)
    assert losses[1] == 0.0
    losses.sum().backward()
    assert (logits.grad[:, 1] == 0).all()
    m = task_metrics(logits.detach(), labels, mask)
    assert math.isnan(m.loss[1]) and math.isnan(m.accuracy[1]) and m.n_labeled[1] == 0


def test_auprc_f1_and_exact_match_by_hand():
    # task 0: labels 1,0,1,0, scores 2, 0.5, -0.5, -1 -> ranked: +(2) -(0.5) +(-0.5) -(-1)
    #   AP = (1/1 + 2/3) / 2; predictions 1,1,0,0 -> TP 1, FP 1, FN 1 -> F1 = 2/4
    # task 1: labels 0,0,0,1 (one mask hole), predictions 1,0,1,0 on the labelled rows
    logits = torch.tensor([[2.0, 1.0], [0.5, -1.0], [-0.5, 3.0], [-1.0, -2.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    m = task_metrics(logits, labels, mask)
    assert m.auprc[0] == pytest.approx((1 + 2 / 3) / 2)
    assert m.f1[0] == pytest.approx(0.5)
    # task 1 labelled rows 0,1,3: labels 0,0,1, scores 1,-1,-2 -> the positive ranks last
    assert m.auprc[1] == pytest.approx(1 / 3)
    assert m.f1[1] == pytest.approx(0.0)  # TP 0, FP 1, FN 1
    assert m.n_positive.tolist() == [2, 1]
    assert m.macro_f1 == pytest.approx(0.25)
    # per example, every labelled finding right? row 0: (1,1) vs (1,0) no; row 1: (1,0) vs
    # (0,0) no; row 2: task 0 only, 0 vs 1 no; row 3: (0,0) vs (0,1) no
    assert m.exact_match == 0.0
    # examples without a positive label: row 1 only (row 2 has task 0 positive)
    assert m.trivial_exact_match == pytest.approx(1 / 4)


def test_exact_match_counts_only_labelled_findings():
    logits = torch.tensor([[3.0, 9.0], [-3.0, -9.0], [5.0, 5.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    mask = torch.tensor([[True, False], [True, True], [False, False]])  # row 2: nothing known
    m = task_metrics(logits, labels, mask)
    assert m.exact_match == 1.0  # rows 0 and 1 right on what is known; row 2 not counted
    assert m.trivial_exact_match == pytest.approx(1 / 2)
    assert math.isnan(m.f1[1])  # no positive label for task 1


def test_f1_threshold_chosen_by_hand_with_mask():
    # task 0 labels 1,0,1,0 scores 2, 0.5, -0.5, -1 (row 4 masked, its NaN label ignored):
    #   z >= 2   -> TP 1 FP 0 FN 1 -> F1 2/3
    #   z >= 0.5 -> TP 1 FP 1 FN 1 -> F1 1/2
    #   z >= -.5 -> TP 2 FP 1 FN 0 -> F1 4/5  (best)
    #   z >= -1  -> TP 2 FP 2 FN 0 -> F1 2/3
    # task 1: no positive label -> no F1 to maximise (NaN); the threshold falls back to logit 0
    logits = torch.tensor([[2.0, 1.0], [0.5, -1.0], [-0.5, 3.0], [-1.0, -2.0], [9.0, 0.0]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [float("nan"), 0.0]])
    mask = torch.tensor([[True, True]] * 4 + [[False, True]])
    threshold, best = f1_thresholds(logits, labels, mask)
    assert threshold[0] == -0.5 and best[0] == pytest.approx(0.8)
    assert threshold[1] == 0.0 and math.isnan(best[1])
    m = task_metrics(logits, labels, mask)
    assert m.f1_threshold[0] == -0.5 and m.best_f1[0] == pytest.approx(0.8)
    assert torch.isnan(m.tuned_f1).all()  # no thresholds given
    assert m.f1[0] == pytest.approx(0.5)  # at probability 0.5 (z > 0): TP 1 FP 1 FN 1


def test_tuned_f1_at_given_thresholds():
    logits = torch.tensor([[2.0, 1.0], [0.5, -1.0], [-0.5, 3.0], [-1.0, -2.0], [9.0, 5.0]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[True, True]] * 4 + [[False, False]])  # row 4 counts nowhere
    # task 0 at z >= 0.5: TP 1 FP 1 FN 1 -> 1/2 (the threshold itself counts as positive);
    # task 1 has no threshold (NaN): its tuned F1 is NaN and the macro mean skips it
    m = task_metrics(logits, labels, mask, thresholds=torch.tensor([0.5, float("nan")]))
    assert m.tuned_f1[0] == pytest.approx(0.5)
    assert math.isnan(m.tuned_f1[1])
    assert m.macro_tuned_f1 == pytest.approx(0.5)
    # task 1 at z >= -2 (every labelled row positive): TP 2 FP 2 FN 0 -> 2/3
    m = task_metrics(logits, labels, mask, thresholds=torch.tensor([0.5, -2.0]))
    assert m.tuned_f1[1] == pytest.approx(2 / 3)


def test_val_thresholds_without_a_val_positive_fall_back_to_one_half():
    # validation: task 0 as in the test above (best z >= -0.5); task 1 has no positive there
    val_logits = torch.tensor([[2.0, 1.0], [0.5, -1.0], [-0.5, 3.0], [-1.0, -2.0]])
    val_labels = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    val_mask = torch.ones_like(val_labels, dtype=torch.bool)
    threshold, _ = f1_thresholds(val_logits, val_labels, val_mask)
    assert threshold.tolist() == [-0.5, 0.0]
    # test: task 0 at z >= -0.5 predicts rows 0 and 2: TP 1 FP 1 FN 0 -> 2/3;
    # task 1 (labels 1,0,1,0) at z >= 0 predicts rows 0 and 1: TP 1 FP 1 FN 1 -> 1/2,
    # the same as at probability 0.5, so both macro means average both tasks: 7/12
    logits = torch.tensor([[1.0, 2.0], [-1.0, 1.0], [0.2, -1.0], [-2.0, -3.0]])
    labels = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    mask = torch.ones_like(labels, dtype=torch.bool)
    m = task_metrics(logits, labels, mask, thresholds=threshold)
    assert m.tuned_f1.tolist() == pytest.approx([2 / 3, 1 / 2])
    assert m.macro_tuned_f1 == pytest.approx(7 / 12)
    assert m.macro_f1 == pytest.approx(7 / 12)


def test_trial_records_val_chosen_thresholds_and_test_f1(tmp_path):
    import pyarrow.parquet as pq

    from harness.config import parse_config
    from harness.launch import trial_identities, trial_spec
    from harness.results import TrialRecord, write_tables
    from harness.trainloop import MemoryReporter, train_trial
    from tests.conftest import tiny_config

    cfg = parse_config(tiny_config(tmp_path, grid={"methods": ["equal"]}))
    identity = trial_identities(cfg)[0]
    out = train_trial(trial_spec(cfg, identity, gpus=0), MemoryReporter())
    rows = out["rows"]
    val = {r["task"]: r for r in rows if r["split"] == "val" and r["epoch"] == out["best_epoch"]}
    test = [r for r in rows if r["split"] == "test"]
    train = [r for r in rows if r["split"] == "train"]
    assert all(math.isnan(r["threshold"]) and math.isnan(r["f1_tuned"]) for r in train)
    for r in test:  # the best epoch's val threshold is the one applied to test
        chosen = val[r["task"]]["threshold"]
        assert r["threshold"] == chosen
        assert 0.0 < r["threshold"] < 1.0  # 0.5 where val had no positive
    # tuned F1 is missing exactly where F1 at 0.5 is (no positive on test): same findings
    assert [math.isnan(r["f1_tuned"]) for r in test] == [math.isnan(r["f1"]) for r in test]
    finite = [r["f1_tuned"] for r in test if not math.isnan(r["f1_tuned"])]
    assert finite and out["test_macro_f1_tuned"] == pytest.approx(sum(finite) / len(finite))
    record = TrialRecord(tmp_path, identity)
    record.replace_history(rows)
    record.set(status="completed", summary={k: v for k, v in out.items() if k != "rows"})
    trials_path, epochs_path = write_tables(tmp_path, [record])
    assert pq.read_table(trials_path).column("test_macro_f1_tuned")[0].as_py() == pytest.approx(
        out["test_macro_f1_tuned"]
    )
    assert {"threshold", "f1_tuned"} <= set(pq.read_table(epochs_path).column_names)
