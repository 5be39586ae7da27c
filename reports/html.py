"""The self-contained HTML report: one function per section, assembled by :func:`render_report`.

The page opens offline: plotly.js is embedded once in the head, figures are emitted without
it, and there is no external script, stylesheet or font. Every user-supplied string (run
name, method, backbone and task names, errors, paths) is HTML-escaped via :func:`esc`.

To add a section, write ``def section_x(ctx: ReportContext) -> str`` returning the section's
body and append a :class:`Section` to ``SECTIONS``.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from reports.figures import (
    Config,
    config_bar_chart,
    method_palette,
    per_task_auroc_heatmap,
)
from reports.format import (
    AUROC_DIGITS,
    MEMORY_DIGITS,
    MISSING,
    THROUGHPUT_DIGITS,
    error_line,
    fmt_duration,
    fmt_int,
    fmt_number,
    fmt_timestamp,
    is_missing,
    parse_timestamp,
)
from reports.load import RunResults, load_run
from reports.summary import (
    LEADERBOARD_HEADERS,
    completed_trials,
    leaderboard,
    leaderboard_cells,
    leaderboard_markdown,
    metric_by_config,
    per_task_test_auroc,
    status_counts,
)

REPORT_FILE = "report.html"
SUMMARY_CSV_FILE = "summary.csv"
SUMMARY_MD_FILE = "summary.md"

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa;
        --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 1.7rem; margin: 0 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.25rem; margin: 40px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 24px 0 6px; }
.subtitle, .caption, .note { color: var(--muted); }
.caption { font-size: 0.92rem; margin: 4px 0 18px; max-width: 80ch; }
nav { margin: 14px 0 0; font-size: 0.92rem; }
nav a { margin-right: 14px; color: #0969da; text-decoration: none; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 16px 0 0; }
dl.meta dt { color: var(--muted); }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
code { font: 0.9em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; margin: 6px 0; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: top; }
th { background: var(--bg-alt); font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fbfcfd; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.error { color: var(--bad); font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
           font-size: 0.82rem; max-width: 48ch; overflow-wrap: anywhere; }
tr.incomplete td.count { color: var(--bad); font-weight: 600; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; border-radius: 2px;
          margin-right: 6px; vertical-align: -0.05em; }
.status { font-weight: 600; }
.status-completed { color: var(--ok); }
.status-failed { color: var(--bad); }
.status-diverged { color: var(--warn); }
.callout { border-left: 4px solid var(--bad); background: #fff5f5; padding: 8px 12px;
           margin: 16px 0; }
.empty { color: var(--muted); font-style: italic; }
figure { margin: 10px 0 0; }
"""


def esc(value: object) -> str:
    """HTML-escape a user-supplied value (quotes included, so it is safe in attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


@cache
def _plotly_js() -> str:
    # Guard against a bundle that would close our <script> early.
    return plotly.offline.get_plotlyjs().replace("</script", "<\\/script")


@dataclass
class ReportContext:
    """What every section may draw on, computed once."""

    results: RunResults
    board: pd.DataFrame  # reports.leaderboard(trials)
    palette: dict[str, str]  # method -> colour, shared by every figure and table
    configs: list[Config]  # (method, backbone) in leaderboard order

    @property
    def trials(self) -> pd.DataFrame:
        return self.results.trials

    @property
    def completed(self) -> pd.DataFrame:
        return completed_trials(self.results.trials)


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    render: Callable[[ReportContext], str]


def build_context(results: RunResults) -> ReportContext:
    board = leaderboard(results.trials)
    palette = method_palette(results.trials["method"].dropna())
    configs = [(row.method, row.backbone) for row in board.itertuples(index=False)]
    return ReportContext(results=results, board=board, palette=palette, configs=configs)


# --- building blocks ---------------------------------------------------------------------


def figure_html(fig: go.Figure, div_id: str, caption: str) -> str:
    """A figure without plotly.js, plus its one-sentence caption (``caption`` is trusted HTML)."""
    body = fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        include_mathjax=False,
        config=PLOTLY_CONFIG,
        div_id=div_id,
        default_width="100%",
        default_height=f"{fig.layout.height or 450}px",
    )
    return f'<figure>{body}<p class="caption">{caption}</p></figure>'


def empty_html(message: str) -> str:
    return f'<p class="empty">{esc(message)}</p>'


def method_cell(method: object, palette: dict[str, str]) -> str:
    colour = palette.get(str(method), "#999")  # our palette, never user input
    return f'<span class="swatch" style="background:{colour}"></span>{esc(method)}'


def table_html(headers: list[tuple[str, str]], rows: list[str]) -> str:
    """``headers`` are (text, css class) pairs; ``rows`` are ready ``<tr>`` strings."""
    head = "".join(
        f'<th class="{cls}">{esc(text)}</th>' if cls else f"<th>{esc(text)}</th>"
        for text, cls in headers
    )
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


# --- sections ----------------------------------------------------------------------------


def section_header(ctx: ReportContext) -> str:
    """Run name, start/end, trials by status, git commit, devices."""
    results, manifest = ctx.results, ctx.results.manifest
    started, finished = manifest.get("started_at"), manifest.get("finished_at")
    finished_text = fmt_timestamp(finished) if finished else "not finished"
    start_dt, end_dt = parse_timestamp(started), parse_timestamp(finished)
    if start_dt and end_dt and (start_dt.tzinfo is None) == (end_dt.tzinfo is None):
        finished_text += f" (took {fmt_duration((end_dt - start_dt).total_seconds())})"

    counts = status_counts(ctx.trials) if not ctx.trials.empty else {}
    total = sum(counts.values())
    by_status = ", ".join(
        f'<span class="status status-{esc(s)}">{n} {esc(s)}</span>' for s, n in counts.items()
    )
    trials_text = f"{total} total" + (f": {by_status}" if by_status else "")
    listed = set((manifest.get("trials") or {}).keys())
    unreported = sorted(listed - set(ctx.trials["trial_id"].dropna()))
    if unreported:
        trials_text += (
            f'; <span class="status status-failed">{len(unreported)} listed in the manifest '
            "without a results row</span>"
        )

    devices = sorted({str(d) for d in ctx.trials["device"].dropna().unique()})
    commit = manifest.get("git_commit")
    items: list[tuple[str, str]] = [
        ("Started", esc(fmt_timestamp(started))),
        ("Finished", esc(finished_text)),
        ("Trials", trials_text),
        ("Git commit", f"<code>{esc(commit)}</code>" if commit else MISSING),
        ("Device(s)", ", ".join(f"<code>{esc(d)}</code>" for d in devices) or MISSING),
        ("Harness", esc(manifest.get("harness_version") or MISSING)),
        ("Run directory", f"<code>{esc(results.run_dir)}</code>"),
    ]
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    callout = ""
    if total and ctx.completed.empty:
        callout = (
            '<p class="callout">No trial completed, so there are no metrics to compare; '
            "the trials table below lists each trial's error.</p>"
        )
    elif not total:
        callout = '<p class="callout">This run has no trial results.</p>'
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in SECTIONS)
    return (
        f"<header><h1>{esc(results.name)}</h1>"
        '<p class="subtitle">Multi-task task-weighting benchmark report</p>'
        f'<dl class="meta">{meta}</dl>{callout}<nav>{nav}</nav></header>'
    )


def section_leaderboard(ctx: ReportContext) -> str:
    """Method x backbone: test AUROC and accuracy mean ± std, throughput, memory, counts."""
    if ctx.board.empty:
        return empty_html("No trials, so there is no leaderboard.")
    text_columns = (1, 2)  # method, backbone
    headers = [(h, "" if i in text_columns else "num") for i, h in enumerate(LEADERBOARD_HEADERS)]
    rows = []
    for rank, (_, row) in enumerate(ctx.board.iterrows(), start=1):
        texts = leaderboard_cells(row, rank)
        cells = [
            f'<td class="num">{esc(text)}</td>'
            if i not in text_columns
            else f"<td>{esc(text)}</td>"
            for i, text in enumerate(texts)
        ]
        cells[1] = f"<td>{method_cell(row['method'], ctx.palette)}</td>"
        cells[-1] = f'<td class="num count">{esc(texts[-1])}</td>'
        incomplete = row["n_completed"] < row["n_trials"]
        row_class = ' class="incomplete"' if incomplete else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    caption = (
        "Each row is one method and backbone, best test mean AUROC first; values are the mean "
        "± std over completed seeds (— when there is a single seed or no value), and "
        "“Completed” counts completed trials out of all trials, failed and diverged ones "
        "being excluded from every mean."
    )
    return table_html(headers, rows) + f'<p class="caption">{caption}</p>'


def section_per_task(ctx: ReportContext) -> str:
    """Heatmap of per-task test AUROC, method [backbone] x task."""
    if ctx.completed.empty:
        return empty_html("No completed trials, so there is no per-task AUROC to show.")
    per_task = per_task_test_auroc(ctx.trials, ctx.results.epochs)
    if per_task.empty:
        return empty_html("The completed trials have no test-split rows in epochs.parquet.")
    configs = [
        c for c in ctx.configs if c in set(zip(per_task.method, per_task.backbone, strict=True))
    ]
    tasks = [t for t in ctx.results.tasks if t in set(per_task.task)]
    fig = per_task_auroc_heatmap(per_task, configs, tasks)
    caption = (
        "Each cell is the test AUROC on one task (column), averaged over the completed seeds "
        "of one method and backbone (row, best overall first); brighter is better, colours "
        "span the range seen in this run, and “n/a” marks a task whose test split has a "
        "single class."
    )
    return figure_html(fig, "fig-per-task-auroc", caption)


def section_cost(ctx: ReportContext) -> str:
    """Bar charts of throughput and peak memory per method x backbone."""
    if ctx.completed.empty:
        return empty_html("No completed trials, so there is no throughput or memory to show.")
    parts = []
    charts = [
        (
            "images_per_second",
            "fig-throughput",
            "Training throughput",
            "Images per second",
            THROUGHPUT_DIGITS,
            "Each bar is the mean training throughput in images per second over the completed "
            "seeds of one method and backbone, with an error bar of ± one std across seeds "
            "(none for a single seed); taller is faster.",
        ),
        (
            "peak_memory_mb",
            "fig-peak-memory",
            "Peak memory",
            "Peak memory (MB)",
            MEMORY_DIGITS,
            "Each bar is the mean peak memory in MB during training over the completed seeds of "
            "one method and backbone, with an error bar of ± one std across seeds (none for a "
            "single seed); shorter is leaner.",
        ),
    ]
    for column, div_id, title, y_title, digits, caption in charts:
        parts.append(f"<h3>{esc(title)}</h3>")
        stats = metric_by_config(ctx.trials, column)
        if stats.empty or stats["mean"].isna().all():
            parts.append(empty_html(f"{title} was not recorded for any completed trial."))
            continue
        fig = config_bar_chart(
            stats,
            ctx.configs,
            ctx.palette,
            title=f"{title} per method (mean ± std over seeds)",
            y_title=y_title,
            digits=digits,
        )
        parts.append(figure_html(fig, div_id, caption))
    return "".join(parts)


def section_trials(ctx: ReportContext) -> str:
    """Every trial with its status, best epoch, test AUROC, wall time and error line."""
    trials = ctx.trials
    if trials.empty:
        return empty_html("No trials.")
    manifest_trials: dict[str, Any] = ctx.results.manifest.get("trials") or {}
    headers = [
        ("Trial", ""),
        ("Method", ""),
        ("Backbone", ""),
        ("Seed", "num"),
        ("Status", ""),
        ("Epochs", "num"),
        ("Best epoch", "num"),
        ("Test AUROC", "num"),
        ("Wall time", "num"),
        ("Error", ""),
    ]
    ordered = trials.sort_values(["method", "backbone", "seed", "trial_id"], kind="mergesort")
    rows = []
    for row in ordered.itertuples(index=False):
        error = row.error
        if is_missing(error) and not isinstance(error, str):
            entry = manifest_trials.get(row.trial_id)
            error = entry.get("error") if isinstance(entry, dict) else None
        full = error if isinstance(error, str) else ""
        cells = [
            f"<td><code>{esc(row.trial_id)}</code></td>",
            f"<td>{method_cell(row.method, ctx.palette)}</td>",
            f"<td>{esc(row.backbone)}</td>",
            f'<td class="num">{fmt_int(row.seed)}</td>',
            f'<td class="status status-{esc(row.status)}">{esc(row.status)}</td>',
            f'<td class="num">{fmt_int(row.epochs_completed)}</td>',
            f'<td class="num">{fmt_int(row.best_epoch)}</td>',
            f'<td class="num">{fmt_number(row.test_mean_auroc, AUROC_DIGITS)}</td>',
            f'<td class="num">{fmt_duration(row.wall_time_s)}</td>',
            f'<td class="error" title="{esc(full)}">{esc(error_line(full))}</td>'
            if full
            else "<td></td>",
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    caption = (
        "One row per trial, ordered by method, backbone and seed; test AUROC is the mean over "
        "tasks at the best validation epoch, and the error column shows the last line of a "
        "failed or diverged trial's error (hover for the full text)."
    )
    return table_html(headers, rows) + f'<p class="caption">{caption}</p>'


SECTIONS: list[Section] = [
    Section("leaderboard", "Leaderboard", section_leaderboard),
    Section("per-task-auroc", "Per-task test AUROC", section_per_task),
    Section("cost", "Throughput and memory", section_cost),
    Section("trials", "Trials", section_trials),
]


# --- the page ----------------------------------------------------------------------------


def render_report(results: RunResults) -> str:
    """The whole report as one HTML string."""
    ctx = build_context(results)
    body = [section_header(ctx)]
    for section in SECTIONS:
        body.append(
            f'<section id="{section.anchor}"><h2>{esc(section.title)}</h2>'
            f"{section.render(ctx)}</section>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(results.name)} — benchmark report</title>\n"
        f"<style>{CSS}</style>\n"
        f'<script type="text/javascript">{_plotly_js()}</script>\n'
        "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write report.html, summary.csv and summary.md into ``run_dir``; return the HTML path."""
    results = load_run(run_dir)
    board = leaderboard(results.trials)
    root = results.run_dir
    _write_text(root / SUMMARY_CSV_FILE, board.to_csv(index=False))
    _write_text(root / SUMMARY_MD_FILE, leaderboard_markdown(board, f"{results.name}: leaderboard"))
    report = root / REPORT_FILE
    _write_text(report, render_report(results))
    return report
