"""The Python API as a notebook uses it: `harness.run` on a tiny experiment (a dict with
overrides, on the session's Ray), `harness.load` of its run directory and of an older run
directory, the tables' run columns, the override errors, and a light `import harness`."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pandas as pd
import pytest

import harness
from harness.config import ConfigError
from tests.conftest import REPO, tiny_config, write_config
from tests.test_reports import make_run

pytestmark = pytest.mark.timeout(300)


def test_run_returns_the_results_and_load_reads_them_back(ray_session, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no trial failed
        results = harness.run(
            tiny_config(tmp_path, name="api"),
            overrides={"grid.methods": ["equal"], "train.epochs": 1, "data.image_size": 28},
        )
    assert isinstance(results, harness.RunResults)
    assert results.run_dir == tmp_path / "runs" / "api"
    assert results.report_path == results.run_dir / "report.html"
    assert results.partial is None
    manifest = json.loads((results.run_dir / "manifest.json").read_text())
    assert manifest["overrides"] == ["grid.methods=[equal]", "train.epochs=1", "data.image_size=28"]
    trials = results.trials
    assert list(trials["trial_id"]) == ["equal-simple_cnn-s0"]
    assert list(trials["status"]) == ["completed"] and trials["test_mean_auroc"].notna().all()
    assert len(results.epochs) == (2 + 1) * 14  # epoch 1 train and val, then test; 14 tasks

    loaded = harness.load(results.run_dir)
    pd.testing.assert_frame_equal(loaded.trials, results.trials)
    pd.testing.assert_frame_equal(loaded.epochs, results.epochs)
    assert loaded.report_path == results.report_path and loaded.run_dir == results.run_dir

    # every row of the tables says which run, data set and input size it is of, so that the
    # tables of several runs read together stay apart
    for name in ("trials", "epochs"):
        table = pd.read_parquet(results.run_dir / "results" / f"{name}.parquet")
        assert list(table.columns[:3]) == ["run", "dataset", "image_size"]
        assert set(table["run"]) == {"api"} and set(table["dataset"]) == {"synthetic"}
        assert set(table["image_size"]) == {28}
        assert set(getattr(results, name)["image_size"]) == {28}


def test_load_fills_the_run_columns_of_an_older_run(tmp_path):
    """A run directory written before ``run``, ``dataset`` and ``image_size`` existed."""
    run_dir = make_run(tmp_path / "old", name="old-run", dataset="nih")
    assert "run" not in pd.read_parquet(run_dir / "results" / "trials.parquet").columns
    results = harness.load(run_dir)
    for frame in (results.trials, results.epochs):
        assert set(frame["run"]) == {"old-run"} and set(frame["dataset"]) == {"nih"}
        assert set(frame["image_size"]) == {64}
    assert results.report_path is None  # never written: the report is one command away
    import reports

    assert reports.write_report(run_dir).html == harness.load(run_dir).report_path


def test_overrides_are_dotted_keys_set_before_validation(tmp_path):
    from harness.api import experiment_config

    path = write_config(tmp_path, tiny_config(tmp_path))
    overrides = {"train.epochs": 1, "grid.seeds": [0, 1], "train.lr": 1e-3, "name": "x"}
    for config in (path, str(path), tiny_config(tmp_path)):
        cfg = experiment_config(config, overrides)
        assert (cfg.train.epochs, cfg.grid.seeds, cfg.train.lr, cfg.name) == (1, [0, 1], 1e-3, "x")
    assert experiment_config(tiny_config(tmp_path)).train.epochs == 2  # the dict is unchanged
    # a value is taken as given, not as YAML text read back: these strings stay strings
    for name in ("1e3", "1.5", "null", "007", "yes"):
        for config in (path, tiny_config(tmp_path)):
            assert experiment_config(config, {"name": name}).name == name


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            {"train.epochs": 0},
            "override train.epochs=0: train.epochs: must be greater than or equal to 1",
        ),
        ({"train.epochz": 1}, "override train.epochz=1: train.epochz: unknown key"),
        ({"name.x": 1}, "override name.x=1: name is 'tiny', not a mapping"),
        ({"train.lr": object()}, "overrides: train.lr: a object value; give plain data"),
        ({"train.epochs=1": 1}, "overrides: 'train.epochs=1' is not a dotted key"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(tmp_path, overrides, line):
    with pytest.raises(ConfigError) as caught:
        harness.run(tiny_config(tmp_path), overrides=overrides)
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith(line)


def test_import_harness_stays_light():
    code = (
        "import sys, harness; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'torch', 'ray', 'pandas', 'pyarrow', 'pydantic', 'reports'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"
