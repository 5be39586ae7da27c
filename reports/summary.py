"""Aggregates over seeds: the leaderboard and per-task / per-metric summaries.

Only ``status == "completed"`` trials enter a mean or a std; failed and diverged trials are
counted (``n_trials``) but never averaged. Stds are sample stds (ddof=1) over seeds, so a
single seed gives NaN, shown as an em dash.
"""

from __future__ import annotations

import html

import pandas as pd
from rich.table import Table
from rich.text import Text

from reports.format import (
    ACCURACY_DIGITS,
    AUROC_DIGITS,
    MEMORY_DIGITS,
    STEP_TIME_DIGITS,
    THROUGHPUT_DIGITS,
    fmt_duration,
    fmt_mean_std,
    fmt_number,
)

COMPLETED = "completed"
CONFIG_KEYS = ["method", "backbone"]

LEADERBOARD_COLUMNS: list[str] = [
    "method",
    "backbone",
    "n_trials",
    "n_completed",
    "test_mean_auroc_mean",
    "test_mean_auroc_std",
    "test_mean_accuracy_mean",
    "test_mean_accuracy_std",
    "images_per_second_mean",
    "step_time_ms_mean",
    "peak_memory_mb_mean",
    "wall_time_s_mean",
]


def completed_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose metrics may be averaged."""
    return trials[trials["status"] == COMPLETED]


def leaderboard(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, backbone), best test mean AUROC first (columns: LEADERBOARD_COLUMNS)."""
    if trials.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in LEADERBOARD_COLUMNS})
    flagged = trials.assign(_completed=trials["status"] == COMPLETED)
    counts = flagged.groupby(CONFIG_KEYS, dropna=False).agg(
        n_trials=("trial_id", "size"), n_completed=("_completed", "sum")
    )
    stats = (
        completed_trials(trials)
        .groupby(CONFIG_KEYS, dropna=False)
        .agg(
            test_mean_auroc_mean=("test_mean_auroc", "mean"),
            test_mean_auroc_std=("test_mean_auroc", "std"),
            test_mean_accuracy_mean=("test_mean_accuracy", "mean"),
            test_mean_accuracy_std=("test_mean_accuracy", "std"),
            images_per_second_mean=("images_per_second", "mean"),
            step_time_ms_mean=("step_time_ms", "mean"),
            peak_memory_mb_mean=("peak_memory_mb", "mean"),
            wall_time_s_mean=("wall_time_s", "mean"),
        )
    )
    board = counts.join(stats, how="left").reset_index()
    board = board.astype({"n_trials": "int64", "n_completed": "int64"})
    board = board.sort_values(
        ["test_mean_auroc_mean", "method", "backbone"],
        ascending=[False, True, True],
        na_position="last",
        kind="mergesort",
    )
    return board[LEADERBOARD_COLUMNS].reset_index(drop=True)


def _dtype(column: str) -> str:
    if column in ("method", "backbone"):
        return "object"
    return "int64" if column.startswith("n_") else "float64"


def metric_by_config(trials: pd.DataFrame, column: str) -> pd.DataFrame:
    """Mean, std and count of one trial column over the completed seeds of each config.

    Columns: method, backbone, mean, std, n (non-missing values). Configs with no completed
    trial are absent.
    """
    done = completed_trials(trials)
    if done.empty:
        return pd.DataFrame(columns=[*CONFIG_KEYS, "mean", "std", "n"])
    return (
        done.groupby(CONFIG_KEYS, dropna=False)[column]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )


def per_task_test_auroc(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Test AUROC per (method, backbone, task): mean, std and count over completed seeds.

    Only the last test row of each trial and task is used (the harness writes test rows at
    the best epoch only). NaN AUROCs (a task with one class in the test split) are skipped;
    a cell with no finite value has mean NaN.
    """
    columns = [*CONFIG_KEYS, "task", "mean", "std", "n"]
    done_ids = set(completed_trials(trials)["trial_id"])
    test = epochs[(epochs["split"] == "test") & epochs["trial_id"].isin(done_ids)]
    if test.empty:
        return pd.DataFrame(columns=columns)
    last = test.sort_values("epoch", kind="mergesort").drop_duplicates(
        ["trial_id", "task"], keep="last"
    )
    return (
        last.groupby([*CONFIG_KEYS, "task"], dropna=False)["auroc"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()[columns]
    )


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """Number of trials per status: completed, failed, diverged first, then any others."""
    counts = trials["status"].fillna("unknown").value_counts()
    order = [s for s in ("completed", "failed", "diverged") if s in counts.index]
    order += sorted(s for s in counts.index if s not in order)
    return {status: int(counts[status]) for status in order}


# --- the leaderboard as text -------------------------------------------------------------

LEADERBOARD_HEADERS: list[str] = [
    "#",
    "Method",
    "Backbone",
    "Test AUROC",
    "Test accuracy",
    "Images/s",
    "Step (ms)",
    "Peak memory (MB)",
    "Wall time",
    "Completed",
]


def leaderboard_cells(row: pd.Series, rank: int) -> list[str]:
    """One leaderboard row as display strings, in LEADERBOARD_HEADERS order (not escaped)."""
    return [
        str(rank),
        str(row["method"]),
        str(row["backbone"]),
        fmt_mean_std(row["test_mean_auroc_mean"], row["test_mean_auroc_std"], AUROC_DIGITS),
        fmt_mean_std(
            row["test_mean_accuracy_mean"], row["test_mean_accuracy_std"], ACCURACY_DIGITS
        ),
        fmt_number(row["images_per_second_mean"], THROUGHPUT_DIGITS),
        fmt_number(row["step_time_ms_mean"], STEP_TIME_DIGITS),
        fmt_number(row["peak_memory_mb_mean"], MEMORY_DIGITS),
        fmt_duration(row["wall_time_s_mean"]),
        f"{int(row['n_completed'])}/{int(row['n_trials'])}",
    ]


def leaderboard_table(board: pd.DataFrame, title: str) -> Table:
    """The leaderboard as a rich Table; ``title`` and all names are shown literally (no markup)."""
    table = Table(title=Text(title, style="bold"), header_style="bold")
    for i, header in enumerate(LEADERBOARD_HEADERS):
        table.add_column(header, justify="left" if i in (1, 2) else "right")
    if board.empty:
        table.caption = Text("no trials")
        return table
    for rank, (_, row) in enumerate(board.iterrows(), start=1):
        cells = [Text(cell) for cell in leaderboard_cells(row, rank)]
        if int(row["n_completed"]) < int(row["n_trials"]):
            cells[-1].stylize("red")
        table.add_row(*cells)
    table.caption = Text("mean ± std over completed seeds; — = not available or one seed")
    return table


def _markdown_cell(text: str) -> str:
    text = html.escape(" ".join(text.split()), quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|")


def leaderboard_markdown(board: pd.DataFrame, title: str) -> str:
    """The leaderboard as a GitHub-flavoured Markdown table under a ``#`` heading."""
    lines = [f"# {_markdown_cell(title)}", ""]
    if board.empty:
        return "\n".join([*lines, "No trials.", ""])
    lines.append("| " + " | ".join(LEADERBOARD_HEADERS) + " |")
    aligns = [":--" if i in (1, 2) else "--:" for i in range(len(LEADERBOARD_HEADERS))]
    lines.append("| " + " | ".join(aligns) + " |")
    for rank, (_, row) in enumerate(board.iterrows(), start=1):
        cells = [_markdown_cell(cell) for cell in leaderboard_cells(row, rank)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± std over completed seeds; — = not available or a single seed.", ""]
    return "\n".join(lines)
