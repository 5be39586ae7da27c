"""The CLI as a user meets it: subprocesses, exit codes, one-line errors (no Ray needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import methods
from tests.conftest import REPO, tiny_config, write_config

AVAILABLE = ", ".join(methods.available())


def harness(*args: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def assert_one_line_errors(result: subprocess.CompletedProcess, code: int) -> list[str]:
    assert result.returncode == code, result.stderr
    # `harness run` says what it is doing while it starts ("harness: starting ..."): notes
    lines = [
        line
        for line in result.stderr.strip().splitlines()
        if not (line.startswith("harness: ") and line.endswith(" ..."))
    ]
    assert lines and all(line.startswith("harness: error: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    return lines


def test_validate_shipped_experiments():
    for name in ("quickstart.yaml", "full_grid.yaml"):
        result = harness("validate", f"experiments/{name}")
        assert result.returncode == 0, result.stderr
        assert "ok (" in result.stdout


def test_validate_bad_file_names_each_key(tmp_path):
    cfg = tiny_config(
        tmp_path, grid={"methods": ["equal", "deepchest", "pcgard"]}, train={"epochs": -1}
    )
    lines = assert_one_line_errors(harness("validate", str(write_config(tmp_path, cfg))), 2)
    assert any(
        "grid.methods[2]: unknown method 'pcgard'; available: " + ", ".join(methods.available())
        in ln
        for ln in lines
    )
    assert any("train.epochs:" in ln for ln in lines)


def test_run_missing_file_and_missing_prepared_folder(tmp_path):
    assert_one_line_errors(harness("run", str(tmp_path / "nope.yaml")), 2)
    cfg = tiny_config(tmp_path, data={"dataset": "nih", "prepared": str(tmp_path / "no-nih")})
    lines = assert_one_line_errors(harness("run", str(write_config(tmp_path, cfg))), 1)
    assert lines == [
        f"harness: error: {tmp_path / 'no-nih'}: no such folder (prepare the data set with "
        "harness data prepare)"
    ]
    # nothing was left behind that a resume could mistake for a run
    assert not (tmp_path / "runs").exists()


def test_run_refuses_what_it_can_check_before_ray(tmp_path):
    cfg = tiny_config(tmp_path, train={"pretrained": "no-such-weights.pt"})
    lines = assert_one_line_errors(harness("run", str(write_config(tmp_path, cfg))), 1)
    assert lines == ["harness: error: train.pretrained: no-such-weights.pt is not a file"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = tiny_config(tmp_path, output={"dir": str(blocker / "runs")})
    lines = assert_one_line_errors(harness("run", str(write_config(tmp_path, cfg))), 1)
    assert lines[0].startswith("harness: error: output.dir: cannot use ")
    cfg = tiny_config(tmp_path, data={"num_samples": 60}, train={"batch_size": 64})
    lines = assert_one_line_errors(harness("validate", str(write_config(tmp_path, cfg))), 2)
    assert "train.batch_size: one batch (64 x 1 worker(s)) is larger than" in lines[0]


def test_report_of_missing_run(tmp_path):
    lines = assert_one_line_errors(harness("report", str(tmp_path / "no-run")), 2)
    assert len(lines) == 1


def test_methods_table():
    result = harness("methods")
    assert result.returncode == 0
    for name in ("equal", "deepchest", "signal=train_accuracy"):
        assert name in result.stdout


def test_usage_error_exits_2():
    result = harness("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help(args):
    result = harness(*args)
    assert result.returncode == 0 and "usage: harness" in result.stdout
