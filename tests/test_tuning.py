"""Equal tuning budgets (``tuning``): the quasi-random points against scipy's Halton sequence
directly, the search-space mapping by hand, one-line errors, selection from validation only,
and the protocol end to end through the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import qmc

from harness.cli import main
from harness.config import ConfigError, parse_config
from harness.launch import select_finals, trial_identities
from harness.results import TrialRecord
from harness.tuning import draw_points, map_unit, select
from reports import summary as sm
from reports.load import load_run, load_runs
from tests.conftest import tiny_config, write_config

SPACE = {
    "train.lr": {"log_uniform": [1.0e-4, 1.0e-2]},
    "train.weight_decay": {"choice": [0.0, 1.0e-4]},
}


def tuned(tmp_path, **tuning) -> dict:
    cfg = tiny_config(tmp_path, grid={"seeds": [0, 1, 2]}, train={"epochs": 1})
    cfg["tuning"] = {"budget": 3, "space": SPACE, **tuning}
    return cfg


def test_map_unit_by_hand():
    assert map_unit({"uniform": [2.0, 4.0]}, 0.25) == 2.5
    # log-uniform [1e-4, 1e-2] at u = 0.5: exp(log 1e-4 + 0.5 (log 1e-2 - log 1e-4)) = 1e-3
    assert map_unit({"log_uniform": [1e-4, 1e-2]}, 0.5) == pytest.approx(1e-3)
    assert [map_unit({"choice": ["a", "b", "c"]}, u) for u in (0.0, 0.34, 0.99)] == ["a", "b", "c"]


def test_points_are_scipy_halton_and_shared_across_methods():
    own_a = {"method_params.uncertainty.lr": {"uniform": [0.0, 1.0]}}
    own_b = {"method_params.cagrad.c": {"uniform": [0.0, 1.0]}}
    a = draw_points(SPACE, own_a, 4, seed=1000)
    b = draw_points(SPACE, own_b, 4, seed=1000)
    shared = [{k: p[k] for k in SPACE} for p in a]
    assert shared == [{k: p[k] for k in SPACE} for p in b]  # the same points for every method
    assert a == draw_points(SPACE, own_a, 4, seed=1000)  # deterministic for a study's seed
    assert shared != [{k: p[k] for k in SPACE} for p in draw_points(SPACE, {}, 4, seed=1001)]
    u = qmc.Halton(d=2, scramble=True, seed=np.random.default_rng(1000)).random(4)
    for i, point in enumerate(a):
        lr = math.exp(math.log(1e-4) + u[i, 0] * (math.log(1e-2) - math.log(1e-4)))
        assert point["train.lr"] == pytest.approx(lr, rel=1e-12)
        assert point["train.weight_decay"] == [0.0, 1.0e-4][int(u[i, 1] * 2)]
    # a method's own keys: uniform [0, 1] is the sequence itself
    assert 0.0 <= a[0]["method_params.uncertainty.lr"] < 1.0
    assert [p["method_params.uncertainty.lr"] for p in a] != [
        p["method_params.cagrad.c"] for p in b
    ]


@pytest.mark.parametrize(
    ("tuning", "line"),
    [
        ({"budget": 0}, "tuning.budget: must be greater than or equal to 1, not 0"),
        ({"space": {}}, "tuning: space and method_space are both empty; nothing to tune"),
        (
            {"space": {"train.lr": {"uniform": [0.2, 0.1]}}},
            "tuning.space.train.lr: uniform: low 0.2 must be below high 0.1",
        ),
        (
            {"space": {"train.lr": {"log_uniform": [0, 0.1]}}},
            "tuning.space.train.lr: log_uniform: low 0 must be above 0",
        ),
        (
            {"space": {"train.lr": {"uniform": [0.1, 20]}}},
            "tuning.space.train.lr: must be less than or equal to 10, not 20",
        ),
        (
            {"space": {"train.lrx": {"uniform": [0.1, 0.2]}}},
            "tuning.space.train.lrx: train has no key 'lrx' (did you mean 'lr'?)",
        ),
        (
            {"space": {}, "method_space": {"uncertainty": {"lr": {"uniform": [0.1, 0.2]}}}},
            "tuning.method_space.uncertainty: 'uncertainty' is not among grid.methods "
            "(equal, deepchest)",
        ),
        (
            {"seed": 1},
            "tuning.seed: study seed 1 is final seed 1 of grid.seeds; the final seeds must "
            "stay out of tuning",
        ),
        (
            {"space": {"train.lr": {"normal": [0.1, 0.2]}}},
            "tuning.space.train.lr: must be one of {choice: [...]}, {uniform: [a, b]}, "
            "{log_uniform: [a, b]}, {dirichlet: alpha}",
        ),
    ],
)
def test_bad_tuning_sections_are_one_line_each(tmp_path, tuning, line):
    with pytest.raises(ConfigError) as exc:
        parse_config(tuned(tmp_path, **tuning))
    assert exc.value.lines == [line]


def test_tuning_needs_three_final_seeds_and_no_sweep_of_a_tuned_key(tmp_path):
    raw = tuned(tmp_path)
    raw["grid"]["seeds"] = [0, 1]
    with pytest.raises(ConfigError, match=r"^grid.seeds: tuning needs at least 3 final seeds"):
        parse_config(raw)
    raw = tuned(tmp_path)
    raw["grid"]["sweep"] = {"train.lr": [1e-3, 1e-2]}
    with pytest.raises(ConfigError, match="train.lr is also in grid.sweep; tune it or sweep it"):
        parse_config(raw)


def test_selection_reads_validation_only(tmp_path):
    """The tuning trial best on validation is chosen although another is far better on test:
    this fails as soon as a test metric enters selection."""
    cfg = parse_config(tuned(tmp_path, studies=1))
    records = {}
    for identity in trial_identities(cfg):
        record = TrialRecord(tmp_path, identity)
        records[identity["trial_id"]] = record
        if identity["phase"] == "tuning":
            i = int(identity["trial_id"].rsplit("-t", 1)[1])
            val, test = [(0.60, 0.99), (0.70, 0.50), (0.65, 0.98)][i]
            record.set(
                status="completed",
                summary={"val_mean_auroc": val, "test_mean_auroc": test, "test_mean_auprc": test},
            )
    assert select([0.6, None, 0.7, float("nan"), 0.7]) == 2
    ready = select_finals(cfg, records)
    assert len(ready) == 2 * 3  # 2 methods x 3 final seeds
    for trial_id in ready:
        identity = records[trial_id].data["identity"]
        assert identity["selected"].endswith("-study0-t1"), identity
        chosen = records[identity["selected"]].data["identity"]
        assert identity["train.lr"] == chosen["train.lr"]


def test_time_to_result_is_the_median_over_studies_of_each_studys_fastest_trial():
    """AlgoPerf's external-tuning score by hand, target 0.70 (val only):
    A: study 0 fastest of {20 s, 15 s} = 15; study 1 none = inf; study 2 = 30 -> median 30.
    B: study 0 = 10; studies 1 and 2 none -> median inf (half or more never reached it).
    C: study 0 reached only at an unknown time -> NaN there and in the median.
    A test split at 1.0 must not make a trial reach the target."""
    reach = {  # trial: (method, study, [(epoch, val auroc, train time s)])
        "a1": ("A", 0, [(1, 0.60, 10.0), (2, 0.71, 20.0)]),
        "a2": ("A", 0, [(1, 0.70, 15.0), (2, 0.72, 30.0)]),
        "a3": ("A", 1, [(1, 0.50, 10.0), (2, 0.69, 20.0)]),
        "a4": ("A", 1, []),  # failed before its first epoch
        "a5": ("A", 2, [(1, 0.65, 15.0), (2, 0.75, 30.0)]),
        "b1": ("B", 0, [(1, 0.80, 10.0)]),
        "b2": ("B", 1, [(1, 0.60, 10.0)]),
        "b3": ("B", 2, [(1, 0.60, 10.0)]),
        "c1": ("C", 0, [(1, 0.80, math.nan)]),
        "c2": ("C", 0, [(1, 0.60, 10.0)]),
        "c3": ("C", 1, [(1, 0.80, 10.0)]),
    }
    trials = pd.DataFrame(
        [
            {"trial_id": t, "method": m, "study": j, "workload": "w", "seed": 1000 + j}
            | {"status": "completed" if curve else "failed"}
            for t, (m, j, curve) in reach.items()
        ]
    )
    epochs = pd.DataFrame(
        [
            {"trial_id": t, "epoch": e, "split": split, "auroc": auroc, "train_time_s": time}
            for t, (_, _, curve) in reach.items()
            for e, v, time in curve
            for split, auroc in (("val", v - 0.01), ("val", v + 0.01), ("test", 1.0))
        ]
    )
    goal = sm.Targets(fraction=1.0, by_workload={"w": 0.70})
    table = sm.study_time_to_result(trials, epochs, goal).set_index("method")
    assert table.loc["A", "per_study"] == [15.0, math.inf, 30.0]
    assert table.loc["A", "time_s"] == 30.0
    assert table.loc["B", "per_study"] == [10.0, math.inf, math.inf]
    assert math.isinf(table.loc["B", "time_s"])
    # C: study 0's only trial to reach it has no recorded time: unknown (NaN), not "never"
    assert math.isnan(table.loc["C", "per_study"][0]) and table.loc["C", "per_study"][1] == 10.0
    assert math.isnan(table.loc["C", "time_s"])


def test_tuning_end_to_end(ray_session, tmp_path):
    """k = 3 for 2 methods, 2 studies, 3 final seeds: 2 x 2 x (3 + 3) = 24 trials."""
    cfg = tuned(tmp_path, studies=2)
    cfg["data"]["num_samples"] = 120
    cfg["train"]["batch_size"] = 16
    assert parse_config(cfg).trial_count == 24
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert len(trials) == 24 and set(trials.status) == {"completed"}
    assert (trials.phase == "tuning").sum() == 12 and set(trials.study) == {0, 1}
    finals = trials[trials.phase == "final"]
    assert set(finals.seed) == {0, 1, 2} and set(trials[trials.phase == "tuning"].seed) == {
        1000,
        1001,
    }
    for _, final in finals.iterrows():  # the chosen point is the study's best on validation
        study = trials[
            (trials.phase == "tuning")
            & (trials.method == final.method)
            & (trials.study == final.study)
        ]
        best = study.loc[study.val_mean_auroc.idxmax()]
        assert final.selected == best.trial_id
        assert final["train.lr"] == best["train.lr"]
    loaded = load_run(run_dir)
    assert set(loaded.trials.phase) == {"final"} and len(loaded.tuning_trials) == 12
    compared = load_runs([run_dir])  # each study is its own workload, in both tables
    studies = {"simple_cnn · study 1", "simple_cnn · study 2"}
    assert set(compared.trials.workload) == set(compared.epochs.workload) == studies
    delta = sm.delta_m_table(compared.trials, compared.epochs, "equal")
    assert sorted(delta.workload) == sorted(studies) and set(delta.n) == {3}
    html = (run_dir / "report.html").read_text()
    assert "test metrics are never read during selection" in html
    assert "simple_cnn · study 2" in html  # each study compared on its own
    assert 'id="fig-tuning-0"' in html  # the strip of every tuning trial's val score
    assert " CPU-h</td>" in html  # what each result cost, in device-hours
    assert "Time to result over the tuning budget" in html  # AlgoPerf: per-study fastest
    markdown = (run_dir / "summary.md").read_text()  # the protocol also where the summary is
    assert "## Tuning" in markdown and "test metrics are never read during selection" in markdown
    assert "| equal | 1 | " in markdown and "| equal | 2 | " in markdown  # a row per study


def _records_on_disk(tmp_path, cfg, outcome):
    """Every trial's record written as a run would leave it; ``outcome(identity)`` gives
    (status, val AUROC) for the tuning trials."""
    trials_dir = tmp_path / "run" / "trials"
    trials_dir.mkdir(parents=True)
    records = {}
    for identity in trial_identities(cfg):
        record = TrialRecord(trials_dir, identity)
        if identity["phase"] == "tuning":
            status, val = outcome(identity)
            summary = {"val_mean_auroc": val, "status": status} if status != "failed" else None
            record.set(status=status, summary=summary)
        record.save()
        records[identity["trial_id"]] = record
    return trials_dir.parent, records


def test_resume_keeps_a_study_decided_and_a_study_without_a_score_fails(tmp_path):
    """After selection, a failed tuning trial of that study is not run again by --resume (the
    choice is kept); a study whose tuning trials all failed or diverged trains nothing."""
    from harness.launch import _load_records

    cfg = parse_config(tuned(tmp_path, studies=1))

    def outcome(identity):
        point = int(identity["trial_id"].rsplit("-t", 1)[1])
        if identity["method"] == "deepchest":  # nothing to choose from
            return ("failed", None) if point else ("diverged", 0.9)
        return [("completed", 0.6), ("failed", None), ("completed", 0.7)][point]

    run_dir, records = _records_on_disk(tmp_path, cfg, outcome)
    ready = select_finals(cfg, records)
    assert sorted(ready) == [f"equal-simple_cnn-study0-s{s}" for s in (0, 1, 2)]
    final = records["deepchest-simple_cnn-study0-s0"]
    assert final.status == "failed" and final.data["error"].startswith(
        "tuning: no tuning trial of its study completed with a val_mean_auroc"
    )
    reloaded = _load_records(run_dir, cfg)  # what --resume does
    assert reloaded["equal-simple_cnn-study0-t1"].status == "failed"  # kept: study decided
    assert reloaded["equal-simple_cnn-study0-s0"].data["identity"]["selected"].endswith("-t2")
    assert reloaded["deepchest-simple_cnn-study0-t1"].status == "pending"  # undecided: again
    assert reloaded["deepchest-simple_cnn-study0-s0"].status == "pending"


def test_swept_and_tuned_values_are_single_values_and_shared_keys_are_train_or_data(tmp_path):
    raw = tiny_config(tmp_path)
    raw["grid"]["sweep"] = {"data.tasks": [["Atelectasis"], ["Effusion"]]}
    with pytest.raises(
        ConfigError, match=r"grid.sweep.data.tasks\[0\]: .*must be a number, a string"
    ):
        parse_config(raw)
    raw = tuned(tmp_path, space={"method_params.deepchest.increase": {"uniform": [1.0, 1.2]}})
    with pytest.raises(ConfigError, match="shared keys are train.<key> or data.<key>"):
        parse_config(raw)


def test_dirichlet_weights_are_gamma_quantiles_of_the_halton_points():
    """Xin et al.'s static-weight sweep: fixed weighting's weights drawn quasi-randomly from
    T x Dirichlet(alpha); written out with scipy directly."""
    import zlib

    from scipy.stats import gamma

    key = "method_params.fixed.weights"
    points = draw_points({}, {key: {"dirichlet": 0.5}}, 4, seed=1000, num_tasks=3)
    u = qmc.Halton(
        d=3, scramble=True, seed=np.random.default_rng([1000, zlib.crc32(key.encode())])
    ).random(4)
    for i, point in enumerate(points):
        g = gamma.ppf(u[i], 0.5)
        assert point[key] == pytest.approx(list(3 * g / g.sum()), rel=1e-12)
        assert sum(point[key]) == pytest.approx(3.0) and min(point[key]) > 0


def test_dirichlet_is_for_fixed_weights_only(tmp_path):
    raw = tuned(tmp_path, space={}, method_space={"deepchest": {"increase": {"dirichlet": 1.0}}})
    with pytest.raises(ConfigError, match="dirichlet draws fixed weighting's weights only"):
        parse_config(raw)
    raw = tuned(tmp_path, method_space={"fixed": {"weights": {"dirichlet": 0}}})
    raw["grid"]["methods"] = ["equal", "fixed"]
    with pytest.raises(ConfigError, match="dirichlet: alpha must be a finite number above 0"):
        parse_config(raw)


@pytest.mark.slow  # test_tuning_end_to_end runs the tuning path by default: `pytest -m slow`
def test_a_static_weight_sweep_end_to_end(ray_session, tmp_path):
    """fixed weighting tuned over Dirichlet weights beside equal tuned over lr: the finals train
    the weights of the study's best tuning trial, and the report names them."""
    cfg = tiny_config(
        tmp_path,
        data={"num_samples": 120, "tasks": ["Atelectasis", "Effusion", "Hernia"]},
        grid={"methods": ["equal", "fixed"], "seeds": [0, 1, 2]},
        train={"epochs": 1, "batch_size": 16},
    )
    cfg["tuning"] = {
        "budget": 2,
        "space": {"train.lr": {"log_uniform": [1.0e-4, 1.0e-2]}},
        "method_space": {"fixed": {"weights": {"dirichlet": 1.0}}},
    }
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet").set_index("trial_id")
    fixed = trials[trials.method == "fixed"]
    for trial_id, row in fixed[fixed.phase == "final"].iterrows():
        chosen = trials.loc[row.selected]
        assert list(row["method_params.fixed.weights"]) == list(
            chosen["method_params.fixed.weights"]
        ), trial_id
        assert sum(row["method_params.fixed.weights"]) == pytest.approx(3.0)
    html = (run_dir / "report.html").read_text()
    assert "method_params.fixed.weights=[" in html
