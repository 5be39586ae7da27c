"""Tests for ``reports``: fake run directories built with pandas, no torch or ray."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the project is not installed in the venv
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import reports  # noqa: E402
from reports import summary as sm  # noqa: E402
from reports.figures import task_heatmap  # noqa: E402

TASKS = ("Atelectasis", "Cardiomegaly", "Effusion")
TASK_OFFSETS = (-0.05, 0.0, 0.05)  # per-task AUROC = trial mean + offset, so they average back
HOSTILE_METHOD = "<script>alert(1)</script>"
HOSTILE_BACKBONE = 'res"net<b>18</b>'
HOSTILE_TASK = "<img src=x onerror=alert(2)>"
HOSTILE_NAME = "<h1>run & co</h1>"
HOSTILE_ERROR = (
    "Traceback (most recent call last):\n  ...\nValueError: bad <script>alert(3)</script>"
)


def default_auroc(method_index: int, seed: int) -> float:
    return 0.80 - 0.05 * method_index + 0.02 * seed


def make_run(
    root: Path,
    *,
    name: str = "fake-run",
    methods: tuple[str, ...] = ("deepchest", "equal"),
    seeds: tuple[int, ...] = (0, 1),
    backbones: tuple[str, ...] = ("resnet18",),
    tasks: tuple[str, ...] = TASKS,
    n_epochs: int = 2,
    outcomes: dict[tuple[str, int], tuple[str, str | None]] | None = None,
    test_auroc: dict[tuple[str, int], float] | None = None,
    nan_tasks: dict[str, tuple[str, ...]] | None = None,
    dataset: str = "synthetic",
    values: dict[tuple[str, int], dict[str, float]] | None = None,
) -> Path:
    """Write a realistic run directory: config, manifest, trials and epochs tables.

    ``outcomes`` maps (method, seed) -> (status, error) for non-completed trials; a failed
    trial has NaN metrics and one epoch of train/val rows; a diverged trial keeps its metrics
    (so that tests can check they are left out of the means). ``nan_tasks`` maps a method to
    tasks whose test AUROC is NaN (a single class in the test split). ``values`` maps (method,
    seed) -> trial columns to override (say ``images_per_second``).
    """
    values = values or {}
    outcomes = outcomes or {}
    test_auroc = test_auroc or {}
    nan_tasks = nan_tasks or {}
    trial_rows, epoch_rows, manifest_trials = [], [], {}
    for mi, method in enumerate(methods):
        for backbone in backbones:
            for seed in seeds:
                trial_id = f"{method}-{backbone}-s{seed}"
                status, error = outcomes.get((method, seed), ("completed", None))
                auroc = test_auroc.get((method, seed), default_auroc(mi, seed))
                failed = status == "failed"
                epochs_done = 1 if failed else n_epochs
                best = None if failed else n_epochs
                nan = float("nan")
                trial_rows.append(
                    {
                        "trial_id": trial_id,
                        "method": method,
                        "backbone": backbone,
                        "seed": seed,
                        "status": status,
                        "error": error,
                        "epochs_completed": epochs_done,
                        "best_epoch": best,
                        "val_mean_auroc": nan if failed else auroc - 0.01,
                        "test_mean_auroc": nan if failed else auroc,
                        "test_mean_accuracy": nan if failed else 0.9 + 0.01 * seed - 0.02 * mi,
                        "test_mean_auprc": nan if failed else auroc - 0.4,
                        "test_macro_f1": nan if failed else 0.3 + 0.01 * mi,
                        "test_macro_f1_tuned": nan if failed else 0.45 + 0.01 * seed,
                        "test_exact_match": nan if failed else 0.5 + 0.01 * seed,
                        "test_trivial_exact_match": nan if failed else 0.55,
                        "n_train": 700,
                        "n_val": 150,
                        "n_test": 150,
                        "images_per_second": nan if failed else 1000.0 + 100 * mi + 10 * seed,
                        "step_time_ms": nan if failed else 50.0 + mi + seed,
                        "data_time_ms": nan if failed else 5.0,
                        "forward_time_ms": nan if failed else 20.0,
                        "backward_time_ms": nan if failed else 20.0,
                        "optimizer_time_ms": nan if failed else 5.0,
                        "peak_memory_mb": nan if failed else 2000.0 + 500 * mi + 2 * seed,
                        "wall_time_s": nan if failed else 120.0 + 30 * seed,
                        "device": "cuda:NVIDIA H100",
                        **values.get((method, seed), {}),
                    }
                )
                manifest_trials[trial_id] = {"status": status, "error": error}
                for epoch in range(1, epochs_done + 1):
                    splits = ["train", "val"] + (["test"] if epoch == best else [])
                    for split in splits:
                        for ti, task in enumerate(tasks):
                            value = auroc + TASK_OFFSETS[ti % len(TASK_OFFSETS)]
                            if split == "test" and task in nan_tasks.get(method, ()):
                                value = float("nan")
                            epoch_rows.append(
                                {
                                    "trial_id": trial_id,
                                    "method": method,
                                    "backbone": backbone,
                                    "seed": seed,
                                    "epoch": epoch,
                                    "split": split,
                                    "task": task,
                                    "loss": 0.5 / epoch + 0.01 * mi * (ti - 1),
                                    "accuracy": 0.85,
                                    "auroc": value - 0.02 * (n_epochs - epoch),
                                    "auprc": value - 0.4,
                                    "f1": 0.3,
                                    "threshold": 0.2 if split != "train" else float("nan"),
                                    "f1_tuned": 0.45 if split != "train" else float("nan"),
                                    "weight": 1.0 + ti,
                                    "weight_normalized": (1.0 + ti) / 6.0,
                                    "n_labeled": 100,
                                    "n_positive": 10 * (ti + 1),
                                    "train_time_s": (60.0 + 10 * mi) * epoch,
                                }
                            )
    trials = pd.DataFrame(trial_rows)
    trials["best_epoch"] = pd.array(trials["best_epoch"].tolist(), dtype="Int64")
    epochs = pd.DataFrame(epoch_rows)
    (root / "results").mkdir(parents=True, exist_ok=True)
    trials.to_parquet(root / "results" / "trials.parquet", index=False)
    epochs.to_parquet(root / "results" / "epochs.parquet", index=False)
    manifest = {
        "name": name,
        "harness_version": "0.1.0",
        "started_at": "2025-01-31T12:00:00+00:00",
        "finished_at": "2025-01-31T13:02:05+00:00",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "versions": {"pandas": pd.__version__},
        "hardware": {"gpu": "NVIDIA H100"},
        "cluster_resources": {"GPU": 1.0},
        "tasks": list(tasks),
        "trials": manifest_trials,
    }
    (root / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    (root / "config.yaml").write_text(
        f"name: fake-run\ndata: {{dataset: {dataset}, image_size: 64}}\n"
        "train: {epochs: 2, batch_size: 64}\n"
    )
    return root


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse_tags(document: str) -> list[tuple[str, dict[str, str | None]]]:
    collector = _Collector()
    collector.feed(document)
    return collector.tags


# --- loading -----------------------------------------------------------------------------


def test_load_run_reads_all_files(run_dir: Path) -> None:
    results = reports.load_run(run_dir)
    assert isinstance(results, reports.RunResults)
    assert results.run_dir == run_dir
    assert len(results.trials) == 4
    assert len(results.epochs) == 4 * (2 * 2 + 1) * 3
    assert results.manifest["name"] == "fake-run"
    assert results.config["data"] == {"dataset": "synthetic", "image_size": 64}
    assert results.tasks == list(TASKS)


@pytest.mark.parametrize(
    "relative",
    ["manifest.json", "config.yaml", "results/trials.parquet", "results/epochs.parquet"],
)
def test_missing_file_names_it(run_dir: Path, relative: str) -> None:
    (run_dir / relative).unlink()
    with pytest.raises(reports.ReportError) as info:
        reports.load_run(run_dir)
    message = str(info.value)
    assert Path(relative).name in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("relative", "content"),
    [
        ("manifest.json", b"{not json"),
        ("manifest.json", b"[1, 2]"),
        ("config.yaml", b"a: [unclosed\n  b: {"),
        ("results/trials.parquet", b"this is not parquet"),
        ("results/epochs.parquet", b"PAR1 truncated"),
    ],
)
def test_corrupt_file_names_it(run_dir: Path, relative: str, content: bytes) -> None:
    (run_dir / relative).write_bytes(content)
    with pytest.raises(reports.ReportError) as info:
        reports.load_run(run_dir)
    message = str(info.value)
    assert Path(relative).name in message
    assert "\n" not in message


def test_missing_column_names_file_and_column(run_dir: Path) -> None:
    path = run_dir / "results" / "trials.parquet"
    pd.read_parquet(path).drop(columns=["test_mean_auroc"]).to_parquet(path)
    with pytest.raises(reports.ReportError, match=r"trials\.parquet.*test_mean_auroc"):
        reports.load_run(run_dir)


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(reports.ReportError, match="nope"):
        reports.load_run(tmp_path / "nope")


# --- the summary table ----------------------------------------------------------------------


def comparison(*run_dirs: Path) -> reports.Comparison:
    return reports.load_runs(list(run_dirs))


def test_summary_numbers_by_hand(run_dir: Path) -> None:
    results = comparison(run_dir)
    table = sm.summary_table(results.trials, results.epochs)
    assert list(table["method"]) == ["deepchest", "equal", sm.TRIVIAL]  # best AUROC first
    top = table.iloc[0]
    # deepchest seeds: 0.80 and 0.82 -> mean 0.81, sd 0.01*sqrt(2), t_{0.975,1} = 12.706
    half = 12.7062047 * math.sqrt(2 * 0.01**2) / math.sqrt(2)
    assert top["test_mean_auroc_mean"] == pytest.approx(0.81)
    assert top["test_mean_auroc_low"] == pytest.approx(0.81 - half)
    assert top["test_mean_auroc_high"] == pytest.approx(0.81 + half)
    assert top["test_mean_accuracy_mean"] == pytest.approx(0.905)
    assert top["test_mean_auprc_mean"] == pytest.approx(0.41)
    assert top["test_exact_match_mean"] == pytest.approx(0.505)
    assert top["test_macro_f1_mean"] == pytest.approx(0.30)
    assert top["images_per_second_mean"] == pytest.approx(1005.0)
    assert top["peak_memory_mb_mean"] == pytest.approx(2001.0)
    assert (top["rank"], top["n_trials"], top["n_completed"]) == (1, 2, 2)
    assert table.iloc[1]["test_mean_auroc_mean"] == pytest.approx(0.76)


def test_trivial_row_from_test_prevalence(run_dir: Path) -> None:
    results = comparison(run_dir)
    trivial = sm.summary_table(results.trials, results.epochs).iloc[-1]
    # prevalences 10/100, 20/100, 30/100
    assert trivial["method"] == sm.TRIVIAL
    assert trivial["test_mean_accuracy_mean"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert trivial["test_mean_auprc_mean"] == pytest.approx(0.2)
    assert trivial["test_mean_auroc_mean"] == 0.5
    assert trivial["test_macro_f1_mean"] == 0.0
    assert trivial["test_exact_match_mean"] == pytest.approx(0.55)
    assert math.isnan(trivial["images_per_second_mean"])


def metric(column: str) -> sm.Metric:
    return next(m for m in sm.SUMMARY_METRICS if m.column == column)


def test_best_cells_per_column_lower_memory_wins(run_dir: Path) -> None:
    results = comparison(run_dir)
    table = sm.summary_table(results.trials, results.epochs)
    memory, speed = metric("peak_memory_mb"), metric("images_per_second")
    # deepchest 2001 ± 12.7 MB against equal 2501 ± 12.7 MB: disjoint, lower wins
    assert sm.best_rows(table, memory) == {0}
    # equal 1105 ± 63.5 images/s against deepchest 1005 ± 63.5: the intervals overlap
    assert sm.best_rows(table, speed) == set()
    trivial_index = len(table) - 1
    accuracy = next(m for m in sm.SUMMARY_METRICS if m.column == "test_mean_accuracy")
    assert trivial_index not in sm.best_rows(table, accuracy)


def test_failed_and_diverged_left_out_of_means(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        seeds=(0, 1, 2),
        outcomes={
            ("deepchest", 1): ("failed", "RuntimeError: CUDA out of memory"),
            ("deepchest", 2): ("diverged", "loss became NaN at epoch 2"),
        },
        test_auroc={("deepchest", 0): 0.70, ("deepchest", 2): 0.99},
    )
    results = comparison(run)
    table = sm.summary_table(results.trials, results.epochs).set_index("method")
    row = table.loc["deepchest"]
    assert (row["n_trials"], row["n_completed"]) == (3, 1)
    assert row["test_mean_auroc_mean"] == pytest.approx(0.70)  # the diverged 0.99 is left out
    assert math.isnan(row["test_mean_auroc_low"])  # one completed seed: no interval
    assert list(table.index[:2]) == ["equal", "deepchest"]  # 0.77 > 0.70


def test_summary_rich_and_markdown(run_dir: Path) -> None:
    results = comparison(run_dir)
    table = sm.summary_table(results.trials, results.epochs)
    console = Console(record=True, width=250)
    console.print(reports.summary_rich(table, "[bold]my run[/bold]"))
    text = console.export_text()
    half = 12.7062047 * 0.01
    assert f"0.810 ± {half:.3f}" in text
    assert "[bold]my run[/bold]" in text  # shown literally, no markup
    assert "always negative" in text and "2/2" in text
    markdown = reports.summary_markdown(table, "run | one")
    assert markdown.startswith("# run \\| one")
    assert "**2,001 ± 13**\\*" in markdown  # best memory, distinguishable: marked
    assert "**0.810" not in markdown  # best AUROC, but within the runner-up's interval


def test_one_seed_shows_the_mean_alone(tmp_path: Path) -> None:
    run = make_run(tmp_path, seeds=(0,), methods=("[red]m[/red]",))
    results = comparison(run)
    console = Console(record=True, width=250)
    console.print(reports.summary_rich(sm.summary_table(results.trials, results.epochs), "x"))
    text = console.export_text()
    assert "0.800" in text and "0.800 ±" not in text
    assert "[red]m[/red]" in text


# --- paired comparisons ---------------------------------------------------------------------


def test_paired_comparisons_by_hand(tmp_path: Path) -> None:
    # differences to equal per seed: a: +0.02, +0.04, +0.03 ; b: -0.01, +0.01, -0.03
    auroc = {("equal", s): v for s, v in enumerate((0.70, 0.72, 0.71))}
    auroc |= {("a", s): v for s, v in enumerate((0.72, 0.76, 0.74))}
    auroc |= {("b", s): v for s, v in enumerate((0.69, 0.73, 0.68))}
    run = make_run(tmp_path, methods=("equal", "a", "b"), seeds=(0, 1, 2), test_auroc=auroc)
    results = comparison(run)
    table = sm.paired_comparisons(results.trials, "equal")
    rows = table[table["metric"] == "test_mean_auroc"].set_index("method")
    assert rows.loc["a", "mean_diff"] == pytest.approx(0.03)
    # sd of (0.02, 0.04, 0.03) = 0.01; t = 0.03 / (0.01 / sqrt 3) = 5.196, df 2 -> p = 0.0351
    assert rows.loc["a", "p_value"] == pytest.approx(0.035098, abs=1e-5)
    half = 4.3026527 * 0.01 / math.sqrt(3)
    assert rows.loc["a", "low"] == pytest.approx(0.03 - half)
    assert rows.loc["b", "mean_diff"] == pytest.approx(-0.01)
    # Holm over the two methods: the smaller p doubled, the larger kept (monotone)
    p_a, p_b = rows.loc["a", "p_value"], rows.loc["b", "p_value"]
    assert rows.loc["a", "p_holm"] == pytest.approx(min(1, 2 * p_a))
    assert rows.loc["b", "p_holm"] == pytest.approx(max(min(1, 2 * p_a), p_b))
    assert rows["enough"].all() and (rows["n"] == 3).all()


def test_delta_m_table_by_hand(tmp_path: Path) -> None:
    """make_run's test rows: AUROC = trial AUROC + task offset o_t, AUPRC = AUROC - 0.4, loss
    0.25 for equal and 0.25 + 0.01 (t - 1) for a. Per seed the loss terms cancel over the three
    findings, so Δm_s = 100/9 * sum_t (A_s - E_s) (1/(E_s + o_t) + 1/(E_s + o_t - 0.4))."""
    equal, mine = (0.70, 0.72, 0.71), (0.72, 0.76, 0.74)
    auroc = {("equal", s): v for s, v in enumerate(equal)}
    auroc |= {("a", s): v for s, v in enumerate(mine)}
    run = make_run(tmp_path, methods=("equal", "a"), seeds=(0, 1, 2), test_auroc=auroc)
    results = comparison(run)
    per_seed = [
        100 / 9 * sum((a - e) * (1 / (e + o) + 1 / (e + o - 0.4)) for o in TASK_OFFSETS)
        for e, a in zip(equal, mine, strict=True)
    ]
    table = sm.delta_m_table(results.trials, results.epochs, "equal").set_index("method")
    assert list(table.index) == ["a"] and table.loc["a", "n"] == 3
    assert table.loc["a", "mean"] == pytest.approx(sum(per_seed) / 3, rel=1e-9)
    sd = float(np.std(per_seed, ddof=1))
    half = 4.302652729749462 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert table.loc["a", "low"] == pytest.approx(sum(per_seed) / 3 - half, rel=1e-9)
    document = reports.write_report(run).html.read_text(encoding="utf-8")
    assert "Δm% against equal" in document and "Maninis et al., CVPR 2019" in document


def test_paired_pairs_only_completed_seeds(tmp_path: Path) -> None:
    run = make_run(tmp_path, seeds=(0, 1, 2), outcomes={("deepchest", 1): ("failed", "boom")})
    results = comparison(run)
    table = sm.paired_comparisons(results.trials, "equal")
    assert set(table["n"]) == {2}
    assert not table["enough"].any()


# --- per task, dynamics, time to target ------------------------------------------------------


def test_per_task_difference_and_nan_tasks(tmp_path: Path) -> None:
    run = make_run(tmp_path, nan_tasks={"deepchest": ("Cardiomegaly",)}, seeds=(0,))
    results = comparison(run)
    auroc = sm.per_task(results.trials, results.epochs, "auroc")
    cells = auroc.set_index(["method", "task"])
    assert math.isnan(cells.loc[("deepchest", "Cardiomegaly"), "mean"])
    assert cells.loc[("deepchest", "Effusion"), "mean"] == pytest.approx(0.85)
    diff = sm.per_task_difference(auroc, "equal").set_index("task")["diff"]
    assert diff["Atelectasis"] == pytest.approx(0.05)
    assert math.isnan(diff["Cardiomegaly"])
    loss = sm.per_task(results.trials, results.epochs, "loss")
    loss_diff = sm.per_task_difference(loss, "deepchest").set_index("task")["diff"]
    # loss = 0.25 + 0.01 * method_index * (task_index - 1) at epoch 2: equal - deepchest
    assert loss_diff.tolist() == pytest.approx([-0.01, 0.0, 0.01])


def test_curves_mean_over_seeds_and_tasks(run_dir: Path) -> None:
    results = comparison(run_dir)
    curves = sm.curves(results.epochs, results.trials, "auroc")
    val = curves[(curves["split"] == "val") & (curves["method"] == "deepchest")]
    mean = val[val["task"] == "mean"].set_index("epoch")["mean"]
    # seeds 0.80, 0.82; epoch 1 is 0.02 lower; task offsets average out
    assert mean[1] == pytest.approx(0.79) and mean[2] == pytest.approx(0.81)
    weights = sm.curves(results.epochs, results.trials, "weight_normalized")
    one = weights[(weights["split"] == "train") & (weights["task"] == "Effusion")]
    assert one["mean"].tolist() == pytest.approx([0.5] * len(one))


def test_time_to_target_by_hand(run_dir: Path) -> None:
    results = comparison(run_dir)
    goal = sm.targets(results.trials, results.epochs, "equal", 0.98)
    # equal's final mean val AUROC: 0.75 and 0.77 -> target 0.98 * 0.76
    assert goal.by_workload == {"resnet18": pytest.approx(0.98 * 0.76)}
    per_trial = sm.time_to_target_trials(results.trials, results.epochs, goal)
    times = per_trial.set_index("trial_id")["time_s"]
    # epoch times: deepchest 60 s per epoch, equal 70 s; equal s0 reaches at epoch 2
    assert times.to_dict() == {
        "deepchest-resnet18-s0": 60.0,
        "deepchest-resnet18-s1": 60.0,
        "equal-resnet18-s0": 140.0,
        "equal-resnet18-s1": 70.0,
    }
    summary = sm.time_to_target_summary(per_trial, "equal").set_index("method")
    assert summary.loc["equal", "median_time_s"] == pytest.approx(105.0)
    assert summary.loc["deepchest", "ratio"] == pytest.approx(60 / 105)
    assert summary.loc["equal", "median_epochs"] == pytest.approx(1.5)


def test_time_to_target_never_reached_is_kept(run_dir: Path) -> None:
    results = comparison(run_dir)
    goal = sm.targets(results.trials, results.epochs, "deepchest", 1.0)  # 0.81
    per_trial = sm.time_to_target_trials(results.trials, results.epochs, goal)
    equal = per_trial[per_trial["method"] == "equal"]
    assert len(equal) == 2 and not equal["reached"].any()
    summary = sm.time_to_target_summary(per_trial, "deepchest").set_index("method")
    assert summary.loc["equal", "n_reached"] == 0
    assert math.isinf(summary.loc["equal", "median_time_s"])
    # deepchest s0 (0.78, 0.80) never reaches 0.81, s1 (0.80, 0.82) does at epoch 2
    assert summary.loc["deepchest", "n_reached"] == 1
    assert math.isinf(summary.loc["deepchest", "median_time_s"])  # half never reached


def test_median_with_inf() -> None:
    assert sm.median_with_inf(pd.Series([1.0, 3.0, math.inf])) == 3.0
    assert math.isinf(sm.median_with_inf(pd.Series([1.0, math.inf])))
    assert sm.median_with_inf(pd.Series([1.0, 3.0])) == 2.0
    assert math.isnan(sm.median_with_inf(pd.Series([], dtype=float)))


def test_performance_profiles_over_two_workloads() -> None:
    summary = pd.DataFrame(
        {
            "method": ["a", "b", "a", "b"],
            "workload": ["w1", "w1", "w2", "w2"],
            "median_time_s": [10.0, 20.0, 30.0, math.inf],
        }
    )
    profiles, areas = sm.performance_profiles(summary)
    taus = list(sm.PROFILE_TAUS)
    assert profiles["a"] == [1.0] * len(taus)
    at = {t: f for t, f in zip(taus, profiles["b"], strict=True)}
    assert at[1.0] == 0.0 and at[2.0] == 0.5 and at[4.0] == 0.5
    assert areas["a"] == pytest.approx(1.0)
    assert areas["b"] == pytest.approx((4.0 - 2.0) * 0.5 / 3.0 + 0.05 * 0.5 / 3.0 / 2, abs=0.01)


# --- merging runs ----------------------------------------------------------------------------


def test_merge_two_backbones(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="r18")
    two = make_run(tmp_path / "b", name="r50", backbones=("resnet50",))
    results = comparison(one, two)
    assert results.workload_is_backbone
    assert set(results.trials["workload"]) == {"resnet18", "resnet50"}
    assert results.trials["trial_id"].str.contains("/").all()  # prefixed by run
    assert results.name == "r18 + r50"


def test_merge_two_data_sets_labels_workloads(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="n", dataset="nih")
    two = make_run(tmp_path / "b", name="c", dataset="chexpert")
    results = comparison(one, two)
    assert not results.workload_is_backbone
    assert set(results.trials["workload"]) == {
        "resnet18 · nih @ 64 px",
        "resnet18 · chexpert @ 64 px",
    }


def test_merge_refuses_the_same_trial_twice(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="first")
    two = make_run(tmp_path / "b", name="second")
    with pytest.raises(
        reports.ReportError, match=r"seed 0 is in more than one run \(first, second\)"
    ):
        comparison(one, two)


def test_old_run_without_new_columns_still_reports(run_dir: Path) -> None:
    for name, drop in (
        ("trials", ["test_mean_auprc", "test_macro_f1", "test_exact_match", "n_train"]),
        ("epochs", ["auprc", "f1", "n_positive"]),
    ):
        path = run_dir / "results" / f"{name}.parquet"
        pd.read_parquet(path).drop(columns=drop).to_parquet(path)
    written = reports.write_report(run_dir)
    assert written.summary["test_mean_auprc_mean"].isna().all()
    assert "Test AUROC" in written.html.read_text(encoding="utf-8")


# --- the written report ------------------------------------------------------------------


def test_write_report_writes_all_files(run_dir: Path) -> None:
    written = reports.write_report(run_dir)
    assert written.html == run_dir / "report.html" and written.html.is_file()
    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(summary["method"]) == ["deepchest", "equal", sm.TRIVIAL]
    assert summary["test_mean_auroc_mean"].tolist() == pytest.approx([0.81, 0.76, 0.5])
    markdown = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert markdown.startswith("# fake-run")
    assert "| Test AUROC |" in markdown
    assert not list(run_dir.glob(".*.tmp"))


def test_write_merged_report_needs_out(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="r18")
    two = make_run(tmp_path / "b", name="r50", backbones=("resnet50",))
    with pytest.raises(reports.ReportError, match="--out"):
        reports.write_report([one, two])
    written = reports.write_report([one, two], out=tmp_path / "cmp" / "both.html")
    assert written.html.is_file() and (tmp_path / "cmp" / "both.summary.csv").is_file()
    assert written.summary_md == tmp_path / "cmp" / "both.summary.md"
    assert written.summary_md.is_file()
    document = written.html.read_text(encoding="utf-8")
    assert 'id="fig-profiles"' in document  # two workloads: performance profiles
    assert "<h3>resnet50</h3>" in document


def test_plotly_embedded_exactly_once(run_dir: Path) -> None:
    document = reports.write_report(run_dir).html.read_text(encoding="utf-8")
    # The bundle's licence banner is distinctive and appears once per copy of plotly.js.
    assert len(re.findall(r"\* plotly\.js v\d", document)) == 1
    head = document.split("</head>")[0]
    assert re.search(r"\* plotly\.js v\d", head)
    # counted after the head: plotly.js before 4 (plotly < 7) has one in a Mapbox message
    body = document.rpartition("</head>")[2]
    assert body.count("Plotly.newPlot(") == document.count("<figure>")


def test_no_external_resources(run_dir: Path) -> None:
    document = reports.write_report(run_dir).html.read_text(encoding="utf-8")
    tags = parse_tags(document)
    assert not [t for t, _ in tags if t == "link"]
    for tag, attrs in tags:
        for key in ("src", "href"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, key, value)
        if tag == "script":
            assert "src" not in attrs
    assert "@import" not in document.split("<script")[0]


SECTION_IDS = ["summary", "paired", "per-task", "dynamics", "cost", "tuning", "provenance"]
FIGURE_IDS = {
    "fig-task-auroc",
    "fig-task-auroc-diff",
    "fig-task-loss-diff",
    "fig-loss-curves-0",
    "fig-val-auroc-0",
    "fig-weights-0",
    "fig-throughput",
    "fig-peak-memory",
    "fig-step-phases",
    "fig-pareto",
    "fig-time-to-target",
}


def test_every_section_in_order_with_its_figures(run_dir: Path) -> None:
    document = reports.write_report(run_dir).html.read_text(encoding="utf-8")
    tags = parse_tags(document)
    sections = [a.get("id") for t, a in tags if t == "section"]
    assert sections == SECTION_IDS
    ids = {attrs.get("id") for _, attrs in tags}
    assert ids >= FIGURE_IDS
    assert "fig-profiles" not in ids  # one workload
    assert "compare methods across several workloads" in document
    assert "<h1>fake-run</h1>" in document
    assert "2025-01-31 12:00:00 UTC" in document and "1 h 02 min" in document
    assert "4 completed" in document
    assert "0123456789abcdef0123456789abcdef01234567" in document
    assert "cuda (NVIDIA H100)" in document  # an older run's "cuda:<model>"
    assert "train 700, val 150, test 150" in document
    assert "always negative" in document
    assert "Only 2 paired seeds" in document  # fewer than 3 seeds warns
    assert "Against equal" in document and "Against deepchest" in document
    assert "this is the comparison above with the sign flipped" in document  # two methods
    assert "lower test loss than equal on 1 of 3 findings" in document
    assert "Each method ran one configuration (the experiment file has no tuning section)" in (
        document
    )
    assert document.count("<figure>") == len(FIGURE_IDS)
    assert document.count('<p class="caption">') >= document.count("<figure>")


def test_figures_have_titles_axis_labels_and_method_colours(run_dir: Path) -> None:
    from reports.html import build_context

    ctx = build_context(comparison(run_dir))
    assert ctx.palette["deepchest"] != ctx.palette["equal"]
    figures = []
    for section in ("per-task", "dynamics", "cost"):
        html_text = next(s for s in __import__("reports.html").html.SECTIONS if s.anchor == section)
        figures.append(html_text.render(ctx))
    heatmap = task_heatmap(
        sm.per_task(ctx.trials, ctx.epochs, "auroc"),
        ctx.configs,
        list(TASKS),
        column="mean",
        title="t",
        z_title="AUROC",
    )
    assert list(heatmap.data[0].text[0]) == ["0.760", "0.810", "0.860"]
    assert heatmap.layout.xaxis.title.text and heatmap.layout.yaxis.title.text
    # every plotly figure in the page has a title and both axis titles
    document = reports.write_report(run_dir).html.read_text(encoding="utf-8")
    layouts = re.findall(r'"title":\{"text":"([^"]+)"', document)
    assert len(layouts) >= 3 * document.count("<figure>")
    # a method's colour is the same in the summary swatch and in the figures
    assert document.count(ctx.palette["deepchest"]) >= 5


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        name=HOSTILE_NAME,
        methods=(HOSTILE_METHOD, "equal"),
        backbones=(HOSTILE_BACKBONE,),
        tasks=(HOSTILE_TASK, "Effusion"),
        outcomes={("equal", 1): ("failed", HOSTILE_ERROR)},
    )
    document = reports.write_report(run).html.read_text(encoding="utf-8")
    for raw in (
        HOSTILE_METHOD,
        "<b>18</b>",
        HOSTILE_TASK,
        HOSTILE_NAME,
        "<script>alert(3)</script>",
        "alert(1)</script>",
    ):
        assert raw not in document
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in document
    assert "&lt;h1&gt;run &amp; co&lt;/h1&gt;" in document
    assert "ValueError: bad &lt;script&gt;alert(3)&lt;/script&gt;" in document
    # only our own scripts: the plotly bundle plus one per figure
    body = document.rpartition("</head>")[2]  # plotly.js < 4 has one in a Mapbox message
    assert document.count("<script") == 1 + body.count("Plotly.newPlot(")
    markdown = (run / "summary.md").read_text(encoding="utf-8")
    assert HOSTILE_METHOD not in markdown


def test_one_seed_one_method(tmp_path: Path) -> None:
    run = make_run(tmp_path, methods=("deepchest",), seeds=(0,))
    document = reports.write_report(run).html.read_text(encoding="utf-8")
    assert "1/1" in document
    assert "Method &#x27;equal&#x27; is not in this comparison." in document
    assert "No completed &#x27;equal&#x27; trial" in document
    assert 'id="fig-task-auroc"' in document and 'id="fig-weights-0"' in document


def test_all_trials_failed_says_so(tmp_path: Path) -> None:
    outcomes = {
        (m, s): ("failed", "RuntimeError: boom") for m in ("deepchest", "equal") for s in (0, 1)
    }
    run = make_run(tmp_path, outcomes=outcomes)
    document = reports.write_report(run).html.read_text(encoding="utf-8")
    assert "Plotly.newPlot(" not in document.rpartition("</head>")[2]  # not the bundle's
    assert "<figure>" not in document
    assert "No trial completed" in document
    assert "0/2" in document
    assert "RuntimeError: boom" in document
    assert "4 failed" in document


def test_failed_and_diverged_trials_in_provenance(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        seeds=(0, 1, 2),
        outcomes={
            ("deepchest", 1): ("failed", HOSTILE_ERROR),
            ("equal", 0): ("diverged", "loss became NaN at epoch 2"),
        },
    )
    document = reports.write_report(run).html.read_text(encoding="utf-8")
    provenance = document.split('id="provenance"')[1]
    assert "status-failed" in provenance and "status-diverged" in provenance
    assert "loss became NaN at epoch 2" in provenance
    assert "4 completed" in document and "1 failed" in document and "1 diverged" in document
    assert "2/3" in document


def test_nan_auroc_cells_marked(tmp_path: Path) -> None:
    run = make_run(
        tmp_path, nan_tasks={"deepchest": ("Cardiomegaly",), "equal": ("Effusion",)}, seeds=(0,)
    )
    document = reports.write_report(run).html.read_text(encoding="utf-8")
    assert re.search(r'"n(/|\\u002f)a"', document)  # plotly's JSON may escape the slash


def test_tasks_follow_manifest_order(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["tasks"] = ["Effusion", "Atelectasis", "Cardiomegaly"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    assert reports.load_run(run_dir).tasks == ["Effusion", "Atelectasis", "Cardiomegaly"]


def test_one_plural_helper_for_every_count_in_reports() -> None:
    from reports.format import plural

    assert [plural(n, "seed") for n in (0, 1, 2)] == ["0 seeds", "1 seed", "2 seeds"]
    assert plural(3, "paired seed", shown="1-3") == "1-3 paired seeds"
    assert [plural(n, "study") for n in (1, 2)] == ["1 study", "2 studies"]
    # no inline plural ('s' if n != 1) in the report's or the CLI's code: this plural only
    inline = re.compile(r"""['"]s['"] if|if \w+ (?:!=|==) 1 else ['"]s?['"]""")
    root = Path(__file__).parents[1]
    for path in sorted([*(root / "reports").glob("*.py"), *(root / "harness").glob("*.py")]):
        assert not inline.findall(path.read_text(encoding="utf-8")), path.name


def test_summary_files_sit_beside_the_report() -> None:
    from reports.html import summary_paths

    # what README says: X.html -> X.summary.csv / .md; any report.html -> summary.csv / .md
    assert summary_paths(Path("d/X.html")) == (Path("d/X.summary.csv"), Path("d/X.summary.md"))
    assert summary_paths(Path("d/report.html")) == (Path("d/summary.csv"), Path("d/summary.md"))


def test_reports_never_imports_torch_or_ray(run_dir: Path) -> None:
    code = (
        "import sys, reports\n"
        f"reports.write_report({str(run_dir)!r})\n"
        "bad = sorted(m for m in ('torch', 'ray', 'harness', 'deepchest', 'methods')"
        " if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr


def test_manifest_trials_without_results_row_are_flagged(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["trials"]["lost-resnet18-s0"] = {"status": "error", "error": "worker died"}
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    document = reports.write_report(run_dir).html.read_text(encoding="utf-8")
    assert "1 trial listed in the manifest without a results row" in document


def test_run_with_no_trial_rows(run_dir: Path) -> None:
    for name in ("trials", "epochs"):
        path = run_dir / "results" / f"{name}.parquet"
        pd.read_parquet(path).iloc[0:0].to_parquet(path)
    document = reports.write_report(run_dir).html.read_text(encoding="utf-8")
    assert "This run has no trial results." in document
    assert "<figure>" not in document
    assert "No trials." in (run_dir / "summary.md").read_text(encoding="utf-8")


# --- the command line ------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "250"},
    )


def test_cli_report_merges_and_prints_the_summary(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="r18", seeds=(0, 1, 2))
    two = make_run(tmp_path / "b", name="r50", backbones=("resnet50",), seeds=(0, 1, 2))
    out = tmp_path / "cmp" / "report.html"
    result = run_cli(
        "report",
        str(one),
        str(two),
        "--out",
        str(out),
        "--baseline",
        "deepchest",
        "--target-fraction",
        "0.9",
    )
    assert result.returncode == 0, result.stderr
    assert "r18 + r50: summary" in result.stdout
    assert "always negative" in result.stdout
    assert f"report: {out}" in result.stdout
    document = out.read_text(encoding="utf-8")
    assert "0.9 × deepchest" in document
    assert "Against deepchest" in document and "Against equal" not in document


def test_cli_report_of_two_runs_of_one_workload_names_each_verdict(tmp_path: Path) -> None:
    """Runs of one data set under other training settings: their workloads differ only by the
    run's name, in brackets, printed as text, not taken for console markup."""
    one = make_run(tmp_path / "a", name="first", seeds=(0, 1, 2))
    two = make_run(tmp_path / "b", name="second", seeds=(0, 1, 2))
    config = (two / "config.yaml").read_text()
    (two / "config.yaml").write_text(config.replace("epochs: 2", "epochs: 20"))
    result = run_cli("report", str(one), str(two), "--out", str(tmp_path / "cmp.html"))
    assert result.returncode == 0, result.stderr
    headings = [ln for ln in result.stdout.splitlines() if ln.startswith("verdict (")]
    assert len(headings) == 2, result.stdout
    assert "[first]):" in headings[0] and "[second]):" in headings[1], headings


def test_cli_report_bad_input_is_one_line(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="r18")
    for args, expected in (
        ((str(tmp_path / "nope"),), "run directory not found"),
        ((str(one), str(one)), "given twice"),
        ((str(one), str(make_run(tmp_path / "b", name="b", backbones=("x",)))), "--out"),
        ((str(one), "--out", str(tmp_path / "x.txt")), ".html"),
        ((str(one), "--target-fraction", "0"), "--target-fraction"),
    ):
        result = run_cli("report", *args)
        assert result.returncode == 2, result.stderr  # bad arguments or input
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], result.stderr


def test_cli_report_refuses_an_explicit_baseline_that_did_not_run(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="r18")
    result = run_cli("report", str(one), "--baseline", "pcgrad")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "harness: error: --baseline 'pcgrad' did not run; methods in these runs: deepchest, equal"
    ]
    assert not (one / "report.html").exists()  # nothing written


def test_cli_report_warns_when_the_default_baseline_is_absent(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="r18", methods=("deepchest", "pcgrad"))
    result = run_cli("report", str(one))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: warning: baseline method 'equal'")
    assert "error" not in result.stderr


# --- edge cases found in review ----------------------------------------------------------------


def drop_epoch_rows(run: Path, trial_id: str) -> None:
    path = run / "results" / "epochs.parquet"
    frame = pd.read_parquet(path)
    frame[frame["trial_id"] != trial_id].to_parquet(path)


def test_trial_failing_before_its_first_epoch_counts_as_never_reached(tmp_path: Path) -> None:
    run = make_run(tmp_path, seeds=(0, 1, 2), outcomes={("deepchest", 1): ("failed", "boom")})
    drop_epoch_rows(run, "deepchest-resnet18-s1")
    results = comparison(run)
    goal = sm.targets(results.trials, results.epochs, "equal", 0.98)
    per_trial = sm.time_to_target_trials(results.trials, results.epochs, goal)
    failed = per_trial.set_index("trial_id").loc["deepchest-resnet18-s1"]
    assert not failed["reached"] and math.isinf(failed["time_s"])
    summary = sm.time_to_target_summary(per_trial, "equal").set_index("method")
    assert (summary.loc["deepchest", "n"], summary.loc["deepchest", "n_reached"]) == (3, 2)


def test_unknown_training_time_is_not_never_reached(run_dir: Path) -> None:
    path = run_dir / "results" / "epochs.parquet"
    frame = pd.read_parquet(path)
    frame["train_time_s"] = float("nan")
    frame.to_parquet(path)
    results = comparison(run_dir)
    goal = sm.targets(results.trials, results.epochs, "equal", 0.98)
    per_trial = sm.time_to_target_trials(results.trials, results.epochs, goal)
    assert per_trial["reached"].all()
    assert per_trial["time_s"].isna().all()
    summary = sm.time_to_target_summary(per_trial, "equal").set_index("method")
    assert summary.loc["deepchest", "median_epochs"] == 1.0
    assert math.isnan(summary.loc["deepchest", "median_time_s"])  # unknown, not "not reached"


def test_workload_without_target_is_left_out_of_time_and_profiles(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="r18", methods=("deepchest", "equal"))
    two = make_run(tmp_path / "b", name="vit", methods=("deepchest", "famo"), backbones=("vit",))
    results = comparison(one, two)
    goal = sm.targets(results.trials, results.epochs, "equal", 0.98)
    assert math.isnan(goal.by_workload["vit"])
    per_trial = sm.time_to_target_trials(results.trials, results.epochs, goal)
    assert set(per_trial["workload"]) == {"resnet18"}
    summary = sm.time_to_target_summary(per_trial, "equal")
    profiles, areas = sm.performance_profiles(summary)
    assert areas["deepchest"] == pytest.approx(1.0)  # fastest on the only workload timed
    document = reports.write_report([one, two], out=tmp_path / "r.html").html.read_text()
    assert 'id="fig-profiles"' not in document  # one workload with a target


def test_ratio_to_a_baseline_that_never_reached_is_missing(run_dir: Path) -> None:
    results = comparison(run_dir)
    goal = sm.targets(results.trials, results.epochs, "equal", 1.0)  # equal: 0.75, 0.77 -> 0.76
    per_trial = sm.time_to_target_trials(results.trials, results.epochs, goal)
    summary = sm.time_to_target_summary(per_trial, "equal").set_index("method")
    assert math.isinf(summary.loc["equal", "median_time_s"])
    assert math.isnan(summary.loc["deepchest", "ratio"])


def test_runs_with_other_findings_are_other_workloads(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="two", methods=("deepchest",), tasks=TASKS[:2])
    two = make_run(tmp_path / "b", name="three", methods=("equal",))
    results = comparison(one, two)
    assert not results.workload_is_backbone
    assert set(results.trials["workload"]) == {
        "resnet18 · synthetic @ 64 px [two]",
        "resnet18 · synthetic @ 64 px [three]",
    }
    assert sm.paired_comparisons(results.trials, "equal")["method"].tolist() == []


def test_dynamics_use_each_workloads_own_findings(tmp_path: Path) -> None:
    from reports.html import build_context, section_dynamics

    one = make_run(tmp_path / "a", name="n", dataset="nih", tasks=TASKS[:2])
    two = make_run(tmp_path / "b", name="c", dataset="chexpert")
    page = section_dynamics(build_context(comparison(one, two)))
    # the equal-weighting line: 1/2 on the two-finding workload, 1/3 on the other
    assert '"y0":0.5' in page and '"y0":0.3333333333333333' in page


def test_baseline_without_a_completed_trial(tmp_path: Path) -> None:
    outcomes = {("equal", s): ("failed", "boom") for s in (0, 1)}
    run = make_run(tmp_path, outcomes=outcomes)
    document = reports.write_report(run).html.read_text(encoding="utf-8")
    assert "No &#x27;equal&#x27; trial completed, so nothing pairs with it." in document
    assert "sign flipped" not in document


def test_weights_open_on_a_method_that_trained(tmp_path: Path) -> None:
    from reports.html import build_context, section_dynamics

    outcomes = {("deepchest", s): ("failed", "boom") for s in (0, 1)}
    run = make_run(tmp_path, outcomes=outcomes)
    path = run / "results" / "epochs.parquet"
    frame = pd.read_parquet(path)
    frame[frame["method"] != "deepchest"].to_parquet(path)
    page = section_dynamics(build_context(comparison(run)))
    weights = page.split('id="fig-weights-0"')[1]
    assert '"label":"equal"' in weights and '"label":"deepchest"' not in weights


def test_hostile_baseline_in_titles_is_escaped(tmp_path: Path) -> None:
    run = make_run(tmp_path, methods=(HOSTILE_METHOD, "equal"))
    options = reports.ReportOptions(baseline=HOSTILE_METHOD)
    document = reports.write_report(run, options=options).html.read_text(encoding="utf-8")
    assert HOSTILE_METHOD not in document and "alert(1)</script>" not in document


def test_runs_with_other_training_settings_are_other_workloads(tmp_path: Path) -> None:
    one = make_run(tmp_path / "a", name="short", methods=("deepchest",))
    two = make_run(tmp_path / "b", name="long", methods=("equal",))
    config = (two / "config.yaml").read_text().replace("epochs: 2", "epochs: 20")
    (two / "config.yaml").write_text(config.replace("synthetic", "synthetic, root: /elsewhere"))
    results = comparison(one, two)
    assert set(results.trials["workload"]) == {
        "resnet18 · synthetic @ 64 px [short]",
        "resnet18 · synthetic @ 64 px [long]",
    }
    # where the data sits does not matter: the same settings elsewhere share a workload
    three = make_run(tmp_path / "c", name="moved", methods=("equal",))
    moved = (three / "config.yaml").read_text().replace("synthetic", "synthetic, root: /x")
    (three / "config.yaml").write_text(moved)
    assert comparison(one, three).workload_is_backbone


# --- issue 10: the report says its answer and shows noise as noise ----------------------------


def cli_main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """``harness`` in this process, as a user calls it: (exit code, stdout, stderr)."""
    from harness.cli import main

    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


THREE_SEEDS = (0, 1, 2)


def separated_values() -> tuple[dict, dict]:
    """Three seeds where ``a`` beats equal on every seed by 0.03 ± 0.01 AUROC (significant after
    Holm) and ``b`` differs by -0.01 ± 0.02 (noise); ``a`` is 2x slower and uses 1.5x memory on
    every seed, ``b`` costs the same as equal. Returns (test AUROC, other values) by
    (method, seed)."""
    auroc = {("equal", s): v for s, v in enumerate((0.70, 0.72, 0.71))}
    auroc |= {("a", s): v for s, v in enumerate((0.72, 0.76, 0.74))}
    auroc |= {("b", s): v for s, v in enumerate((0.69, 0.73, 0.68))}
    values = {}
    for s in THREE_SEEDS:
        base_speed, base_memory = 1000.0 + 7 * s, 2000.0 + 3 * s
        values[("equal", s)] = {"images_per_second": base_speed, "peak_memory_mb": base_memory}
        values[("a", s)] = {
            "images_per_second": base_speed / (2.0 + 0.01 * s),
            "peak_memory_mb": base_memory * (1.5 + 0.01 * s),
        }
        values[("b", s)] = {
            "images_per_second": base_speed * (1.0 + (0.02, -0.03, 0.01)[s]),
            "peak_memory_mb": base_memory * (1.0 + (-0.01, 0.02, -0.01)[s]),
        }
    return auroc, values


def separated_run(root: Path) -> Path:
    """``separated_values`` as a run directory."""
    auroc, values = separated_values()
    return make_run(
        root, methods=("equal", "a", "b"), seeds=THREE_SEEDS, test_auroc=auroc, values=values
    )


def test_verdict_names_differences_noise_and_costs(tmp_path: Path) -> None:
    from reports.verdict import workload_verdicts

    results = comparison(separated_run(tmp_path))
    table = sm.summary_table(results.trials, results.epochs)
    (verdict,) = workload_verdicts(results.trials, table, "equal")
    text = "\n".join(verdict.lines)
    # a: mean +0.03, sd 0.01, half = t_{.975,2} 0.01 / sqrt 3 = 0.0248, p = 0.0351; Holm over
    # the two methods compared doubles it to 0.0702: not significant
    assert not text.startswith("a differs")
    assert (
        "No method differs from equal (paired t-test over 3 seeds, Holm-corrected over 2 "
        "methods compared, p < 0.05)" in text
    )
    assert "a +0.030 AUROC [+0.005, +0.055]" in text and "b −0.010 AUROC" in text
    # cost: a's per-seed ratios 1/2.00, 1/2.01, 1/2.02 and 1.50, 1.51, 1.52: far outside noise
    assert "a 0.50× equal's images/s [0.49, 0.50]" in text
    assert "a 1.51× equal's peak memory [1.49, 1.54]" in text
    assert "b " not in text.split("Cost outside its noise:")[1]  # b's cost ratios are noise


def test_verdict_with_one_method_significant(tmp_path: Path) -> None:
    from reports.verdict import workload_verdicts

    # one method only: no Holm inflation; a's p = 0.0351 < 0.05
    auroc = {("equal", s): v for s, v in enumerate((0.70, 0.72, 0.71))}
    auroc |= {("a", s): v for s, v in enumerate((0.72, 0.76, 0.74))}
    run = make_run(tmp_path, methods=("equal", "a"), seeds=THREE_SEEDS, test_auroc=auroc)
    results = comparison(run)
    (verdict,) = workload_verdicts(
        results.trials, sm.summary_table(results.trials, results.epochs), "equal"
    )
    assert verdict.lines[0] == (
        "a differs from equal (paired t-test over 3 seeds, p < 0.05): test AUROC higher: "
        "+0.030 AUROC [+0.005, +0.055] (Holm p = 0.0351)."
    )


def test_verdict_with_two_seeds_makes_no_claim(run_dir: Path) -> None:
    written = reports.write_report(run_dir)
    document = written.html.read_text(encoding="utf-8")
    claim = "With 2 seeds no significance claim is made (3 or more paired seeds are needed)."
    assert claim in document
    assert "deepchest +0.050 AUROC" in document
    assert "Cost ratios to equal are not tested: fewer than 3 paired seeds" in document
    # on the first screen: in the header, before the summary section
    assert document.index('id="verdict"') < document.index('<section id="summary"')
    markdown = written.summary_md.read_text(encoding="utf-8")
    table_end = markdown.index("| always negative |")
    assert markdown.index("## Verdict") > table_end
    assert claim in markdown


def test_verdict_in_html_and_markdown_of_a_merged_report(tmp_path: Path) -> None:
    one = separated_run(tmp_path / "a")
    two = make_run(tmp_path / "b", name="r50", backbones=("resnet50",), seeds=(0,))
    written = reports.write_report([one, two], out=tmp_path / "both.html")
    markdown = written.summary_md.read_text(encoding="utf-8")
    assert "### resnet18" in markdown and "### resnet50" in markdown
    assert "With 1 seed no significance claim is made" in markdown
    assert "Rule: a method differs from the baseline" in written.html.read_text(encoding="utf-8")


def test_best_mark_needs_a_distinguishable_value(tmp_path: Path) -> None:
    results = comparison(separated_run(tmp_path))
    table = sm.summary_table(results.trials, results.epochs).set_index("method", drop=False)
    index = {m: i for i, m in enumerate(table["method"])}
    # AUROC: a 0.74 ± 0.05 against equal 0.71 ± 0.025: the intervals overlap, no mark
    assert sm.best_rows(table.reset_index(drop=True), metric("test_mean_auroc")) == set()
    # images/s: equal and b overlap at the top (b 1,003 ± 60 vs equal 1,007 ± 17): no mark
    assert sm.best_rows(table.reset_index(drop=True), metric("images_per_second")) == set()
    # memory: b 2,002 and equal 2,003 overlap: no mark even though a is far worse
    assert sm.best_rows(table.reset_index(drop=True), metric("peak_memory_mb")) == set()
    # widen the gap: equal's memory halved on every seed is distinguishable from b's
    trials = results.trials.copy()
    trials.loc[trials["method"] == "equal", "peak_memory_mb"] /= 2
    wide = sm.summary_table(trials, results.epochs)
    assert sm.best_rows(wide, metric("peak_memory_mb")) == {index["equal"]}


def test_nothing_marked_with_one_seed(tmp_path: Path) -> None:
    results = comparison(make_run(tmp_path, seeds=(0,)))
    table = sm.summary_table(results.trials, results.epochs)
    from reports.tables import best_cells

    assert best_cells(table) == set()


def test_best_mark_never_at_or_below_the_trivial_row(tmp_path: Path) -> None:
    # accuracy: deepchest 0.5 on every seed, equal 0.3: disjoint, but below the trivial 0.8
    values = {("deepchest", s): {"test_mean_accuracy": 0.5 + 0.001 * s} for s in THREE_SEEDS}
    values |= {("equal", s): {"test_mean_accuracy": 0.3 + 0.001 * s} for s in THREE_SEEDS}
    results = comparison(make_run(tmp_path, seeds=THREE_SEEDS, values=values))
    table = sm.summary_table(results.trials, results.epochs)
    assert table.iloc[-1]["test_mean_accuracy_mean"] == pytest.approx(0.8)
    assert sm.best_rows(table, metric("test_mean_accuracy")) == set()
    # above the trivial row the same separation is marked
    trials = results.trials.copy()
    trials["test_mean_accuracy"] += 0.45
    assert sm.best_rows(sm.summary_table(trials, results.epochs), metric("test_mean_accuracy")) == {
        0
    }


def test_methods_without_a_completed_trial_are_not_ranked(tmp_path: Path, capsys) -> None:
    outcomes = {("pcgrad", s): ("diverged", "non-finite loss at epoch 1") for s in (0, 1)}
    outcomes |= {("famo", s): ("failed", "RuntimeError: boom") for s in (0, 1)}
    run = make_run(tmp_path, methods=("equal", "pcgrad", "famo", "deepchest"), outcomes=outcomes)
    # a diverged trial keeps its (finite) metrics in make_run: they must not rank it
    results = comparison(run)
    table = sm.summary_table(results.trials, results.epochs)
    assert table["method"].tolist() == ["equal", "deepchest", "famo", "pcgrad", sm.TRIVIAL]
    assert table["rank"].tolist()[:2] == [1, 2] and table["rank"][2:].isna().all()
    assert table["flag"].tolist()[:4] == ["", "", "all failed", "all diverged"]
    from reports.tables import summary_cells

    assert summary_cells(table.iloc[3])[0] == "" and summary_cells(table.iloc[3])[-1] == (
        "0/2 all diverged"
    )
    code, out, _ = cli_main(capsys, "report", str(run))
    assert code == 0
    assert "all diverged" in out and "all failed" in out
    document = (run / "report.html").read_text(encoding="utf-8")
    assert '0/2 <span class="flag">all diverged</span>' in document
    assert "pcgrad: no completed trial (all diverged), so it is not ranked." in document


def test_exploded_run_is_flagged_below_trivial_and_never_starred(tmp_path: Path) -> None:
    # sgd at lr 10: completed, finite, test AUROC 0.349, and the fastest by far
    auroc = {("sgd", s): 0.349 + 0.001 * s for s in THREE_SEEDS}
    values = {("sgd", s): {"images_per_second": 9000.0 + s} for s in THREE_SEEDS}
    run = make_run(
        tmp_path,
        methods=("equal", "sgd"),
        seeds=THREE_SEEDS,
        test_auroc=auroc,
        values=values,
    )
    written = reports.write_report(run)
    table = written.summary.set_index("method")
    assert table.loc["sgd", "flag"] == sm.BELOW_TRIVIAL
    assert table.loc["sgd", "rank"] == 2  # completed, so ranked, below the real result
    assert table.loc["equal", "flag"] == ""
    speed = metric("images_per_second")
    assert sm.best_rows(written.summary, speed) == set()  # the fastest is an exploded run
    document = written.html.read_text(encoding="utf-8")
    assert '3/3 <span class="flag">below trivial</span>' in document
    assert "sgd scores below the always-negative row (mean test AUROC 0.350 vs 0.500" in document
    assert "below trivial" in written.summary_md.read_text(encoding="utf-8")


def test_tuned_threshold_column_and_threshold_note(run_dir: Path) -> None:
    written = reports.write_report(run_dir)
    table = written.summary.set_index("method")
    assert table.loc["deepchest", "test_macro_f1_tuned_mean"] == pytest.approx(0.455)
    # a classifier that learned nothing, tuned on val, calls every image positive: F1 2p/(1+p)
    # at test prevalences 0.1, 0.2, 0.3 -> (0.2/1.1 + 0.4/1.2 + 0.6/1.3) / 3 = 0.32556
    trivial = (0.2 / 1.1 + 0.4 / 1.2 + 0.6 / 1.3) / 3
    assert table.loc[sm.TRIVIAL, "test_macro_f1_tuned_mean"] == pytest.approx(trivial)
    assert table.loc[sm.TRIVIAL, "test_macro_f1_mean"] == 0.0  # at 0.5 it finds nothing
    document = written.html.read_text(encoding="utf-8")
    assert '<th class="num">F1 @ val thr</th>' in document
    assert "Accuracy and macro F1 depend on the decision threshold" in document
    assert "0.5 for a finding without a positive in validation" in document
    markdown = written.summary_md.read_text(encoding="utf-8")
    assert "| F1 @ val thr |" in markdown and "depend on the decision threshold" in markdown
    assert "test_macro_f1_tuned_low" in written.summary_csv.read_text(encoding="utf-8")


def test_f1_at_val_threshold_never_marked_at_or_below_the_trivial_row(tmp_path: Path) -> None:
    # deepchest 0.300, 0.301, 0.302 against equal 0.200, 0.201, 0.202: disjoint intervals, but
    # under the trivial row's 2p/(1+p) mean of 0.3256 (prevalences 0.1, 0.2, 0.3)
    values = {("deepchest", s): {"test_macro_f1_tuned": 0.30 + 0.001 * s} for s in THREE_SEEDS}
    values |= {("equal", s): {"test_macro_f1_tuned": 0.20 + 0.001 * s} for s in THREE_SEEDS}
    results = comparison(make_run(tmp_path, seeds=THREE_SEEDS, values=values))
    table = sm.summary_table(results.trials, results.epochs)
    tuned = metric("test_macro_f1_tuned")
    assert table.iloc[-1]["test_macro_f1_tuned_mean"] == pytest.approx(0.325563, abs=1e-6)
    assert sm.best_rows(table, tuned) == set()
    trials = results.trials.copy()
    trials["test_macro_f1_tuned"] += 0.1  # deepchest 0.401: above the trivial row, marked
    assert sm.best_rows(sm.summary_table(trials, results.epochs), tuned) == {0}


def test_completed_config_without_a_test_auroc_is_flagged(tmp_path: Path) -> None:
    nan = float("nan")
    values = {("equal", s): {"test_mean_auroc": nan} for s in (0, 1)}
    run = make_run(tmp_path, methods=("deepchest", "equal"), values=values)
    results = comparison(run)
    table = sm.summary_table(results.trials, results.epochs).set_index("method")
    assert table.loc["equal", "n_completed"] == 2
    assert math.isnan(table.loc["equal", "rank"]) and table.loc["equal", "flag"] == sm.NO_AUROC
    assert table.loc["deepchest", "rank"] == 1 and table.loc["deepchest", "flag"] == ""
    # every unranked method row carries a flag
    methods = table[table.index != sm.TRIVIAL]
    assert (methods[methods["rank"].isna()]["flag"] != "").all()
    from reports.verdict import workload_verdicts

    (verdict,) = workload_verdicts(results.trials, table.reset_index(), "deepchest")
    assert "equal: no completed trial has a test AUROC (no AUROC), so it is not ranked." in (
        verdict.lines
    )


def _front_row(method: str, speed: float, auroc: float, rank: float, flag: str) -> dict:
    """A summary row with intervals of ± 10 images/s and ± 0.01 AUROC."""
    return {
        "workload": "resnet18",
        "method": method,
        "rank": rank,
        "flag": flag,
        "images_per_second_mean": speed,
        "images_per_second_low": speed - 10,
        "images_per_second_high": speed + 10,
        "test_mean_auroc_mean": auroc,
        "test_mean_auroc_low": auroc - 0.01,
        "test_mean_auroc_high": auroc + 0.01,
    }


def test_flagged_rows_never_anchor_the_front() -> None:
    nan = float("nan")
    points = pd.DataFrame(
        [
            _front_row("sgd", 9000.0, 0.35, 3, sm.BELOW_TRIVIAL),  # exploded, fastest
            _front_row("equal", 1000.0, 0.70, 2, ""),
            _front_row("a", 500.0, 0.80, 1, ""),
            _front_row("famo", nan, nan, nan, sm.ALL_FAILED),
        ]
    )
    # sgd would start the front (fastest, its intervals disjoint from equal's on both axes)
    assert sm.distinguishable_front(points) == [1, 2]  # equal, then a
    # with equal gone, sgd and a are still two disjoint points, but sgd is flagged: no front
    assert sm.distinguishable_front(points.drop(index=1)) == []


def test_verdict_lists_cost_ratios_with_too_few_seeds(tmp_path: Path) -> None:
    from reports.verdict import workload_verdicts

    # separated_run's equal, a and b (three seeds), and c, which completed seeds 0 and 1 only,
    # at 0.8x equal's images/s and 1.0x its memory
    auroc, values = separated_values()
    for s in (0, 1):
        values[("c", s)] = {
            "images_per_second": (1000.0 + 7 * s) * 0.8,
            "peak_memory_mb": 2000.0 + 3 * s,
        }
    outcomes = {("c", 2): ("failed", "RuntimeError: boom")}
    common = dict(seeds=THREE_SEEDS, test_auroc=auroc, values=values, outcomes=outcomes)
    untested = (
        "Cost ratios to equal with too few paired seeds to test (fewer than 3): c 0.80× "
        "equal's images/s (2 paired seeds); c 1.00× equal's peak memory (2 paired seeds)."
    )

    results = comparison(make_run(tmp_path / "abc", methods=("equal", "a", "b", "c"), **common))
    (verdict,) = workload_verdicts(
        results.trials, sm.summary_table(results.trials, results.epochs), "equal"
    )
    assert (
        "Cost outside its noise: a 0.50× equal's images/s [0.49, 0.50]; a 1.51× equal's peak "
        "memory [1.49, 1.54]; every other tested cost ratio is within noise."
    ) in verdict.lines
    assert untested in verdict.lines

    results = comparison(make_run(tmp_path / "bc", methods=("equal", "b", "c"), **common))
    (verdict,) = workload_verdicts(
        results.trials, sm.summary_table(results.trials, results.epochs), "equal"
    )
    assert "No tested images/s or peak memory ratio to equal is outside its noise." in (
        verdict.lines
    )
    assert untested in verdict.lines


def test_old_run_without_tuned_threshold_columns_reports_them_empty(run_dir: Path) -> None:
    for name, drop in (("trials", ["test_macro_f1_tuned"]), ("epochs", ["threshold", "f1_tuned"])):
        path = run_dir / "results" / f"{name}.parquet"
        pd.read_parquet(path).drop(columns=drop).to_parquet(path)
    written = reports.write_report(run_dir)
    assert written.summary["test_macro_f1_tuned_mean"].iloc[:2].isna().all()
    assert "F1 @ val thr" in written.html.read_text(encoding="utf-8")


def test_the_header_counts_trials_in_words(tmp_path: Path) -> None:
    one = make_run(tmp_path / "one", methods=("equal",), seeds=(0,))
    header = reports.write_report(one).html.read_text(encoding="utf-8").split("</header>")[0]
    assert "· 1 trial:" in header and "1 trials" not in header
    four = reports.write_report(make_run(tmp_path / "four")).html.read_text(encoding="utf-8")
    assert "· 4 trials:" in four.split("</header>")[0]


def test_synthetic_data_and_disclaimer_in_the_header(tmp_path: Path) -> None:
    synthetic = reports.write_report(make_run(tmp_path / "s")).html.read_text(encoding="utf-8")
    header = synthetic.split("</header>")[0]
    assert "come from a synthetic image generator (data.dataset: synthetic), not from real " in (
        header
    )
    assert "not a medical device: not for diagnosis" in header
    real = reports.write_report(make_run(tmp_path / "n", dataset="nih"))
    header = real.html.read_text(encoding="utf-8").split("</header>")[0]
    assert "synthetic image generator" not in header
    assert "not a medical device" in header
    assert "not a medical device" in real.summary_md.read_text(encoding="utf-8")


def test_pareto_has_interval_error_bars_and_only_a_resolved_front(tmp_path: Path) -> None:
    from reports.figures import pareto_plot

    results = comparison(separated_run(tmp_path))
    table = sm.summary_table(results.trials, results.epochs)
    methods = table[table["method"] != sm.TRIVIAL]
    # a: twice slower and more accurate than equal, but its AUROC interval overlaps equal's
    assert sm.distinguishable_front(methods) == []
    fig = pareto_plot(methods, {}, title="t", fronts={"resnet18": []})
    assert [t.mode for t in fig.data] == ["markers+text"] * 3  # no front line
    a = next(t for t in fig.data if t.name.startswith("a "))
    row = methods.set_index("method").loc["a"]
    assert a.error_y.array[0] == pytest.approx(
        row["test_mean_auroc_high"] - row["test_mean_auroc_mean"]
    )
    assert a.error_x.arrayminus[0] == pytest.approx(
        row["images_per_second_mean"] - row["images_per_second_low"]
    )
    # tighter AUROC for a: now a trade-off the seeds resolve, and the front is drawn
    trials = results.trials.copy()
    trials.loc[trials["method"] == "a", "test_mean_auroc"] = [0.80, 0.801, 0.802]
    resolved = sm.summary_table(trials, results.epochs)
    resolved = resolved[resolved["method"] != sm.TRIVIAL]
    front = sm.distinguishable_front(resolved)
    assert [resolved.loc[i, "method"] for i in front] == ["equal", "a"]
    fig = pareto_plot(resolved, {}, title="t", fronts={"resnet18": front})
    assert fig.data[-1].mode == "lines" and len(fig.data[-1].x) == 2


def test_no_front_with_one_seed(tmp_path: Path) -> None:
    results = comparison(make_run(tmp_path, seeds=(0,)))
    table = sm.summary_table(results.trials, results.epochs)
    assert sm.distinguishable_front(table[table["method"] != sm.TRIVIAL]) == []
    document = reports.write_report(tmp_path).html.read_text(encoding="utf-8")
    assert "there is one seed." in document


def test_delta_heatmap_marks_noise_and_scales_to_the_data(tmp_path: Path) -> None:
    # per-seed AUROC differences to equal: a +0.030, +0.031, +0.032 and b -0.01, +0.01, -0.03,
    # on every finding (the per-task offsets are the same for every method)
    auroc = {("equal", s): v for s, v in enumerate((0.70, 0.72, 0.71))}
    auroc |= {("a", s): v for s, v in enumerate((0.73, 0.751, 0.742))}
    auroc |= {("b", s): v for s, v in enumerate((0.69, 0.73, 0.68))}
    run = make_run(tmp_path, methods=("equal", "a", "b"), seeds=THREE_SEEDS, test_auroc=auroc)
    results = comparison(run)
    paired = sm.per_task_paired(results.trials, results.epochs, "auroc", "equal")
    cells = paired.set_index(["method", "task"])
    # a: mean 0.031, sd 0.001, t = 31 sqrt 3, p = 1 - t / sqrt(2 + t^2) (t with 2 dof);
    # Holm over its 3 equal p-values triples it: still far below 0.05
    t = 31 * math.sqrt(3)
    a = cells.loc[("a", "Atelectasis")]
    assert a["diff"] == pytest.approx(0.031) and a["n"] == 3 and not a["noise"]
    assert a["p_holm"] == pytest.approx(3 * (1 - t / math.sqrt(2 + t**2)), rel=1e-4)
    b = cells.loc[("b", "Atelectasis")]  # -0.01 ± 0.05: contains 0
    assert b["diff"] == pytest.approx(-0.01) and b["noise"]
    heatmap = task_heatmap(
        paired,
        [("a", "resnet18"), ("b", "resnet18")],
        list(TASKS),
        column="diff",
        title="t",
        z_title="Δ AUROC",
        diverging=True,
    )
    main, wash = heatmap.data
    assert main.zmax == pytest.approx(0.031) and main.zmin == pytest.approx(-0.031)
    assert list(main.text[0]) == ["0.031"] * 3 and list(main.text[1]) == ["-0.010 ·"] * 3
    assert list(wash.z[0]) == [None] * 3 and list(wash.z[1]) == [1.0] * 3
    assert "within noise" in main.hovertext[1][0] and "outside noise" in main.hovertext[0][0]
    assert "over 3 paired seeds, Holm p = 0.001" in main.hovertext[0][0]
    # a real difference of 0.2 is not clipped at a fixed ±0.01
    big = paired.assign(diff=paired["diff"] * 20)
    scaled = task_heatmap(
        big, [("a", "resnet18")], list(TASKS), column="diff", title="t", z_title="d", diverging=True
    )
    assert scaled.data[0].zmax == pytest.approx(0.62)


def test_per_finding_noise_needs_three_pairs_and_survives_holm_over_findings() -> None:
    # differences to the reference per seed, per finding: hand-made trials and epochs tables
    diffs = {
        ("a", "T1"): (0.02, 0.04, 0.03),  # mean 0.03, sd 0.01: t^2 = 27, p = 0.0351
        ("a", "T2"): (0.030, 0.031, 0.032),  # mean 0.031, sd 0.001: t^2 = 2883, p = 0.00035
        ("a", "T3"): (-0.01, 0.01, 0.0),  # mean 0: p = 1
        ("b", "T1"): (0.05, 0.0501),  # two pairs only: t = 1001 with 1 dof, p = 0.00064
        ("b", "T2"): (0.05, 0.0501),
        ("b", "T3"): (0.05, 0.0501),
    }
    trials, epochs = [], []
    for method in ("ref", "a", "b"):
        for seed in range(3 if method != "b" else 2):
            trial_id = f"{method}-{seed}"
            trials.append(
                {"trial_id": trial_id, "method": method, "workload": "w", "seed": seed}
                | {"status": "completed"}
            )
            for task in ("T1", "T2", "T3"):
                value = 0.5 + (0.0 if method == "ref" else diffs[(method, task)][seed])
                epochs.append(
                    {"trial_id": trial_id, "method": method, "workload": "w", "split": "test"}
                    | {"task": task, "epoch": 1, "auroc": value}
                )
    paired = sm.per_task_paired(pd.DataFrame(trials), pd.DataFrame(epochs), "auroc", "ref")
    cells = paired.set_index(["method", "task"])

    def p_two_dof(t_squared: float) -> float:  # two-sided p of Student t with 2 dof
        return 1 - math.sqrt(t_squared / (2 + t_squared))

    p1, p2 = p_two_dof(27), p_two_dof(2883)
    # Holm over a's three findings: sorted p2 < p1 < 1 -> 3 p2, max(3 p2, 2 p1), 1
    assert cells.loc[("a", "T2"), "p_holm"] == pytest.approx(3 * p2, rel=1e-4)
    assert cells.loc[("a", "T1"), "p_holm"] == pytest.approx(2 * p1, rel=1e-4)  # 0.0702
    assert cells.loc[("a", "T3"), "p_holm"] == pytest.approx(1.0)
    assert not cells.loc[("a", "T2"), "noise"]
    # T1's own 95% interval excludes 0 (p 0.0351), but not after Holm over the findings
    assert cells.loc[("a", "T1"), "low"] > 0 and cells.loc[("a", "T1"), "noise"]
    assert cells.loc[("a", "T3"), "noise"]
    # b: Holm p 3 x 0.00064 < 0.05 and the intervals exclude 0, but 2 pairs are too few
    p_b = 1 - 2 / math.pi * math.atan(1001)
    assert cells.loc[("b", "T1"), "p_holm"] == pytest.approx(3 * p_b, rel=1e-3)
    assert (cells.loc["b", "n"] == 2).all() and cells.loc["b", "noise"].all()


def _lab(colour: str) -> tuple[float, float, float]:
    """sRGB hex -> CIE L*a*b* (D65), the textbook formulas."""
    rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    x = (0.4124 * lin[0] + 0.3576 * lin[1] + 0.1805 * lin[2]) / 0.95047
    y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    z = (0.0193 * lin[0] + 0.1192 * lin[1] + 0.9505 * lin[2]) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_fourteen_findings_get_distinguishable_colours_everywhere(tmp_path: Path) -> None:
    from reports.figures import finding_palette, weight_trajectories
    from reports.html import build_context

    findings = [f"finding_{i}" for i in range(14)]
    palette = finding_palette(findings)
    labs = [_lab(palette[f]) for f in findings]
    distances = [math.dist(p, q) for i, p in enumerate(labs) for q in labs[i + 1 :]]
    assert min(distances) > 20  # CIE76: 2.3 is a just noticeable difference
    run = make_run(tmp_path, tasks=("Atelectasis", "Cardiomegaly", "Effusion", "Emphysema"))
    ctx = build_context(comparison(run))
    weights = sm.curves(ctx.epochs, ctx.trials, "weight_normalized")
    fig = weight_trajectories(weights, ["equal"], ctx.results.tasks, title="t")
    colours = {t.name: t.line.color for t in fig.data}
    assert colours == finding_palette(ctx.results.tasks)
    assert colours["Atelectasis"] != colours["Emphysema"]


def test_bar_value_labels_sit_at_the_base(run_dir: Path) -> None:
    from reports.figures import config_bar_chart

    stats = pd.DataFrame(
        {"method": ["equal"], "workload": ["resnet18"], "mean": [100.0], "std": [30.0], "n": [2]}
    )
    fig = config_bar_chart(stats, [("equal", "resnet18")], {}, title="t", y_title="y")
    bar = fig.data[0]
    assert bar.textposition == "inside" and bar.insidetextanchor == "start"


def test_report_refuses_to_replace_an_existing_out(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    cmp = tmp_path / "cmp"
    code, out_text, err = cli_main(capsys, "report", str(run), "--out", str(cmp / "x.html"))
    assert code == 0, err
    assert sorted(p.name for p in cmp.iterdir()) == ["x.html", "x.summary.csv", "x.summary.md"]
    assert f"summary: {cmp / 'x.summary.csv'}, {cmp / 'x.summary.md'}" in out_text
    # any one of the three files already there is refused, and nothing is written
    for i, suffix in enumerate((".html", ".summary.csv", ".summary.md")):
        existing = cmp / f"y{i}{suffix}"
        existing.write_text("mine")
        out = cmp / f"y{i}.html"
        code, _, err = cli_main(capsys, "report", str(run), "--out", str(out))
        assert code == 2
        assert err.strip().splitlines() == [
            f"harness: error: {existing} exists; pass --overwrite to replace it"
        ]
        assert existing.read_text() == "mine"
        assert sorted(p.name for p in cmp.glob(f"y{i}*")) == [existing.name]
        code, _, err = cli_main(capsys, "report", str(run), "--out", str(out), "--overwrite")
        assert code == 0, err
        assert existing.read_text() != "mine" and len(list(cmp.glob(f"y{i}*"))) == 3


def test_report_replaces_the_runs_own_report(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    (run / "report.html").write_text("old")
    (run / "summary.csv").write_text("old")
    code, _, err = cli_main(capsys, "report", str(run))
    assert code == 0, err
    assert (run / "report.html").read_text() != "old" and (run / "summary.csv").read_text() != "old"
    # the same file named with --out is still the run's own report
    code, _, err = cli_main(capsys, "report", str(run), "--out", str(run / "report.html"))
    assert code == 0, err
    # harness run's call: the run regenerates its own report in its own directory
    written = reports.write_report(run)
    assert written.summary_csv == run / "summary.csv" and written.summary_md == run / "summary.md"


def test_report_to_an_unwritable_place_is_one_line(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    for out in ("/proc/x.html", str(tmp_path / "dir.html")):
        if out.endswith("dir.html"):
            (tmp_path / "dir.html").mkdir()  # a folder where the file should go
        code, _, err = cli_main(capsys, "report", str(run), "--out", out, "--overwrite")
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("harness: error: cannot write "), err
        assert "Traceback" not in err
    assert not list(Path("/proc").glob(".x.html*"))
    assert not list(tmp_path.glob(".*.tmp"))


def test_report_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path / "run")
    for args, expected in (
        (("--target-fraction", "0"), "--target-fraction must be in (0, 1.5], got 0.0"),
        (("--baseline", "pcgrad"), "methods in these runs: deepchest, equal"),
    ):
        code, _, err = cli_main(capsys, "report", str(run), *args)
        assert code == 2
        assert len(err.strip().splitlines()) == 1 and expected in err
    code, _, err = cli_main(capsys, "report", str(tmp_path / "runs" / "nope"))
    assert code == 2 and err.strip() == (
        f"harness: error: run directory not found: {tmp_path / 'runs' / 'nope'}"
    )


def test_a_ratio_interval_never_prints_a_bound_other_than_1_as_1() -> None:
    from reports.verdict import _ratio_interval

    assert _ratio_interval(0.912, 0.9981) == "[0.91, 0.998]"
    assert _ratio_interval(1.0004, 1.2) == "[1.0004, 1.20]"
    assert _ratio_interval(0.5, 0.7) == "[0.50, 0.70]"


def test_cli_report_prints_the_verdict_and_notes_and_fits_columns(tmp_path: Path) -> None:
    """The terminal gives the answer in words under the table, as the HTML does, and an
    explicit $COLUMNS holds off a terminal too."""
    run = separated_run(tmp_path / "run")
    result = run_cli("report", str(run))  # COLUMNS=250
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.index("always negative") < out.index("verdict:") < out.index("report: ")
    assert "  - a differs from equal" in out or "a +0.030 AUROC" in out
    assert "note: Research benchmark results, not a medical device" in out
    narrow = subprocess.run(
        [sys.executable, "-m", "harness.cli", "report", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "80"},
    )
    assert narrow.returncode == 0, narrow.stderr
    table_and_words = [
        line for line in narrow.stdout.splitlines() if not line.startswith(("report:", "summary:"))
    ]  # (the file paths are as long as they are)
    assert max(len(line) for line in table_and_words) <= 80


def test_markdown_keeps_plain_less_than_readable_and_escapes_tags() -> None:
    from reports.tables import _markdown_cell

    assert _markdown_cell("p < 0.05 after Holm") == "p < 0.05 after Holm"
    assert _markdown_cell("<script>x</script> & &amp;") == ("&lt;script>x&lt;/script> & &amp;amp;")
    assert _markdown_cell("a | b") == "a \\| b"
