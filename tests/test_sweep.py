"""``grid.sweep``: any train/data key or a method's hyperparameter crossed with the grid; each
swept value is an identity key of its trials, a column of both tables, and an arm of the
report that is never pooled with another."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.cli import main
from harness.config import ConfigError, parse_config
from harness.launch import trial_identities, trial_spec
from reports.load import load_run
from tests.conftest import tiny_config, write_config


def with_sweep(tmp_path, sweep: dict, **sections) -> dict:
    cfg = tiny_config(tmp_path, **sections)
    cfg["grid"] = {**cfg["grid"], "sweep": sweep}
    return cfg


@pytest.mark.parametrize(
    ("sweep", "line"),
    [
        (
            {"train.lrr": [1e-3]},
            "grid.sweep.train.lrr: train has no key 'lrr' (did you mean 'lr'?)",
        ),
        (
            {"train.lr": [1e-3, -1.0]},
            "grid.sweep.train.lr[1]: must be greater than 0, not -1.0",
        ),
        (
            {"train.lr": [1e-4, 0.0001]},
            "grid.sweep.train.lr[1]: 0.0001 repeats [0] (both name the trials train.lr=0.0001)",
        ),
        (
            {"train.lr": []},
            "grid.sweep.train.lr: must have at least 1 item, not 0",
        ),
        ({"train.lr": [float("nan")]}, "grid.sweep.train.lr[0]: must be a finite number, not nan"),
        (
            {"data.prepared": ["/x"]},
            "grid.sweep.data.prepared: the data source is one per run (make one run per data set)",
        ),
        (
            {"method_params.uncertainty.lr": [1e-3]},
            "grid.sweep.method_params.uncertainty.lr: 'uncertainty' is not among grid.methods "
            "(equal, deepchest)",
        ),
        (
            {"method_params.equal.x": [1]},
            "grid.sweep.method_params.equal.x: equal has no hyperparameter 'x' (it has: none)",
        ),
        (
            {"lr": [1]},
            "grid.sweep.lr: sweep keys are train.<key>, data.<key> or method_params.<method>.<key>",
        ),
    ],
)
def test_bad_sweeps_are_one_line_each(tmp_path, sweep, line):
    with pytest.raises(ConfigError) as exc:
        parse_config(with_sweep(tmp_path, sweep))
    assert exc.value.lines == [line]


def test_sweeps_cross_the_grid_and_reach_the_trials(tmp_path):
    cfg = parse_config(
        with_sweep(
            tmp_path,
            {"train.lr": [1e-3, 3e-3], "method_params.deepchest.increase": [1.1, 1.3]},
            grid={"seeds": [0, 1]},
        )
    )
    ids = [i["trial_id"] for i in trial_identities(cfg)]
    # equal: 2 lr x 2 seeds; deepchest: 2 lr x 2 increase x 2 seeds
    assert len(ids) == cfg.trial_count == 4 + 8 == len(set(ids))
    assert ids[:2] == ["equal-simple_cnn-s0-train.lr=0.001", "equal-simple_cnn-s1-train.lr=0.001"]
    assert "deepchest-simple_cnn-s1-train.lr=0.003-method_params.deepchest.increase=1.3" in ids
    for identity in trial_identities(cfg):
        spec = trial_spec(cfg, identity, gpus=0)
        assert spec["train"]["lr"] == identity["train.lr"]
        if identity["method"] == "deepchest":
            increase = identity["method_params.deepchest.increase"]
            assert spec["method_params"]["increase"] == increase
        else:
            assert "method_params.deepchest.increase" not in identity


def test_a_swept_run_keeps_every_setting_apart(ray_session, tmp_path, capsys):
    cfg = with_sweep(tmp_path, {"train.lr": [1e-3, 1e-2]}, train={"epochs": 1})
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet")
    # which run, data set and image size first (tables of several runs concatenate), then the
    # trial's identity with its swept setting
    assert list(trials.columns[:8]) == [
        "run", "dataset", "image_size", "trial_id", "method", "backbone", "seed", "train.lr"
    ]  # fmt: skip
    assert sorted(trials["train.lr"]) == [1e-3, 1e-3, 1e-2, 1e-2]
    assert set(trials.status) == {"completed"}
    assert set(epochs["train.lr"]) == {1e-3, 1e-2}
    # the same method and seed at another lr trains differently
    equal = trials[trials.method == "equal"].set_index("train.lr")
    assert equal.loc[1e-3, "val_mean_auroc"] != equal.loc[1e-2, "val_mean_auroc"]
    loaded = load_run(run_dir)
    assert sorted(set(loaded.trials.method)) == [
        "deepchest (train.lr=0.001)",
        "deepchest (train.lr=0.01)",
        "equal (train.lr=0.001)",
        "equal (train.lr=0.01)",
    ]
    assert set(loaded.trials.weighting) == {"equal", "deepchest"}
    assert set(loaded.epochs.method) == set(loaded.trials.method)
    html = (run_dir / "report.html").read_text()
    assert "equal (train.lr=0.01)" in html
