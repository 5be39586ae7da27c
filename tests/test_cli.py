"""The CLI as a user meets it: subprocesses, exit codes, one-line errors (no Ray needed)."""

from __future__ import annotations

import subprocess
import sys

import pytest

import methods
from harness.config import parse_config
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
        # full_grid's prepared folder exists on the cluster only: its path is not checked here
        result = harness("validate", f"experiments/{name}", "--address", "10.0.0.1:6379")
        assert result.returncode == 0, result.stderr
        assert "ok (" in result.stdout
    # run locally, it would be refused before Ray starts, as harness run refuses it
    lines = assert_one_line_errors(harness("validate", "experiments/full_grid.yaml"), 2)
    assert lines == [
        "harness: error: data.prepared: /data/nih-256: no such folder (prepare the data set "
        "with harness data prepare)"
    ]


def test_validate_bad_file_names_each_key(tmp_path):
    cfg = tiny_config(
        tmp_path, grid={"methods": ["equal", "deepchest", "pcgard"]}, train={"epochs": -1}
    )
    lines = assert_one_line_errors(harness("validate", str(write_config(tmp_path, cfg))), 2)
    assert any(
        "grid.methods[2]: unknown method 'pcgard' (did you mean 'pcgrad'?); available: "
        + ", ".join(methods.available())
        in ln
        for ln in lines
    )
    assert any("train.epochs:" in ln for ln in lines)


def test_validate_warns_when_an_epoch_level_method_never_reweights(tmp_path):
    """DeepChest updates at the end of epoch 1, DWA first at the end of epoch 2: with 2 epochs
    DWA trains on equal weights throughout, which the user should hear before the run."""
    cfg = tiny_config(tmp_path, grid={"methods": ["equal", "deepchest", "dwa"]})
    result = harness("validate", str(write_config(tmp_path, cfg)))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "harness: warning: dwa first reweights in epoch 3 (it updates at epoch ends); with "
        "train.epochs: 2 it trains on equal weights throughout: give train.epochs >= 3 to "
        "compare it"
    ]
    one = parse_config(tiny_config(tmp_path, grid=cfg["grid"], train={"epochs": 1}))
    assert [line.split()[0] for line in one.warnings] == ["deepchest", "dwa"]
    seeded = {"method": "deepchest", "initial_weights": str(tmp_path / "w.json")}
    variant = tiny_config(
        tmp_path,
        grid={"methods": ["seeded"]},
        train={"epochs": 1},
        method_params={"seeded": seeded},
    )
    assert "on its initial weights throughout" in parse_config(variant).warnings[0]
    swept = tiny_config(tmp_path, grid={**cfg["grid"], "sweep": {"train.epochs": [3, 1]}})
    assert "with train.epochs: 1 (a swept setting)" in parse_config(swept).warnings[0]
    swept["grid"]["sweep"]["train.epochs"] = [3, 4]
    assert parse_config(swept).warnings == []  # every arm reweights


def test_validate_warns_about_settings_of_a_method_the_grid_does_not_run(tmp_path):
    """An override of the wrong method's settings is valid but does nothing: said, not refused
    (a variant's entry is a definition, which a narrowed grid may leave out)."""
    cfg = tiny_config(tmp_path, method_params={"ub": {"method": "mgda", "level": "representation"}})
    path = write_config(tmp_path, cfg)
    result = harness("validate", str(path), "method_params.upgrad.update_every=10")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "harness: warning: method_params.upgrad: upgrad is not in grid.methods, so these "
        "settings are unused"
    ]


def test_run_missing_file_and_missing_prepared_folder(tmp_path):
    assert_one_line_errors(harness("run", str(tmp_path / "nope.yaml")), 2)
    cfg = tiny_config(tmp_path, data={"dataset": "nih", "prepared": str(tmp_path / "no-nih")})
    lines = assert_one_line_errors(harness("run", str(write_config(tmp_path, cfg))), 2)
    assert lines == [
        f"harness: error: data.prepared: {tmp_path / 'no-nih'}: no such folder (prepare the "
        "data set with harness data prepare)"
    ]
    # nothing was left behind that a resume could mistake for a run
    assert not (tmp_path / "runs").exists()


def test_run_refuses_what_it_can_check_before_ray(tmp_path):
    cfg = tiny_config(tmp_path, train={"pretrained": "no-such-weights.pt"})
    lines = assert_one_line_errors(harness("run", str(write_config(tmp_path, cfg))), 2)
    assert lines == ["harness: error: train.pretrained: no-such-weights.pt is not a file"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg = tiny_config(tmp_path, output={"dir": str(blocker / "runs")})
    lines = assert_one_line_errors(harness("run", str(write_config(tmp_path, cfg))), 1)
    assert lines[0].startswith("harness: error: output.dir: cannot use ")
    cfg = tiny_config(tmp_path, data={"num_samples": 60}, train={"batch_size": 64})
    lines = assert_one_line_errors(harness("validate", str(write_config(tmp_path, cfg))), 2)
    assert "train.batch_size: one batch (64 x 1 worker) is larger than" in lines[0]


def test_report_of_missing_run(tmp_path):
    lines = assert_one_line_errors(harness("report", str(tmp_path / "no-run")), 2)
    assert len(lines) == 1


def test_methods_table():
    result = harness("methods")
    assert result.returncode == 0
    for name in ("equal", "deepchest", "signal=train_accuracy"):
        assert name in result.stdout
    wide = _methods_listing("220")
    # the cost class and default heads of each method, and its reference
    for text in ("cost: T backward passes", "heads: own", "heads: weighted", "arXiv:2406.16232"):
        assert text in wide


def test_usage_error_exits_2():
    result = harness("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help(args):
    result = harness(*args)
    assert result.returncode == 0 and "usage: harness" in result.stdout


def _methods_listing(columns: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    if columns is not None:
        env["COLUMNS"] = columns
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "methods"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("columns", [None, "80", "200"])
def test_methods_fit_the_width_when_piped(columns):
    """`harness methods | head`: $COLUMNS, else 80; names and settings never cut."""
    out = _methods_listing(columns)
    width = int(columns or 80)
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in out
    cells = [c.strip() for line in lines for c in line.strip("│┃").split("│")]
    for info in methods.describe():
        assert info.name in cells
        for key, value in info.hyperparameters.items():
            assert f"{key}={value}" in cells
    if width == 200:  # wide enough: every summary on the line of its method
        for info in methods.describe():
            assert any(info.name in line and info.summary in line for line in lines)


def test_readme_bench_options_match_the_parser():
    """The README's `harness bench` row lists exactly the parser's options, defaults, choices."""
    import re

    from harness.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    bench = commands.choices["bench"]
    readme = (REPO / "README.md").read_text()
    row = re.search(r"^\| `harness bench ([^`]*)`", readme, re.M).group(1)
    documented = dict(re.findall(r"(--[\w-]+)(?: ([^\]\s]+))?", row))
    options = [a for a in bench._actions if a.option_strings and a.dest != "help"]
    assert set(documented) == {a.option_strings[0] for a in options}
    for action in options:
        shown = documented[action.option_strings[0]]
        if action.choices:  # all choices, the default first
            choices = shown.split("\\|")
            assert set(choices) == set(action.choices), action.dest
            assert action.default is None or choices[0] == action.default, action.dest
        elif action.default is not None:
            assert shown == str(action.default), action.dest
        else:
            assert shown, action.dest  # a placeholder such as N or FILE.json
        assert (f"[{action.option_strings[0]}" in row) != action.required, action.dest


@pytest.mark.parametrize("width", [80, 200])
def test_bench_table_fits_the_terminal(monkeypatch, width):
    """The table `harness bench` prints (timings stubbed): methods and numbers never cut."""
    import io

    from rich.console import Console

    import harness.cli as cli
    from harness import bench

    names = (
        ("equal", "loss"),
        ("mgda:level=representation", "representation"),
        ("gradnorm", "last_shared_layer"),
    )
    rows = [
        {
            "method": method,
            "level": level,
            "step_time_ms": 1123.4,
            "ratio_vs_equal": 1.23,
            "epoch_ratio_vs_equal": 1.23,
            "flop_ratio_vs_equal": 2.5,
            "wall_over_flop_ratio": 0.49,
            "peak_memory_mb": 12345.0,
            "extra_memory_mb_vs_equal": 2345.0,
            "jacobian_mb": 1234.0,
            "images_per_second": 1234.0,
        }
        for method, level in names
    ]
    console = Console(width=width, record=True, file=io.StringIO())
    monkeypatch.setattr(bench, "run_bench", lambda *args, **kwargs: rows)
    monkeypatch.setattr(bench, "machine_description", lambda device: {"cpu": "x", "threads": 1})
    monkeypatch.setattr(cli, "_wide_console", lambda: console)
    args = cli.build_parser().parse_args(["bench", "--methods", "mgda", "--tasks", "1"])
    assert cli.cmd_bench(args) == 0
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text and "1 task, " in text and "1 thread" in text
    for method, level in names:
        assert method in text and level in text
    for number in ("1123.4", "1.23", "2.50", "0.49", "12345", "+2345"):
        assert text.count(number) == 3
