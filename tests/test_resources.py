"""Trial resources and concurrency on fixed and autoscaling clusters (harness.resources), and
the run's refusals that depend on where the driver runs."""

from __future__ import annotations

import sys

import pytest

from harness.config import parse_config
from harness.errors import RunError
from harness.resources import ceiling, plan
from tests.conftest import tiny_config, write_config


def cfg_with(tmp_path, **resources):
    return parse_config(tiny_config(tmp_path, resources=resources))


def test_auto_takes_a_gpu_the_autoscaler_can_add(tmp_path):
    """A GPU node group scaled to zero: auto is 1 GPU, and the trials wait for the nodes."""
    now, limits = {"CPU": 16.0}, {"CPU": 64, "GPU": 8}
    planned = plan(cfg_with(tmp_path), now, limits)
    assert planned.gpus == 1.0 and planned.max_concurrent is None
    assert planned.notes == [
        "a trial needs 1 CPU and 1 GPU and the cluster has 16 CPU and 0 GPU now: trials wait "
        "until the autoscaler adds nodes (it can reach 64 CPU and 8 GPU)"
    ]


def test_auto_without_any_gpu_says_the_trials_run_on_cpu(tmp_path):
    planned = plan(cfg_with(tmp_path), {"CPU": 4.0}, {})
    assert planned.gpus == 0.0
    assert planned.notes == [
        "trials run on CPU: the cluster has no GPU and cannot scale to one "
        "(resources.gpus_per_worker: auto; an autoscaler that can add GPU nodes but does not "
        "report it to Ray is declared in cluster.max_resources)"
    ]


def test_an_explicit_gpu_waits_for_the_autoscaler_and_is_refused_without_one(tmp_path):
    cfg = cfg_with(tmp_path, gpus_per_worker=1)
    assert plan(cfg, {"CPU": 16.0}, {"GPU": 4}).gpus == 1.0
    with pytest.raises(RunError, match=r"^resources: a trial needs 1 CPU and 1 GPU \(1 worker\)"):
        plan(cfg, {"CPU": 16.0}, {})
    with pytest.raises(RunError, match="and its autoscaler cannot add more"):
        plan(cfg_with(tmp_path, gpus_per_worker=2), {"CPU": 16.0}, {"GPU": 1})


def test_concurrency_is_left_to_tune_or_capped_by_the_ceiling(tmp_path):
    assert plan(cfg_with(tmp_path, max_concurrent_trials=3), {"CPU": 8.0}, {}).max_concurrent == 3
    ddp = cfg_with(tmp_path, workers_per_trial=2, cpus_per_worker=2)
    assert plan(ddp, {"CPU": 8.0}, {"CPU": 16}).max_concurrent == 4  # 16 CPU / 4 per trial
    assert plan(ddp, {"CPU": 8.0}, {"CPU": sys.maxsize}).max_concurrent is None  # unbounded


def test_ceiling_takes_the_larger_per_resource():
    assert ceiling({"CPU": 16.0, "GPU": 1.0}, {"GPU": 8, "TPU": 4}) == {
        "CPU": 16.0,
        "GPU": 8,
        "TPU": 4,
    }


def test_a_relative_output_dir_under_ray_job_submit_is_refused(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    cfg = tiny_config(tmp_path, output={"dir": "runs"})
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err
    assert "harness: error: output.dir: 'runs' is relative, and under `ray job submit`" in err
    assert not (tmp_path / "runs").exists()


def test_a_relative_output_storage_under_ray_job_submit_is_refused(tmp_path, monkeypatch, capsys):
    from harness.cli import main

    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {}}')
    cfg = tiny_config(tmp_path, output={"dir": str(tmp_path / "runs"), "storage": "ckpts"})
    assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    assert "output.storage: 'ckpts' is relative" in capsys.readouterr().err
