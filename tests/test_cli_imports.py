"""The light commands start without the heavy libraries: ``harness --help``, ``validate``,
``methods`` and ``report`` run with torch, torchvision, scikit-learn and Ray unimportable (the
README: a report needs neither torch nor Ray), and the first three without pandas, SciPy or
plotly. Each runs ``harness.cli.main`` in a fresh interpreter whose import system refuses those
packages, as an environment without them would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import methods
from tests.conftest import REPO, tiny_config, write_config
from tests.test_preflight import chestmnist, prepared_nih
from tests.test_reports import make_run

BLOCKED = ("torch", "torchvision", "sklearn", "ray")
# what the report needs and the other commands must not load
HEAVY = ("pandas", "scipy", "plotly")

# A meta-path finder in front of the others: any import of a blocked package (or of one of its
# submodules) fails with ImportError, and is recorded, so that an ImportError caught and
# swallowed on the way still fails the test. A lazy module (lazy_loader.load) only finds the
# spec; loading it would run exec_module and fail.
PRELUDE = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, sys

    BLOCKED = {blocked!r}
    attempted = []

    class Refuse(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            attempted.append(module.__name__)
            raise ImportError(f"{{module.__name__}} is blocked in this test")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return importlib.machinery.ModuleSpec(name, Refuse())
            return None

    sys.meta_path.insert(0, Block())

    from harness.cli import main

    try:
        code = main({argv!r})
    except SystemExit as exc:  # --help
        code = exc.code
    sys.stdout.flush()
    loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
    print(f"@@ code={{code}} attempted={{attempted}} loaded={{loaded}}", file=sys.stderr)
    """
)


def run_blocked(*argv: str, cwd: Path = REPO) -> tuple[int, str, str, list[str], list[str]]:
    """``harness ARGV`` with the blocked packages unimportable: (exit code, stdout, stderr
    before the summary line, blocked imports attempted, heavy packages loaded)."""
    code = PRELUDE.format(blocked=BLOCKED, argv=list(argv), heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert "@@ code=" in result.stderr, result.stderr
    stderr, _, summary = result.stderr.rpartition("@@ ")
    values = dict(part.split("=", 1) for part in summary.split(maxsplit=2))
    attempted, loaded = eval(values["attempted"]), eval(values["loaded"])  # lists of str
    return int(values["code"]), result.stdout, stderr, attempted, loaded


def test_help_without_torch_or_pandas():
    code, out, err, attempted, loaded = run_blocked("--help")
    assert code == 0, err
    assert out.startswith("usage: harness") and "validate" in out and "report" in out
    assert attempted == [] and loaded == []


def test_validate_without_torch_or_pandas():
    code, out, err, attempted, loaded = run_blocked("validate", "experiments/quickstart.yaml")
    assert code == 0, err
    assert out.startswith("experiments/quickstart.yaml: ok (") and "data synthetic" in out
    assert attempted == [] and loaded == []


@pytest.mark.parametrize("dataset", ["nih", "chestmnist"])
def test_validate_of_real_data_without_torch(tmp_path: Path, dataset: str):
    """A prepared folder's manifest and index, and a ChestMNIST file's headers, are checked
    without torch: the split sizes are those of the files. (pyarrow's ``to_numpy`` of the
    index's columns loads pandas, hence no check of the heavy packages here.)"""
    if dataset == "nih":
        splits = ["train"] * 7 + ["val"] * 3 + ["test"] * 2
        source = {"prepared": str(prepared_nih(tmp_path, splits))}
        sizes = "(train 7, val 3, test 2 images)"
    else:
        npz = chestmnist(tmp_path / "chestmnist.npz", {"train": 9, "val": 4, "test": 5})
        source = {"root": str(npz), "image_size": 28}
        sizes = "(train 9, val 4, test 5 images)"
    cfg = tiny_config(tmp_path, data={"dataset": dataset, **source}, train={"batch_size": 2})
    cfg["data"].pop("num_samples")
    if dataset == "nih":
        cfg["data"].pop("image_size")
    code, out, err, attempted, loaded = run_blocked("validate", str(write_config(tmp_path, cfg)))
    assert code == 0, err
    assert f"data {dataset}" in out and sizes in out, out
    assert attempted == []


def test_validate_checks_hyperparameters_without_torch(tmp_path: Path):
    """The method's own checks (here Fixed's one weight per task), without building it."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "name: bad\ndata: {dataset: synthetic, num_samples: 300, tasks: [Mass, Nodule]}\n"
        "grid: {methods: [fixed], seeds: [0], backbones: [simple_cnn]}\n"
        "method_params: {fixed: {weights: [1, 2, 3]}}\n"
    )
    code, out, err, attempted, loaded = run_blocked("validate", str(config))
    assert code == 2, err
    assert err.strip() == (
        "harness: error: method_params.fixed: method 'fixed': weights has 3 values for 2 "
        "tasks (give one per task, or a mapping task -> weight)"
    )
    assert attempted == [] and loaded == []


def test_methods_without_torch_or_pandas():
    code, out, err, attempted, loaded = run_blocked("methods")
    assert code == 0, err
    assert "Registered task-weighting methods" in out
    assert all(name in out for name in ("deepchest", "equal", "upgrad", "famo"))
    assert attempted == [] and loaded == []


def test_report_without_torch_sklearn_or_ray(tmp_path: Path):
    run = make_run(tmp_path / "run")
    code, out, err, attempted, _ = run_blocked("report", str(run))
    assert code == 0, err
    assert f"report: {run / 'report.html'}" in out
    assert (run / "report.html").is_file() and (run / "summary.md").is_file()
    assert attempted == []


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (
            ["bench", "--methods", "equal,mgda:ema=2", "--backbone", "simple_cnn"],
            "harness: error: method 'mgda': ema must be a finite number >= 0 and <= 1, got 2",
        ),
        (
            ["bench", "--methods", "equal", "--backbone", "resnet7"],
            "harness: error: unknown backbone 'resnet7'; available: ",
        ),
        (
            ["run", "experiments/quickstart.yaml", "train.epochs=0"],
            "harness: error: override train.epochs=0: train.epochs: must be greater than or "
            "equal to 1",
        ),
    ],
)
def test_bad_bench_and_run_arguments_are_refused_before_torch(argv, line):
    """``harness bench`` and ``run`` check their arguments before torch loads (it took some
    6 s to say one line)."""
    code, out, err, attempted, _ = run_blocked(*argv)
    assert code == 2, err
    assert err.strip().startswith(line), err
    assert len(err.strip().splitlines()) == 1, err
    assert attempted == []


# ---- methods.check: the constructor's checks, without building the method -----------------

TASKS = ["Mass", "Nodule", "Effusion"]
CASES = [
    {},
    {"num_tasks": 0},
    {"task_names": ["Mass", "Mass", "Effusion"]},
    {"unknown": 1},
    {"level": "nowhere"},
    {"ema": 2.0},
    {"update_every": 0},
    {"update_every": 3},
    {"weights": [1.0, 2.0]},
    {"weights": {"Tumour": 1.0}},
    {"preference": [1.0, 2.0, 3.0, 4.0]},
    {"preference": {"Mass": 2.0}},
]


def outcome(call, name: str, case: dict) -> str:
    case = dict(case)
    num_tasks = case.pop("num_tasks", len(TASKS))
    task_names = case.pop("task_names", TASKS)
    try:
        call(name, num_tasks, task_names, **case)
    except ValueError as exc:
        return str(exc)
    return "ok"


@pytest.mark.parametrize("name", methods.available())
def test_check_raises_what_create_raises(name: str, tmp_path: Path):
    accuracies = tmp_path / "acc.json"
    accuracies.write_text("[0.9, 0.8]")  # two accuracies for three tasks
    cases = [*CASES, {"initial_weights": str(accuracies)}]
    for case in cases:
        assert outcome(methods.check, name, case) == outcome(methods.create, name, case), case
