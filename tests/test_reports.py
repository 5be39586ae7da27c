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

import reports  # noqa: E402
from reports.figures import config_bar_chart, method_palette, per_task_auroc_heatmap  # noqa: E402
from reports.summary import metric_by_config, per_task_test_auroc  # noqa: E402

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
) -> Path:
    """Write a realistic run directory: config, manifest, trials and epochs tables.

    ``outcomes`` maps (method, seed) -> (status, error) for non-completed trials; a failed
    trial has NaN metrics and one epoch of train/val rows; a diverged trial keeps its metrics
    (so that tests can check they are left out of the means). ``nan_tasks`` maps a method to
    tasks whose test AUROC is NaN (a single class in the test split).
    """
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
                        "images_per_second": nan if failed else 1000.0 + 100 * mi + 10 * seed,
                        "step_time_ms": nan if failed else 50.0 + mi + seed,
                        "data_time_ms": nan if failed else 5.0,
                        "forward_time_ms": nan if failed else 20.0,
                        "backward_time_ms": nan if failed else 20.0,
                        "optimizer_time_ms": nan if failed else 5.0,
                        "peak_memory_mb": nan if failed else 2000.0 + 500 * mi + 2 * seed,
                        "wall_time_s": nan if failed else 120.0 + 30 * seed,
                        "device": "cuda:NVIDIA H100",
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
                                    "loss": 0.5 / epoch,
                                    "accuracy": 0.85,
                                    "auroc": value,
                                    "weight": 1.0 + ti,
                                    "weight_normalized": (1.0 + ti) / 6.0,
                                    "n_labeled": 100,
                                    "train_time_s": 60.0 * epoch,
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
    (root / "config.yaml").write_text("name: fake-run\nseeds: [0, 1]\nepochs: 2\n")
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
    assert results.config == {"name": "fake-run", "seeds": [0, 1], "epochs": 2}
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


# --- leaderboard -------------------------------------------------------------------------


def test_leaderboard_numbers_by_hand(run_dir: Path) -> None:
    board = reports.leaderboard(reports.load_run(run_dir).trials)
    assert list(board["method"]) == ["deepchest", "equal"]  # best test AUROC first
    top = board.iloc[0]
    # deepchest seeds: 0.80 and 0.82
    assert top["test_mean_auroc_mean"] == pytest.approx(0.81)
    assert top["test_mean_auroc_std"] == pytest.approx(math.sqrt(2 * 0.01**2))
    assert top["test_mean_accuracy_mean"] == pytest.approx(0.905)
    assert top["test_mean_accuracy_std"] == pytest.approx(math.sqrt(2 * 0.005**2))
    assert top["images_per_second_mean"] == pytest.approx(1005.0)
    assert top["step_time_ms_mean"] == pytest.approx(50.5)
    assert top["peak_memory_mb_mean"] == pytest.approx(2001.0)
    assert top["wall_time_s_mean"] == pytest.approx(135.0)
    assert (top["n_trials"], top["n_completed"]) == (2, 2)
    second = board.iloc[1]
    # equal seeds: 0.75 and 0.77
    assert second["test_mean_auroc_mean"] == pytest.approx(0.76)
    assert second["images_per_second_mean"] == pytest.approx(1105.0)


def test_leaderboard_excludes_failed_and_diverged_from_means(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        seeds=(0, 1, 2),
        outcomes={
            ("deepchest", 1): ("failed", "RuntimeError: CUDA out of memory"),
            ("deepchest", 2): ("diverged", "loss became NaN at epoch 2"),
        },
        test_auroc={("deepchest", 0): 0.70, ("deepchest", 2): 0.99},
    )
    board = reports.leaderboard(reports.load_run(run).trials).set_index("method")
    row = board.loc["deepchest"]
    assert (row["n_trials"], row["n_completed"]) == (3, 1)
    assert row["test_mean_auroc_mean"] == pytest.approx(0.70)  # the diverged 0.99 is left out
    assert math.isnan(row["test_mean_auroc_std"])  # one completed seed
    assert row["images_per_second_mean"] == pytest.approx(1000.0)
    assert board.loc["equal", "n_completed"] == 3
    assert list(board.index) == ["equal", "deepchest"]  # 0.77 > 0.70


def test_leaderboard_all_failed_sorted_and_counted(tmp_path: Path) -> None:
    outcomes = {(m, s): ("failed", "boom") for m in ("deepchest", "equal") for s in (0, 1)}
    board = reports.leaderboard(reports.load_run(make_run(tmp_path, outcomes=outcomes)).trials)
    assert list(board["n_trials"]) == [2, 2]
    assert list(board["n_completed"]) == [0, 0]
    assert board["test_mean_auroc_mean"].isna().all()


def test_leaderboard_empty_trials() -> None:
    board = reports.leaderboard(pd.DataFrame(columns=["trial_id", "method", "backbone", "status"]))
    assert board.empty
    assert "test_mean_auroc_mean" in board.columns


def test_leaderboard_table_formats_mean_std(run_dir: Path) -> None:
    board = reports.leaderboard(reports.load_run(run_dir).trials)
    console = Console(record=True, width=250)
    console.print(reports.leaderboard_table(board, "[bold]my run[/bold]"))
    text = console.export_text()
    assert "0.810 ± 0.014" in text
    assert "1,005" in text
    assert "2/2" in text
    assert "[bold]my run[/bold]" in text  # shown literally, no markup


def test_leaderboard_table_one_seed_and_markup_names(tmp_path: Path) -> None:
    run = make_run(tmp_path, seeds=(0,), methods=("[red]m[/red]",))
    board = reports.leaderboard(reports.load_run(run).trials)
    console = Console(record=True, width=250)
    console.print(reports.leaderboard_table(board, "one seed"))
    text = console.export_text()
    assert "0.800 ± —" in text
    assert "[red]m[/red]" in text


# --- the written report ------------------------------------------------------------------


def test_write_report_writes_all_files(run_dir: Path) -> None:
    path = reports.write_report(run_dir)
    assert path == run_dir / "report.html"
    assert path.is_file()
    summary = pd.read_csv(run_dir / "summary.csv")
    board = reports.leaderboard(reports.load_run(run_dir).trials)
    assert list(summary["method"]) == list(board["method"])
    assert summary["test_mean_auroc_mean"].tolist() == pytest.approx(
        board["test_mean_auroc_mean"].tolist()
    )
    markdown = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert markdown.startswith("# fake-run")
    assert "| Test AUROC |" in markdown
    assert "0.810 ± 0.014" in markdown
    assert not list(run_dir.glob(".*.tmp"))


def test_plotly_embedded_exactly_once_and_figures_present(run_dir: Path) -> None:
    document = reports.write_report(run_dir).read_text(encoding="utf-8")
    # The bundle's licence banner is distinctive and appears once per copy of plotly.js.
    assert len(re.findall(r"\* plotly\.js v\d", document)) == 1
    assert document.count("Plotly.newPlot(") == 3
    head = document.split("</head>")[0]
    assert re.search(r"\* plotly\.js v\d", head)


def test_no_external_resources(run_dir: Path) -> None:
    document = reports.write_report(run_dir).read_text(encoding="utf-8")
    tags = parse_tags(document)
    assert not [t for t, _ in tags if t == "link"]
    for tag, attrs in tags:
        for key in ("src", "href"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//")), (tag, key, value)
        if tag == "script":
            assert "src" not in attrs
    assert "@import" not in document.split("<script")[0]


def test_every_section_present(run_dir: Path) -> None:
    document = reports.write_report(run_dir).read_text(encoding="utf-8")
    tags = parse_tags(document)
    ids = {attrs.get("id") for _, attrs in tags}
    assert {"leaderboard", "per-task-auroc", "cost", "trials"} <= ids
    assert {"fig-per-task-auroc", "fig-throughput", "fig-peak-memory"} <= ids
    assert "<h1>fake-run</h1>" in document
    assert "2025-01-31 12:00:00 UTC" in document
    assert "1 h 02 min" in document  # run duration
    assert "4 completed" in document
    assert "0123456789abcdef0123456789abcdef01234567" in document
    assert "cuda:NVIDIA H100" in document
    assert document.count("<figure>") == 3
    assert document.count('<p class="caption">') >= 3 + 2  # figures + both tables
    assert "0.810 ± 0.014" in document
    assert "2/2" in document


def test_figures_have_titles_axis_labels_and_method_colours(run_dir: Path) -> None:
    results = reports.load_run(run_dir)
    palette = method_palette(results.trials["method"])
    assert palette["deepchest"] != palette["equal"]
    configs = [("deepchest", "resnet18"), ("equal", "resnet18")]
    heatmap = per_task_auroc_heatmap(
        per_task_test_auroc(results.trials, results.epochs), configs, list(TASKS)
    )
    bars = config_bar_chart(
        metric_by_config(results.trials, "images_per_second"),
        configs,
        palette,
        title="Throughput",
        y_title="Images per second",
    )
    for fig in (heatmap, bars):
        assert fig.layout.title.text
        assert fig.layout.xaxis.title.text
        assert fig.layout.yaxis.title.text
    assert list(bars.data[0].marker.color) == [palette["deepchest"], palette["equal"]]
    assert list(heatmap.data[0].text[0]) == ["0.760", "0.810", "0.860"]


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        name=HOSTILE_NAME,
        methods=(HOSTILE_METHOD, "equal"),
        backbones=(HOSTILE_BACKBONE,),
        tasks=(HOSTILE_TASK, "Effusion"),
        outcomes={("equal", 1): ("failed", HOSTILE_ERROR)},
    )
    document = reports.write_report(run).read_text(encoding="utf-8")
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
    assert document.count("<script") == 1 + document.count("Plotly.newPlot(")
    markdown = (run / "summary.md").read_text(encoding="utf-8")
    assert HOSTILE_METHOD not in markdown


def test_markdown_escapes_pipes(tmp_path: Path) -> None:
    run = make_run(tmp_path, methods=("a|b",))
    reports.write_report(run)
    assert "a\\|b" in (run / "summary.md").read_text(encoding="utf-8")


def test_one_seed_one_method(tmp_path: Path) -> None:
    run = make_run(tmp_path, methods=("deepchest",), seeds=(0,))
    document = reports.write_report(run).read_text(encoding="utf-8")
    assert "0.800 ± —" in document
    assert document.count("<figure>") == 3
    assert "1/1" in document


def test_all_trials_failed_says_so(tmp_path: Path) -> None:
    outcomes = {
        (m, s): ("failed", "RuntimeError: boom") for m in ("deepchest", "equal") for s in (0, 1)
    }
    run = make_run(tmp_path, outcomes=outcomes)
    document = reports.write_report(run).read_text(encoding="utf-8")
    assert "Plotly.newPlot(" not in document
    assert "<figure>" not in document
    assert "No trial completed" in document
    assert "No completed trials" in document
    assert "0/2" in document
    assert "RuntimeError: boom" in document
    assert "4 failed" in document


def test_failed_and_diverged_trials_in_trials_table(tmp_path: Path) -> None:
    run = make_run(
        tmp_path,
        outcomes={
            ("deepchest", 1): ("failed", HOSTILE_ERROR),
            ("equal", 0): ("diverged", "loss became NaN at epoch 2"),
        },
    )
    document = reports.write_report(run).read_text(encoding="utf-8")
    trials_section = document.split('id="trials"')[1]
    assert "status-failed" in trials_section
    assert "status-diverged" in trials_section
    assert "loss became NaN at epoch 2" in trials_section
    assert "2 completed" in document and "1 failed" in document and "1 diverged" in document
    assert "1/2" in document


def test_nan_auroc_tasks(tmp_path: Path) -> None:
    run = make_run(
        tmp_path, nan_tasks={"deepchest": ("Cardiomegaly",), "equal": ("Effusion",)}, seeds=(0,)
    )
    results = reports.load_run(run)
    per_task = per_task_test_auroc(results.trials, results.epochs).set_index(["method", "task"])
    assert math.isnan(per_task.loc[("deepchest", "Cardiomegaly"), "mean"])
    assert per_task.loc[("deepchest", "Effusion"), "mean"] == pytest.approx(0.85)
    document = reports.write_report(run).read_text(encoding="utf-8")
    assert re.search(r'"n(/|\\u002f)a"', document)  # plotly's JSON may escape the slash
    assert document.count("<figure>") == 3


def test_tasks_follow_manifest_order(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["tasks"] = ["Effusion", "Atelectasis", "Cardiomegaly"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    results = reports.load_run(run_dir)
    assert results.tasks == ["Effusion", "Atelectasis", "Cardiomegaly"]


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
    document = reports.write_report(run_dir).read_text(encoding="utf-8")
    assert "1 listed in the manifest without a results row" in document


def test_run_with_no_trial_rows(run_dir: Path) -> None:
    for name in ("trials", "epochs"):
        path = run_dir / "results" / f"{name}.parquet"
        pd.read_parquet(path).iloc[0:0].to_parquet(path)
    document = reports.write_report(run_dir).read_text(encoding="utf-8")
    assert "This run has no trial results." in document
    assert "<figure>" not in document
    assert "No trials." in (run_dir / "summary.md").read_text(encoding="utf-8")
