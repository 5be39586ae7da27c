"""`harness run` through the CLI on a real local Ray (one Ray for the session)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from harness.cli import main
from tests.conftest import tiny_config, write_config

pytestmark = pytest.mark.timeout(300)

TASKS = 14


def run_cli(*args: str) -> int:
    return main(["run", *args])


def test_tiny_grid_end_to_end(ray_session, tmp_path, capsys):
    path = write_config(tmp_path, tiny_config(tmp_path))
    assert run_cli(str(path)) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "tiny"
    assert f"report: {run_dir / 'report.html'}" in out
    assert "deepchest" in out and "equal" in out  # the results table

    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert sorted(trials.trial_id) == ["deepchest-simple_cnn-s0", "equal-simple_cnn-s0"]
    assert set(trials.status) == {"completed"}
    assert (trials.epochs_completed == 2).all()
    assert trials.test_mean_auroc.between(0, 1).all()
    assert (trials.images_per_second > 0).all() and (trials.peak_memory_mb > 0).all()

    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet")
    for column in (
        "trial_id",
        "method",
        "backbone",
        "seed",
        "epoch",
        "split",
        "task",
        "loss",
        "accuracy",
        "auroc",
        "auprc",
        "f1",
        "weight",
        "n_labeled",
        "n_positive",
        "train_time_s",
    ):
        assert column in epochs.columns
    for column in ("test_mean_auprc", "test_macro_f1", "test_exact_match"):
        assert trials[column].between(0, 1).all(), column
    assert (trials[["n_train", "n_val", "n_test"]].sum(axis=1) == 240).all()
    per_trial = epochs.groupby("trial_id").size()
    assert (per_trial == 2 * 2 * TASKS + TASKS).all()  # 2 epochs x train/val, + test
    assert set(epochs.split) == {"train", "val", "test"}
    deep = epochs[(epochs.method == "deepchest") & (epochs.split == "train")]
    assert (deep[deep.epoch == 1].weight == 1.0).all()
    assert set(deep[deep.epoch == 2].weight.round(6)) <= {1.1, round(1 / 1.05, 6)}
    assert (epochs[epochs.method == "equal"].weight == 1.0).all()

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["finished_at"] and manifest["tasks"][0] == "Atelectasis"
    assert {t["status"] for t in manifest["trials"].values()} == {"completed"}
    assert (run_dir / "config.yaml").is_file()
    html = (run_dir / "report.html").read_text()
    assert "deepchest" in html and "<html" in html.lower()

    # `harness report` rebuilds the report from the tables alone
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file()
    assert "deepchest" in capsys.readouterr().out

    # a second run on other data merges with the first into one comparison of two workloads
    other = tiny_config(tmp_path, name="tiny-28", data={"image_size": 28})
    assert run_cli(str(write_config(tmp_path, other, "other.yaml"))) == 0
    merged = tmp_path / "compare" / "report.html"
    assert (
        main(["report", str(run_dir), str(tmp_path / "runs" / "tiny-28"), "--out", str(merged)])
        == 0
    )
    assert "tiny + tiny-28: summary" in capsys.readouterr().out
    summary = pd.read_csv(tmp_path / "compare" / "summary.csv")
    assert set(summary.workload) == {
        "simple_cnn · synthetic @ 32 px",
        "simple_cnn · synthetic @ 28 px",
    }
    assert 'id="fig-profiles"' in merged.read_text()

    # the same name again is refused, --resume keeps the finished trials and trains nothing
    assert run_cli(str(path)) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert run_cli(str(path), "--resume") == 0
    again = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert again.test_mean_auroc.tolist() == trials.test_mean_auroc.tolist()


def test_method_variant_runs_beside_its_base_method(ray_session, tmp_path, capsys):
    """One registered method under two settings in one grid, as a user writes it."""
    cfg = tiny_config(
        tmp_path,
        name="variants",
        grid={"methods": ["equal", "deepchest_val"]},
        method_params={"deepchest_val": {"method": "deepchest", "signal": "val_loss"}},
    )
    assert run_cli(str(write_config(tmp_path, cfg))) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "variants"
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert sorted(trials.trial_id) == ["deepchest_val-simple_cnn-s0", "equal-simple_cnn-s0"]
    assert set(trials.status) == {"completed"}
    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet")
    deep = epochs[(epochs.method == "deepchest_val") & (epochs.split == "train")]
    # DeepChest's rule ran: after epoch 1 every weight went up by 10% or down by 5%
    assert set(deep[deep.epoch == 2].weight.round(6)) <= {1.1, round(1 / 1.05, 6)}
    assert "deepchest_val" in (run_dir / "report.html").read_text()


def test_failed_trials_are_reported_and_exit_nonzero(ray_session, tmp_path, capsys, monkeypatch):
    # a weights file that exists but is junk, named by a path relative to where the user
    # runs the harness (trials run in their own working directories)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"not a state dict")
    # joining a cluster, the path is the nodes': pre-flight leaves it to the trials (a local
    # run refuses the file before Ray starts, tests/test_preflight.py)
    monkeypatch.setenv("RAY_ADDRESS", ray_session.get_runtime_context().gcs_address)
    train = {"pretrained": "weights.pt", "max_failures": 0}
    cfg = tiny_config(tmp_path, name="broken", train=train)
    assert run_cli(str(write_config(tmp_path, cfg))) == 1
    err = capsys.readouterr().err
    assert "trial equal-simple_cnn-s0 failed: " in err
    assert "weights.pt: not a readable torch state dict" in err
    run_dir = tmp_path / "runs" / "broken"
    log = run_dir / "ray" / "tune_stdout.log"
    assert f"2 of 2 trials failed; their records are in {run_dir} (tracebacks: {log})" in err
    # Tune's traceback of each failed trial is there, not on the terminal
    assert "Traceback" not in err
    assert log.read_text().count("Traceback (most recent call last)") >= 2
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert set(trials.status) == {"failed"}
    assert trials.error.str.contains("not a readable torch state dict").all()
    assert (run_dir / "report.html").is_file()

    # --resume with a changed experiment is refused, naming what changed
    cfg["train"]["epochs"] = 3
    assert run_cli(str(write_config(tmp_path, cfg)), "--resume") == 2
    assert "the experiment differs from" in capsys.readouterr().err


def test_two_worker_trial_runs_under_torch_trainer(ray_session, tmp_path):
    """workers_per_trial: 2 takes the TorchTrainer (DDP, gloo) path inside the Tune trial."""
    cfg = tiny_config(
        tmp_path,
        name="ddp",
        grid={"methods": ["deepchest"]},
        resources={"workers_per_trial": 2, "cpus_per_worker": 1},
    )
    assert run_cli(str(write_config(tmp_path, cfg))) == 0
    run_dir = tmp_path / "runs" / "ddp"
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert trials.status.tolist() == ["completed"]
    assert trials.workers.tolist() == [2]
    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet")
    assert len(epochs) == 2 * 2 * TASKS + TASKS
    _remove_leftover_placement_groups()


def _remove_leftover_placement_groups() -> None:
    """Known Ray 2.60 problem (Train v2 inside a Tune trial, ray-project/ray#54305): the
    finished TorchTrainer's worker placement group stays reserved, and the session's next run
    would wait for its CPUs forever. Nothing else runs now, so every placement group left is
    a leftover."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import (
        PlacementGroup,
        placement_group_table,
        remove_placement_group,
    )

    for pg_id, info in placement_group_table().items():
        if info["state"] == "CREATED":
            remove_placement_group(PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id))))
    import time

    deadline = time.monotonic() + 30  # removal is asynchronous
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
