"""The training loop without Ray: rows, determinism, resume, divergence, DDP on 2 processes."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import methods
from harness import trainloop
from harness.config import parse_config
from harness.launch import trial_identities, trial_spec
from harness.trainloop import MemoryReporter, TorchCollective, train_trial
from tests.conftest import tiny_config


def spec_for(tmp_path, method="deepchest", epochs=2, checkpoints=None, **sections):
    grid = {"methods": [method]}
    cfg = parse_config(tiny_config(tmp_path, train={"epochs": epochs}, grid=grid, **sections))
    return trial_spec(cfg, trial_identities(cfg)[0], gpus=0, checkpoints=checkpoints)


class Crash(Exception):
    """Raised by ``CrashingReporter``: the trial's process dies after an epoch was saved."""


class CrashingReporter(MemoryReporter):
    """Raises after the report of epoch ``after`` (that epoch's state is already saved)."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def report(self, metrics):
        super().report(metrics)
        if not metrics["done"] and metrics["epoch"] == self.after:
            raise Crash(f"after epoch {self.after}")


def interrupted(spec, after: int):
    with pytest.raises(Crash):
        train_trial(spec, CrashingReporter(after))


def test_rows_reports_and_summary(tmp_path):
    reporter = MemoryReporter()
    out = train_trial(spec_for(tmp_path), reporter)
    assert out["status"] == "completed" and out["epochs_completed"] == 2
    rows = out["rows"]
    # 2 epochs x (train, val) x 14 tasks, then 14 test rows at the best epoch
    assert len(rows) == 2 * 2 * 14 + 14
    test = [r for r in rows if r["split"] == "test"]
    assert {r["epoch"] for r in test} == {out["best_epoch"]}
    assert 0.0 <= out["test_mean_auroc"] <= 1.0
    assert out["images_per_second"] > 0 and out["peak_memory_mb"] > 0
    for phase in ("data", "forward", "backward", "optimizer"):
        assert out[f"{phase}_time_ms"] > 0
    # two epoch reports with checkpoints' metrics, then the final report
    assert [r["done"] for r in reporter.reports] == [False, False, True]
    epoch1 = [r for r in rows if r["epoch"] == 1 and r["split"] == "train"]
    assert sum(r["weight_normalized"] for r in epoch1) == pytest.approx(1.0)
    assert all(r["weight"] == 1.0 for r in epoch1)  # DeepChest starts at 1
    epoch2 = [r for r in rows if r["epoch"] == 2 and r["split"] == "train"]
    assert {round(r["weight"], 6) for r in epoch2} <= {round(1.1, 6), round(1 / 1.05, 6)}


def test_same_seed_same_metrics(tmp_path):
    a = train_trial(spec_for(tmp_path, method="equal"), MemoryReporter())
    b = train_trial(spec_for(tmp_path, method="equal"), MemoryReporter())
    assert [r["loss"] for r in a["rows"]] == [r["loss"] for r in b["rows"]]
    assert a["test_mean_auroc"] == b["test_mean_auroc"]


def test_resume_from_checkpoint_continues(tmp_path):
    spec = spec_for(tmp_path, epochs=3, checkpoints=str(tmp_path / "store"))
    first = CrashingReporter(after=2)
    with pytest.raises(Crash):
        train_trial(spec, first)
    resumed_reporter = MemoryReporter()
    resumed = train_trial(spec, resumed_reporter)
    assert resumed["epochs_completed"] == 3
    # only epoch 3 was trained again; epochs 1-2 come from the checkpoint, unchanged
    assert [r["epoch"] for r in resumed_reporter.reports if not r["done"]] == [3]
    old = [r for m in first.reports for r in json.loads(m["rows_json"])]
    assert repr(resumed["rows"][: len(old)]) == repr(old)  # repr: NaN == NaN


def test_non_finite_loss_marks_trial_diverged(tmp_path, monkeypatch):
    real = trainloop.masked_task_losses
    calls = {"n": 0}

    def exploding(logits, labels, mask):
        calls["n"] += 1
        losses = real(logits, labels, mask)
        return losses * math.inf if calls["n"] >= 3 else losses

    monkeypatch.setattr(trainloop, "masked_task_losses", exploding)
    out = train_trial(spec_for(tmp_path), MemoryReporter())
    assert out["status"] == "diverged"
    assert "non-finite loss at epoch 1, step 3" in out["error"]
    assert math.isnan(out["test_mean_auroc"])
    assert out["epochs_completed"] == 0


def _ddp_worker(rank: int, world: int, init_file: str, spec: dict, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = train_trial(spec, MemoryReporter(), TorchCollective())
        results[rank] = {
            "weights": [r["weight"] for r in out["rows"] if r["split"] == "train"],
            "val_auroc": [r["auroc"] for r in out["rows"] if r["split"] == "val"],
            "test_mean_auroc": out["test_mean_auroc"],
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["deepchest", "uncertainty"])
def test_ddp_two_cpu_workers_agree_on_weights(tmp_path, method):
    """Two gloo processes: per-task losses are all-reduced before the method sees them and
    metrics are computed on gathered predictions, so both ranks hold identical weights
    (for uncertainty weighting: identical learned log-variances)."""
    spec = spec_for(tmp_path, method=method, epochs=3)
    results = mp.Manager().dict()
    mp.spawn(
        _ddp_worker,
        args=(2, str(tmp_path / "init"), spec, results),
        nprocs=2,
        join=True,
    )
    a, b = results[0], results[1]
    assert a["weights"] == b["weights"]
    assert repr(a["val_auroc"]) == repr(b["val_auroc"])  # repr: NaN == NaN
    assert a["test_mean_auroc"] == b["test_mean_auroc"]
    # the weights moved (DeepChest after the first epoch; uncertainty from its first step)
    assert len(set(a["weights"])) > 1


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
    os.environ.pop("MASTER_ADDR", None)


def test_uncertainty_learns_its_log_variances_and_resumes(tmp_path):
    """The method's own parameters join the optimizer (lr 0.025, no weight decay) and are
    checkpointed with it: a resumed trial continues where the first one stopped."""
    spec = spec_for(tmp_path, method="uncertainty", epochs=3, checkpoints=str(tmp_path / "s"))
    first = CrashingReporter(after=2)
    with pytest.raises(Crash):
        train_trial(spec, first)
    old = [r for m in first.reports for r in json.loads(m["rows_json"])]
    weights = [r["weight"] for r in old if r["split"] == "train"]
    assert all(w > 0 for w in weights) and len(set(weights)) > 1  # 0.5 exp(-s), s learned
    resumed = train_trial(spec, MemoryReporter())
    assert resumed["epochs_completed"] == 3
    assert repr(resumed["rows"][: len(old)]) == repr(old)


@pytest.mark.parametrize("method", methods.available())
def test_every_registered_method_trains(tmp_path, method):
    out = train_trial(spec_for(tmp_path, method=method, epochs=3), MemoryReporter())
    assert out["status"] == "completed" and out["epochs_completed"] == 3
    assert 0.0 <= out["test_mean_auroc"] <= 1.0
    train_rows = [r for r in out["rows"] if r["split"] == "train"]
    assert all(math.isfinite(r["weight"]) and r["weight"] > 0 for r in train_rows)


@pytest.mark.parametrize("method", methods.available())
def test_every_method_trains_with_masked_labels(tmp_path, monkeypatch, method):
    """Unknown labels (CheXpert's uncertain ones) through loss, method and metrics: 40% of the
    labels masked at random, and one task without any label in the training split."""
    from deepchest.data import LabeledImages

    real = trainloop.load_splits

    def masked(data):
        out = {}
        for k, (split, d) in enumerate(real(data).items()):
            g = torch.Generator().manual_seed(k)
            mask = torch.rand(d.mask.shape, generator=g) > 0.4
            if split == "train":
                mask[:, 3] = False
            out[split] = LabeledImages(d.images, d.labels, mask, d.task_names)
        return out

    monkeypatch.setattr(trainloop, "load_splits", masked)
    out = train_trial(spec_for(tmp_path, method=method, epochs=2), MemoryReporter())
    assert out["status"] == "completed", out["error"]
    train = [r for r in out["rows"] if r["split"] == "train"]
    assert all(math.isfinite(r["weight"]) for r in train)
    assert all(
        r["n_labeled"] == 0 and math.isnan(r["auroc"])
        for r in train
        if r["task"] == (train[3]["task"])
    )
    assert math.isfinite(out["test_mean_auroc"])


def test_resume_with_augmentation_continues_the_same_run(tmp_path):
    """The augmentation draws are seeded per epoch: stopping after epoch 2 and resuming gives
    the epoch-3 rows of an uninterrupted run."""
    data = {"augment": True}
    straight = train_trial(spec_for(tmp_path, epochs=3, data=data), MemoryReporter())
    spec = spec_for(tmp_path, epochs=3, data=data, checkpoints=str(tmp_path / "store"))
    interrupted(spec, after=2)
    resumed = train_trial(spec, MemoryReporter())

    def epoch3(out):  # everything but the clock
        rows = [r for r in out["rows"] if r["epoch"] == 3 and r["split"] != "test"]
        return repr([{k: v for k, v in r.items() if k != "train_time_s"} for r in rows])

    assert epoch3(resumed) == epoch3(straight)


def test_steps_with_non_finite_weights_are_left_out_of_the_epoch_mean(tmp_path, monkeypatch):
    """An fp16 overflow step (skipped by GradScaler) reports NaN weights: the epoch's logged
    weight is the mean over the other steps, not NaN."""
    real = trainloop.engine.backward
    calls = {"n": 0}

    def sometimes_nan(*args, **kwargs):
        weights = real(*args, **kwargs)
        calls["n"] += 1
        return weights * math.nan if calls["n"] % 2 else weights

    monkeypatch.setattr(trainloop.engine, "backward", sometimes_nan)
    out = train_trial(spec_for(tmp_path, method="equal", epochs=1), MemoryReporter())
    assert {r["weight"] for r in out["rows"] if r["split"] == "train"} == {1.0}
