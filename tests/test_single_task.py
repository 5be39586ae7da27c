"""``grid.single_task``: one network per task as the single-task reference (``stl``), its cost
in trials, its T trials shown as one method in the report, and Δm% against it."""

from __future__ import annotations

import pandas as pd
import pytest

from harness.cli import main
from harness.config import ConfigError, parse_config
from harness.launch import trial_identities, trial_spec
from reports.load import load_run
from tests.conftest import tiny_config, write_config

TASKS = ["Atelectasis", "Effusion", "Pleural_Thickening"]


def stl_config(tmp_path, **grid) -> dict:
    return tiny_config(
        tmp_path,
        data={"tasks": TASKS},
        grid={"methods": ["equal"], "seeds": [0, 1], "single_task": True, **grid},
        train={"epochs": 1},
    )


def test_single_task_trials_one_per_task_backbone_and_seed(tmp_path):
    cfg = parse_config(stl_config(tmp_path))
    identities = trial_identities(cfg)
    assert cfg.trial_count == len(identities) == 2 + 3 * 2  # equal's 2, then T x seeds
    stl = [i for i in identities if i["method"] == "stl"]
    assert [i["trial_id"] for i in stl[:2]] == [
        "stl-simple_cnn-s0-task=Atelectasis",
        "stl-simple_cnn-s1-task=Atelectasis",
    ]
    for identity in stl:
        spec = trial_spec(cfg, identity, gpus=0)
        assert spec["data"]["tasks"] == [identity["single_task"]]
        assert spec["weighting_method"] == "equal" and spec["method_params"] == {}


def test_single_task_refusals(tmp_path):
    raw = stl_config(tmp_path, sweep={"train.lr": [1e-3, 1e-2]})
    with pytest.raises(ConfigError, match=r"^grid.single_task: not combined with grid.sweep"):
        parse_config(raw)
    raw = stl_config(tmp_path, methods=["equal", "stl"])
    raw["method_params"] = {"stl": {"method": "equal"}}
    with pytest.raises(ConfigError, match="'stl' names the single-task references"):
        parse_config(raw)


def test_single_task_references_run_and_are_one_method_in_the_report(ray_session, tmp_path):
    assert main(["run", str(write_config(tmp_path, stl_config(tmp_path)))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    members = trials[trials.method == "stl"]
    assert sorted(members.single_task) == sorted(TASKS * 2)
    assert set(trials.status) == {"completed"}
    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet")
    for _, member in members.iterrows():  # each network trained and tested on its task alone
        rows = epochs[epochs.trial_id == member.trial_id]
        assert set(rows.task) == {member.single_task}

    loaded = load_run(run_dir)
    stl = loaded.trials[loaded.trials.method == "stl"].set_index("seed")
    assert sorted(stl.index) == [0, 1] and set(stl.n_networks) == {3}
    for seed in (0, 1):
        mine = members[members.seed == seed]
        assert stl.loc[seed, "test_mean_auroc"] == pytest.approx(mine.test_mean_auroc.mean())
        assert stl.loc[seed, "wall_time_s"] == pytest.approx(mine.wall_time_s.sum())
        test = loaded.epochs[
            (loaded.epochs.trial_id == stl.loc[seed, "trial_id"]) & (loaded.epochs.split == "test")
        ]
        assert sorted(test.task) == sorted(TASKS)
    html = (run_dir / "report.html").read_text()
    assert "Δm% against the single-task references" in html
