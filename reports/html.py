"""The self-contained HTML report: one function per section, assembled by :func:`render_context`.

The page opens offline: plotly.js is embedded once in the head, figures are emitted without
it, and there is no external script, stylesheet or font. Every user-supplied string (run
name, method, backbone and task names, errors, paths) is HTML-escaped via :func:`esc`.

To add a section, write ``def section_x(ctx: ReportContext) -> str`` returning the section's
body and append a :class:`Section` to ``SECTIONS``.
"""

from __future__ import annotations

import html
import json
import math
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.offline

from reports import summary as sm
from reports.figures import (
    Config,
    config_bar_chart,
    loss_curves,
    method_palette,
    pareto_plot,
    profile_plot,
    step_time_stack,
    task_heatmap,
    time_to_target_strip,
    tuning_strip,
    val_auroc_per_epoch,
    weight_trajectories,
)
from reports.format import (
    MEMORY_DIGITS,
    MISSING,
    THROUGHPUT_DIGITS,
    error_line,
    fmt_duration,
    fmt_int,
    fmt_number,
    fmt_p,
    fmt_ratio,
    fmt_settings,
    fmt_signed,
    fmt_space,
    fmt_timestamp,
    is_missing,
    parse_timestamp,
    plural,
)
from reports.load import (
    SINGLE_TASK,
    Comparison,
    ReportError,
    RunResults,
    data_label,
    load_runs,
)
from reports.stats import ALPHA, MIN_PAIRS
from reports.tables import (
    SUMMARY_CAPTION,
    TEXT_COLUMNS,
    THRESHOLD_NOTE,
    TUNING_CAPTION,
    TUNING_HEADERS,
    best_cells,
    summary_cells,
    summary_headers,
    summary_markdown,
    tuning_markdown,
)
from reports.verdict import VERDICT_RULE, WorkloadVerdict, workload_verdicts

REPORT_FILE = "report.html"  # a run's own report, in its run directory
SUMMARY_CSV_FILE = "summary.csv"  # beside REPORT_FILE; X.html has X.summary.csv
SUMMARY_MD_FILE = "summary.md"

DISCLAIMER = (
    "Research benchmark results, not a medical device: not for diagnosis or any clinical use."
)

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg-alt: #f6f8fa;
        --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 64px; }
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
table.summary { font-size: 0.84rem; }
table.summary th { white-space: normal; vertical-align: bottom; }
table.summary th, table.summary td { padding: 5px 7px; }
table.summary td:nth-child(2) { white-space: nowrap; }
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
.status-retried { color: var(--warn); }
.callout { border-left: 4px solid var(--bad); background: #fff5f5; padding: 8px 12px;
           margin: 16px 0; }
.callout.warn { border-left-color: var(--warn); background: #fff8e5; }
.callout.info { border-left-color: #0969da; background: #f0f6ff; }
.disclaimer { color: var(--muted); font-size: 0.88rem; margin: 4px 0 0; }
.verdict { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px;
           margin: 14px 0 0; background: var(--bg-alt); }
.verdict h2 { font-size: 1.1rem; margin: 4px 0 6px; padding: 0; border: 0; }
.verdict ul { margin: 4px 0 8px; padding-left: 20px; }
.verdict p { margin: 4px 0; }
td.flag, span.flag { color: var(--bad); font-weight: 600; }
td.best { font-weight: 700; }
.star { color: var(--warn); margin-left: 3px; }
.pm { color: var(--muted); font-weight: 400; font-size: 0.9em; }
tr.trivial td { color: var(--muted); font-style: italic; }
td.better { color: var(--ok); font-weight: 600; }
td.worse { color: var(--bad); font-weight: 600; }
ul.tally { margin: 4px 0 18px; padding-left: 20px; font-size: 0.92rem; }
details { margin: 8px 0 16px; }
summary { cursor: pointer; color: #0969da; }
pre { background: var(--bg-alt); padding: 10px 12px; overflow-x: auto; font-size: 0.82rem;
      border-radius: 4px; }
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


DEFAULT_BASELINE = "equal"
DEFAULT_TARGET_FRACTION = 0.98
STUDIED_METHOD = "deepchest"  # the method under study: compared with everything too


@dataclass
class ReportOptions:
    """``baseline`` None means the default (``equal``), which may be absent from the runs; a
    baseline named explicitly must be one of the methods that ran."""

    baseline: str | None = None
    target_fraction: float = DEFAULT_TARGET_FRACTION

    def __post_init__(self) -> None:
        if not 0 < self.target_fraction <= 1.5:
            raise ReportError(f"--target-fraction must be in (0, 1.5], got {self.target_fraction}")

    @property
    def baseline_method(self) -> str:
        return self.baseline if self.baseline is not None else DEFAULT_BASELINE


@dataclass
class ReportContext:
    """What every section may draw on, computed once."""

    results: Comparison
    options: ReportOptions
    summary: pd.DataFrame  # reports.summary.summary_table, trivial rows included
    palette: dict[str, str]  # method -> colour, shared by every figure and table
    configs: list[Config]  # (method, workload), workload by workload, best first
    methods: list[str] = field(default_factory=list)  # sorted
    verdicts: list[WorkloadVerdict] = field(default_factory=list)

    @property
    def trials(self) -> pd.DataFrame:
        return self.results.trials

    @property
    def epochs(self) -> pd.DataFrame:
        return self.results.epochs

    @property
    def completed(self) -> pd.DataFrame:
        return sm.completed_trials(self.results.trials)

    @property
    def baseline(self) -> str:
        return self.options.baseline_method

    @property
    def workloads(self) -> list[str]:
        return sm.workloads(self.results.trials)

    def workload_heading(self, workload: str) -> str:
        """An ``<h3>`` per workload, only when there are several."""
        return f"<h3>{esc(workload)}</h3>" if len(self.workloads) > 1 else ""


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    render: Callable[[ReportContext], str]


def build_context(results: Comparison, options: ReportOptions | None = None) -> ReportContext:
    options = options or ReportOptions()
    table = sm.summary_table(results.trials, results.epochs)
    palette = method_palette(results.trials["method"].dropna())
    ranked = table[table["method"] != sm.TRIVIAL]
    configs = [(row.method, row.workload) for row in ranked.itertuples(index=False)]
    methods = sorted(set(results.trials["method"].dropna()))
    if options.baseline is not None and options.baseline not in methods:
        raise ReportError(
            f"--baseline {options.baseline!r} did not run; methods in these runs: "
            f"{', '.join(methods) or 'none'}"
        )
    return ReportContext(
        results=results,
        options=options,
        summary=table,
        palette=palette,
        configs=configs,
        methods=methods,
        verdicts=workload_verdicts(results.trials, table, options.baseline_method),
    )


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


def method_cell(method: object, palette: dict[str, str], label: object = None) -> str:
    """The method's colour swatch and its name (or ``label``, e.g. with its backbone)."""
    colour = palette.get(str(method), "#999")  # our palette, never user input
    text = method if label is None else label
    return f'<span class="swatch" style="background:{colour}"></span>{esc(text)}'


def table_html(headers: list[tuple[str, str]], rows: list[str], css_class: str = "") -> str:
    """``headers`` are (text, css class) pairs; ``rows`` are ready ``<tr>`` strings."""
    head = "".join(
        f'<th class="{cls}">{esc(text)}</th>' if cls else f"<th>{esc(text)}</th>"
        for text, cls in headers
    )
    return (
        f'<div class="table-wrap"><table class="{css_class}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


# --- sections ----------------------------------------------------------------------------


def _first_value(frame: pd.DataFrame, column: str) -> Any:
    values = frame[column].dropna() if column in frame.columns else pd.Series(dtype=float)
    return values.iloc[0] if len(values) else None


def report_notes(results: Comparison) -> list[str]:
    """Plain sentences every report carries above its numbers: where the images came from
    when a run used the synthetic generator, and what these results are not."""
    synthetic = [
        name
        for run, name in zip(results.runs, results.run_names, strict=True)
        if isinstance(run.config.get("data"), dict)
        and run.config["data"].get("dataset") == "synthetic"
    ]
    notes = []
    if synthetic:
        which = (
            "These numbers"
            if len(synthetic) == len(results.runs)
            else (f"The numbers of {', '.join(synthetic)}")
        )
        notes.append(
            f"{which} come from a synthetic image generator (data.dataset: synthetic), not "
            "from real X-rays: they test the harness and the methods' mechanics, not how "
            "well anything reads a chest X-ray."
        )
    notes.append(DISCLAIMER)
    return notes


def partial_notes(results: Comparison) -> list[str]:
    """One sentence per run read before its tables were written (it still runs, or was
    interrupted): how many trials finished, and which are still missing."""
    several = len(results.runs) > 1
    return [
        f"{name}: {run.partial.sentence}" if several else run.partial.sentence
        for run, name in zip(results.runs, results.run_names, strict=True)
        if run.partial is not None
    ]


def verdict_html(ctx: ReportContext) -> str:
    """The answer first: per workload, the sentences of :mod:`reports.verdict` and its rule."""
    if ctx.trials.empty or ctx.completed.empty:
        return ""
    several = len(ctx.verdicts) > 1
    parts = []
    for verdict in ctx.verdicts:
        items = "".join(f"<li>{esc(line)}</li>" for line in verdict.lines)
        heading = f"<p><strong>{esc(verdict.workload)}</strong></p>" if several else ""
        parts.append(f"{heading}<ul>{items}</ul>")
    return (
        f'<div class="verdict" id="verdict"><h2>Verdict (against {esc(ctx.baseline)})</h2>'
        f'{"".join(parts)}<p class="caption">{esc(VERDICT_RULE)}</p></div>'
    )


def section_header(ctx: ReportContext) -> str:
    """Title, the trials by status, the notes, the verdict and the table of contents."""
    counts = sm.status_counts(ctx.trials) if not ctx.trials.empty else {}
    total = sum(counts.values())
    by_status = ", ".join(
        f'<span class="status status-{esc(s)}">{n} {esc(s)}</span>' for s, n in counts.items()
    )
    callout = ""
    if total and ctx.completed.empty:
        callout = (
            '<p class="callout">No trial completed, so there are no metrics to compare; '
            "the provenance section lists each trial's error.</p>"
        )
    elif not total:
        callout = '<p class="callout">This run has no trial results.</p>'
    nav = "".join(f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in SECTIONS)
    runs = len(ctx.results.runs)
    subtitle = "Multi-task task-weighting benchmark report"
    if runs > 1:
        subtitle += f" · {runs} runs merged"
    notes = report_notes(ctx.results)
    synthetic = "".join(f'<p class="callout info">{esc(n)}</p>' for n in notes[:-1])
    # first thing on the page: these are not all of the run's trials
    partial = "".join(
        f'<p class="callout warn partial">{esc(n)}. The numbers below are of '
        "the finished trials only; the run's final report replaces this one.</p>"
        for n in partial_notes(ctx.results)
    )
    return (
        f"<header>{partial}<h1>{esc(ctx.results.name)}</h1>"
        f'<p class="subtitle">{subtitle} · {plural(total, "trial")}'
        f"{': ' + by_status if by_status else ''}</p>"
        f'<p class="disclaimer">{esc(notes[-1])}</p>{synthetic}{callout}'
        f"{verdict_html(ctx)}<nav>{nav}</nav></header>"
    )


def _what_was_run(ctx: ReportContext) -> str:
    items: list[tuple[str, str]] = []
    for run in ctx.results.runs:
        cfg, trials = run.config, run.trials
        prefix = f"{run.name}: " if len(ctx.results.runs) > 1 else ""
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        sizes = [
            f"{split} {fmt_int(_first_value(trials, f'n_{split}'))}"
            for split in ("train", "val", "test")
        ]
        where = data.get("prepared") or data.get("root")
        items.append(
            (
                f"{prefix}Data",
                f"{esc(data_label(cfg))}, {plural(len(run.tasks), 'finding')}"
                + (f" from <code>{esc(where)}</code>" if where else "")
                + f"; images: {esc(', '.join(sizes))}",
            )
        )
        train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        seeds = sorted({int(s) for s in trials["seed"].dropna()})
        items.append(
            (
                f"{prefix}Grid",
                f"methods {esc(', '.join(sorted(set(trials['method'].dropna()))))}; "
                f"backbones {esc(', '.join(sorted(set(trials['backbone'].dropna()))))}; "
                f"seeds {esc(', '.join(map(str, seeds)))}; "
                f"{esc(train.get('epochs', MISSING))} epochs, "
                f"batch {esc(train.get('batch_size', MISSING))}",
            )
        )
        devices = sorted(
            {device_label(d, g) for d, g in zip(trials["device"], trials["gpu_name"], strict=True)}
            - {""}
        )
        text = ", ".join(f"<code>{esc(d)}</code>" for d in devices) or MISSING
        if nodes := nodes_text(run.manifest, trials):
            text += f" on {esc(nodes)}"
        else:  # a run recorded before its nodes were: the driver's host
            hardware = run.manifest.get("hardware") or {}
            cpu, memory = hardware.get("cpu_count"), hardware.get("memory_gb")
            host = [f"{cpu} CPU cores" if cpu else "", f"{memory} GB memory" if memory else ""]
            host_text = ", ".join(part for part in host if part)
            if host_text:
                text += f" on a host with {esc(host_text)}"
        items.append((f"{prefix}Hardware", text))
    meta = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="meta">{meta}</dl>'


def summary_table_html(ctx: ReportContext) -> str:
    table = ctx.summary
    headers = [
        (h, "" if i in TEXT_COLUMNS else "num")
        for i, h in enumerate(summary_headers(ctx.results.workload_is_backbone))
    ]
    best = best_cells(table)
    rows = []
    for index, row in table.iterrows():
        texts = summary_cells(row)
        cells = []
        for i, text in enumerate(texts):
            mark = (index, i) in best
            cls = "" if i in TEXT_COLUMNS else "num"
            cls += " best" if mark else ""
            mean, _, half = text.partition(" ± ")
            content = esc(mean) + (f'<span class="pm"> ± {esc(half)}</span>' if half else "")
            content += '<span class="star" title="best">★</span>' if mark else ""
            cells.append(f'<td class="{cls.strip()}">{content}</td>')
        trivial = row["method"] == sm.TRIVIAL
        if not trivial:
            cells[1] = f"<td>{method_cell(row['method'], ctx.palette)}</td>"
            count, _, flag = texts[-1].partition(" ")
            flag_html = f' <span class="flag">{esc(flag)}</span>' if flag else ""
            cells[-1] = f'<td class="num count">{esc(count)}{flag_html}</td>'
        classes = []
        if trivial:
            classes.append("trivial")
        elif row["n_completed"] < row["n_trials"]:
            classes.append("incomplete")
        row_class = f' class="{" ".join(classes)}"' if classes else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    caption = (
        SUMMARY_CAPTION[0].upper()
        + SUMMARY_CAPTION[1:].replace("* = best", "★ = best")
        + ". Accuracy is the mean over findings at probability 0.5, exact match the fraction "
        "of test images whose every labelled finding is right, macro F1 the mean F1 over "
        "findings; “Completed” counts completed trials out of all, failed and diverged ones "
        "being left out of every mean."
    )
    return (
        table_html(headers, rows, "summary")
        + f'<p class="caption">{esc(caption)}</p><p class="caption">{esc(THRESHOLD_NOTE)}</p>'
    )


def section_summary(ctx: ReportContext) -> str:
    """What was run, and the answer in one table."""
    if ctx.trials.empty:
        return _what_was_run(ctx) + empty_html("No trials, so there is nothing to compare.")
    return _what_was_run(ctx) + summary_table_html(ctx)


def _seed_warning(table: pd.DataFrame) -> str:
    few = table[~table["enough"].astype(bool) & (table["n"] > 0)]
    none = sorted(set(table[table["n"] == 0]["method"]))
    out = ""
    if none:
        out += empty_html(f"No completed trial to pair for: {', '.join(none)}.")
    if few.empty:
        return out
    least = int(few["n"].min())
    return out + (
        f'<p class="callout warn">Only {plural(least, "paired seed")} for some '
        "comparisons: with fewer than 3 the interval and p-value say almost nothing "
        "(shown as — where they cannot be computed, and never coloured as significant). Run "
        "more seeds before trusting a difference.</p>"
    )


def _paired_table(ctx: ReportContext, table: pd.DataFrame) -> str:
    headers = [("Method", ""), ("Seeds", "num")]
    for metric in sm.PAIRED_METRICS:
        headers += [
            (f"Δ {metric.header} [95% CI]", "num"),
            ("p", "num"),
            ("p (Holm)", "num"),
        ]
    rows = []
    for method in ctx.methods:
        mine = table[table["method"] == method]
        if mine.empty or int(mine["n"].iloc[0]) == 0:
            continue
        cells = [f"<td>{method_cell(method, ctx.palette)}</td>"]
        cells.append(f'<td class="num">{int(mine["n"].iloc[0])}</td>')
        for metric in sm.PAIRED_METRICS:
            part = mine[mine["metric"] == metric.column]
            if part.empty:
                cells += ['<td class="num">—</td>'] * 3
                continue
            r = part.iloc[0]
            digits = metric.digits + 1  # differences are small: one digit more
            diff = fmt_signed(r["mean_diff"], digits)
            if not is_missing(r["low"]):
                diff += f" [{fmt_signed(r['low'], digits)}, {fmt_signed(r['high'], digits)}]"
            significant = bool(r["enough"]) and not is_missing(r["p_holm"]) and r["p_holm"] < 0.05
            cls = "num"
            if significant:
                cls += " better" if r["mean_diff"] > 0 else " worse"
            cells += [
                f'<td class="{cls}">{esc(diff)}</td>',
                f'<td class="num">{esc(fmt_p(r["p_value"]))}</td>',
                f'<td class="{cls}">{esc(fmt_p(r["p_holm"]))}</td>',
            ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return table_html(headers, rows)


def _delta_m_html(ctx: ReportContext, reference: str) -> str:
    """Δm% of every method against ``reference`` (the baseline, or the single-task
    references), per workload, with its interval over seeds."""
    table = sm.delta_m_table(ctx.trials, ctx.epochs, reference)
    table = table[table["n"] > 0]
    if table.empty:
        return ""
    what = (
        "the single-task references (stl: one network per finding)"
        if reference == SINGLE_TASK
        else esc(reference)
    )
    parts = [f"<h3>Δm% against {what}</h3>"]
    headers = [("Method", ""), ("Seeds", "num"), ("Δm% [95% CI]", "num")]
    for workload in ctx.workloads:
        here = table[table["workload"] == workload]
        if here.empty:
            continue
        rows = []
        for method in ctx.methods:
            mine = here[here["method"] == method]
            if mine.empty:
                continue
            r = mine.iloc[0]
            text = fmt_signed(r["mean"], 2)
            if not is_missing(r["low"]):
                text += f" [{fmt_signed(r['low'], 2)}, {fmt_signed(r['high'], 2)}]"
            rows.append(
                f"<tr><td>{method_cell(method, ctx.palette)}</td>"
                f'<td class="num">{int(r["n"])}</td><td class="num">{esc(text)}</td></tr>'
            )
        parts.append(ctx.workload_heading(workload) + table_html(headers, rows))
    parts.append(
        '<p class="caption">Δm% (Maninis et al., CVPR 2019; the measure of LibMTL and of the '
        "Nash-MTL and FAMO papers): the mean relative change against "
        f"{what} over every finding's test AUROC, AUPRC and loss, in percent, "
        "with the loss's sign flipped so that positive is better; computed per seed on the "
        "same seed of both and averaged, with a 95% t-interval over seeds. A finding whose "
        "metric is undefined on either side (a one-class test split) is left out.</p>"
    )
    return "".join(parts)


def section_paired(ctx: ReportContext) -> str:
    """Differences to the baseline and to DeepChest, paired by seed, Holm-corrected."""
    if ctx.completed.empty:
        return empty_html("No completed trials, so there is nothing to compare.")
    references = [ctx.baseline] + ([STUDIED_METHOD] if ctx.baseline != STUDIED_METHOD else [])
    parts = []
    shown: set[str] = set()  # workloads whose comparison with the baseline is on the page
    for reference in references:
        table = sm.paired_comparisons(ctx.trials, reference)
        parts.append(f"<h3>Against {esc(reference)}</h3>")
        if reference not in set(ctx.trials["method"]):
            parts.append(empty_html(f"Method {reference!r} is not in this comparison."))
            continue
        if reference not in set(ctx.completed["method"]):
            parts.append(empty_html(f"No {reference!r} trial completed, so nothing pairs with it."))
            continue
        if table.empty or not (table["n"] > 0).any():
            parts.append(empty_html(f"No other method has completed trials beside {reference!r}."))
            continue
        for workload in ctx.workloads:
            here = table[table["workload"] == workload]
            if here.empty:
                continue
            mirrored = set(here["method"]) == {ctx.baseline} and workload in shown
            if reference != ctx.baseline and mirrored:
                parts.append(
                    ctx.workload_heading(workload)
                    + empty_html(
                        f"Only {ctx.baseline} and {reference} ran here: this is the comparison "
                        "above with the sign flipped."
                    )
                )
                continue
            if reference == ctx.baseline and (here["n"] > 0).any():
                shown.add(workload)
            parts.append(ctx.workload_heading(workload) + _seed_warning(here))
            parts.append(_paired_table(ctx, here))
        parts.append(
            '<p class="caption">Each row is one method minus '
            f"{esc(reference)} on the same seeds: the mean difference in mean test AUROC and in "
            "mean accuracy with a 95% paired t-interval, its two-sided paired t-test p-value, "
            "and the p-value Holm-corrected over the methods in the table; a difference that "
            "survives the correction at 5% is green when the method is better and red when it "
            "is worse.</p>"
        )
        if reference == ctx.baseline:
            parts.append(_delta_m_html(ctx, ctx.baseline))
    if SINGLE_TASK in set(ctx.completed["method"]) and ctx.baseline != SINGLE_TASK:
        parts.append(_delta_m_html(ctx, SINGLE_TASK))  # also without the baseline
    return "".join(parts)


def section_per_task(ctx: ReportContext) -> str:
    """Per-finding test AUROC, its difference to the baseline and the per-task loss change."""
    if ctx.completed.empty:
        return empty_html("No completed trials, so there is nothing per finding to show.")
    auroc = sm.per_task(ctx.trials, ctx.epochs, "auroc")
    if auroc.empty:
        return empty_html("The completed trials have no test rows in epochs.parquet.")
    tasks = [t for t in ctx.results.tasks if t in set(auroc["task"])]
    present = set(zip(auroc["method"], auroc["workload"], strict=True))
    configs = [c for c in ctx.configs if c in present]
    parts = [
        figure_html(
            task_heatmap(
                auroc,
                configs,
                tasks,
                column="mean",
                title="Test AUROC per finding (mean over seeds)",
                z_title="AUROC",
            ),
            "fig-task-auroc",
            "Each cell is the test AUROC of one finding (column) for one method (row, best "
            "overall first), averaged over completed seeds; brighter is better and “n/a” marks "
            "a finding whose test split has a single class.",
        )
    ]
    baseline = ctx.baseline
    if baseline not in set(auroc["method"]):
        parts.append(empty_html(f"No completed {baseline!r} trial, so no differences to it."))
        return "".join(parts)
    with_baseline = {w for m, w in configs if m == baseline}
    others = [c for c in configs if c[0] != baseline and c[1] in with_baseline]
    if not others:
        parts.append(empty_html(f"Only {baseline!r} ran, so there is no difference to show."))
        return "".join(parts)
    noise_note = (
        f" Greyed cells marked “·” are within noise: fewer than {MIN_PAIRS} paired "
        "seeds, or the paired t-test over seeds does not survive Holm's correction over the "
        f"findings of that method at p < {ALPHA:g} (hover for the 95% paired interval, "
        "which is per finding and uncorrected, and the Holm p-value). The colour scale is "
        "symmetric around 0 and spans the largest difference shown."
    )
    diff = sm.per_task_paired(ctx.trials, ctx.epochs, "auroc", baseline)
    parts.append(
        figure_html(
            task_heatmap(
                diff,
                others,
                tasks,
                column="diff",
                title=f"Test AUROC minus {baseline}'s, per finding",
                z_title="Δ AUROC",
                diverging=True,
            ),
            "fig-task-auroc-diff",
            f"Each cell is a method's test AUROC on one finding minus {esc(baseline)}'s on the "
            "same seed, averaged over seeds; green is better than the baseline, red worse."
            + noise_note,
        )
    )
    loss_diff = sm.per_task_paired(ctx.trials, ctx.epochs, "loss", baseline)
    parts.append(
        figure_html(
            task_heatmap(
                loss_diff,
                others,
                tasks,
                column="diff",
                title=f"Test loss minus {baseline}'s, per finding",
                z_title="Δ loss",
                digits=4,
                diverging=True,
                lower_is_better=True,
            ),
            "fig-task-loss-diff",
            f"Each cell is a method's test binary cross-entropy on one finding minus "
            f"{esc(baseline)}'s on the same seed, averaged over seeds; green (negative) means "
            "the method lowered that finding's loss, red means it raised it." + noise_note,
        )
    )
    counts = []
    for (method, workload), group in loss_diff.groupby(["method", "workload"], sort=False):
        finite = group.dropna(subset=["diff"])
        resolved = finite[~finite["noise"].astype(bool)]
        counts.append(
            f"<li>{method_cell(method, ctx.palette)}"
            f"{' [' + esc(workload) + ']' if len(ctx.workloads) > 1 else ''}: lower test loss "
            f"than {esc(baseline)} on {int((finite['diff'] < 0).sum())} of {len(finite)} "
            f"findings, higher on {int((finite['diff'] > 0).sum())}; outside noise: lower on "
            f"{int((resolved['diff'] < 0).sum())}, higher on {int((resolved['diff'] > 0).sum())}"
            "</li>"
        )
    parts.append(f'<ul class="tally">{"".join(counts)}</ul>')
    return "".join(parts)


def section_dynamics(ctx: ReportContext) -> str:
    """Loss curves per task (selector), mean val AUROC per epoch, task-weight trajectories."""
    if ctx.completed.empty:
        return empty_html("No completed trials, so there are no training curves to show.")
    loss = sm.curves(ctx.epochs, ctx.trials, "loss")
    auroc = sm.curves(ctx.epochs, ctx.trials, "auroc")
    weights = sm.curves(ctx.epochs, ctx.trials, "weight_normalized")
    parts = []
    for n, workload in enumerate(ctx.workloads):
        trained = set(weights[weights["workload"] == workload]["method"])
        methods = [m for m, w in ctx.configs if w == workload and m in trained]
        if not methods:
            continue
        here = set(loss[loss["workload"] == workload]["task"])
        tasks = [t for t in ctx.results.tasks if t in here]
        suffix = f" [{workload}]" if len(ctx.workloads) > 1 else ""
        parts.append(ctx.workload_heading(workload))
        parts.append(
            figure_html(
                loss_curves(
                    loss[loss["workload"] == workload],
                    methods,
                    tasks,
                    ctx.palette,
                    title=f"Train and val loss per epoch{suffix}",
                ),
                f"fig-loss-curves-{n}",
                "Solid lines are the training split's loss and dashed the validation split's "
                "(after each epoch, no augmentation, mean over seeds) for the finding picked in "
                "the menu, so a widening gap between a method's two lines is overfitting.",
            )
        )
        parts.append(
            figure_html(
                val_auroc_per_epoch(
                    auroc[auroc["workload"] == workload],
                    methods,
                    ctx.palette,
                    title=f"Mean val AUROC per epoch{suffix}",
                ),
                f"fig-val-auroc-{n}",
                "Each line is a method's validation AUROC after each epoch (mean over findings, "
                "then over seeds, error bars ± one std over seeds): higher and earlier is better.",
            )
        )
        parts.append(
            figure_html(
                weight_trajectories(
                    weights[weights["workload"] == workload],
                    methods,
                    tasks,
                    title=f"Task weights per epoch{suffix}",
                    first_shown=STUDIED_METHOD,
                ),
                f"fig-weights-{n}",
                "Each line is one finding's task weight in an epoch (mean over its steps, "
                "normalised so the findings sum to 1, mean over seeds) for the method picked in "
                "the menu, so lines spreading away from the dotted equal-weighting line show the "
                "method shifting effort between findings.",
            )
        )
    return "".join(parts)


def _cost_table_html(ctx: ReportContext, cost: pd.DataFrame) -> str:
    headers = [
        ("Method", ""),
        ("Workload" if not ctx.results.workload_is_backbone else "Backbone", ""),
        ("Images/s", "num"),
        (f"vs {ctx.baseline}", "num"),
        ("Peak memory (MB)", "num"),
        (f"vs {ctx.baseline}", "num"),
        ("Step (ms)", "num"),
    ]
    rows = {(r["method"], r["workload"]): r for _, r in cost.iterrows()}
    body = []
    for config in ctx.configs:
        if config not in rows:
            continue
        r = rows[config]
        body.append(
            "<tr>"
            f"<td>{method_cell(config[0], ctx.palette)}</td><td>{esc(config[1])}</td>"
            f'<td class="num">{fmt_number(r["images_per_second"], THROUGHPUT_DIGITS)}</td>'
            f'<td class="num">{fmt_ratio(r["images_per_second_ratio"])}</td>'
            f'<td class="num">{fmt_number(r["peak_memory_mb"], MEMORY_DIGITS)}</td>'
            f'<td class="num">{fmt_ratio(r["peak_memory_mb_ratio"])}</td>'
            f'<td class="num">{fmt_number(r["step_time_ms"], 1)}</td>'
            "</tr>"
        )
    return table_html(headers, body) + (
        '<p class="caption">Means over completed seeds of training throughput (images per '
        "second of training step time, after the first steps' warm-up), peak memory (CUDA "
        f"allocator peak on GPU, process RSS on CPU) and median step time; the ratios divide "
        f"by {esc(ctx.baseline)} on the same workload, so 0.80× throughput is 20% slower.</p>"
    )


def _targets_text(goal: sm.Targets) -> str:
    """The targets as HTML, each after its workload's name when there are several."""
    several = len(goal.by_workload) > 1
    return "; ".join(
        f"{esc(w) + ': ' if several else ''}{fmt_number(t, 4)}"
        for w, t in goal.by_workload.items()
        if not is_missing(t)
    )


def _time_to_target_html(ctx: ReportContext) -> str:
    goal = sm.targets(ctx.trials, ctx.epochs, ctx.baseline, ctx.options.target_fraction)
    per_trial = sm.time_to_target_trials(ctx.trials, ctx.epochs, goal)
    parts = ["<h3>Time to result</h3>"]
    missing = [w for w, t in goal.by_workload.items() if is_missing(t)]
    if missing:
        parts.append(
            empty_html(
                f"No completed {ctx.baseline!r} trial with a validation score on "
                f"{', '.join(missing)}, so there is no target to time against there."
            )
        )
    if per_trial.empty or all(is_missing(t) for t in goal.by_workload.values()):
        return "".join(parts)
    targets_text = _targets_text(goal)
    parts.append(
        f"<p>Target: mean val AUROC ≥ {goal.fraction:g} × {esc(ctx.baseline)}'s final mean val "
        f"AUROC (averaged over its seeds) = <strong>{targets_text}</strong>. Time is cumulative "
        "training time (evaluation excluded) at the end of the first epoch whose validation "
        "reaches the target, as the MLCommons AlgoPerf benchmark times training algorithms.</p>"
    )
    summary = sm.time_to_target_summary(per_trial, ctx.baseline)
    headers = [
        ("Method", ""),
        ("Workload" if not ctx.results.workload_is_backbone else "Backbone", ""),
        ("Reached", "num"),
        ("Median time", "num"),
        ("Fastest – slowest", "num"),
        ("Median epochs", "num"),
        (f"Time vs {ctx.baseline}", "num"),
    ]
    rows = {(r["method"], r["workload"]): r for _, r in summary.iterrows()}
    body = []
    for config in ctx.configs:
        if config not in rows:
            continue
        r = rows[config]
        never = "not reached"
        median = never if math.isinf(r["median_time_s"]) else fmt_duration(r["median_time_s"])
        epochs = never if math.isinf(r["median_epochs"]) else fmt_number(r["median_epochs"], 1)
        spread = (
            f"{fmt_duration(r['min_time_s'])} – {fmt_duration(r['max_time_s'])}"
            if r["n_reached"]
            else MISSING
        )
        cls = ' class="incomplete"' if r["n_reached"] < r["n"] else ""
        body.append(
            f"<tr{cls}><td>{method_cell(config[0], ctx.palette)}</td><td>{esc(config[1])}</td>"
            f'<td class="num count">{int(r["n_reached"])}/{int(r["n"])}</td>'
            f'<td class="num">{esc(median)}</td><td class="num">{esc(spread)}</td>'
            f'<td class="num">{esc(epochs)}</td><td class="num">{fmt_ratio(r["ratio"])}</td></tr>'
        )
    parts.append(table_html(headers, body))
    parts.append(
        '<p class="caption">Per method, how many trials reached the target, the median time '
        "(“not reached” once half or more never did; trials that never reach it count as "
        "infinitely slow rather than being dropped), the fastest and slowest trial that "
        f"reached it, and the median time divided by {esc(ctx.baseline)}'s (below 1× is "
        "faster).</p>"
    )
    parts.append(
        figure_html(
            time_to_target_strip(
                per_trial, ctx.configs, ctx.palette, title="Training time to the target, per trial"
            ),
            "fig-time-to-target",
            "Each dot is one trial (hover for its seed) at the training time it needed to reach "
            "the target; crosses in the “never” column are trials that did not reach it "
            "within their epochs.",
        )
    )
    parts.append("<h3>Performance profiles</h3>")
    if summary["workload"].nunique() < 2:
        parts.append(
            empty_html(
                "Performance profiles compare methods across several workloads; this report has "
                "one. Merge runs of other backbones or data sets (harness report RUN_DIR "
                "RUN_DIR ... --out FILE) to see them."
            )
        )
        return "".join(parts)
    profiles, areas = sm.performance_profiles(summary)
    parts.append(
        figure_html(
            profile_plot(
                sm.PROFILE_TAUS,
                profiles,
                areas,
                ctx.palette,
                title="Performance profiles of time to target",
            ),
            "fig-profiles",
            "For each method, the fraction of workloads on which its median time to the target "
            "is within tau times the fastest method's on that workload (AlgoPerf); a curve "
            "higher and further left is better, and the area over tau in [1, 4] (legend, 1 = "
            "fastest everywhere) summarises it in one number.",
        )
    )
    return "".join(parts)


def section_cost(ctx: ReportContext) -> str:
    """Throughput and memory with ratios, step-time phases, Pareto plot, time to result."""
    if ctx.completed.empty:
        return empty_html("No completed trials, so there is no cost to show.")
    cost = sm.cost_table(ctx.trials, ctx.baseline)
    parts = [_cost_table_html(ctx, cost)]
    for column, div_id, title, y_title, digits, caption in (
        (
            "images_per_second",
            "fig-throughput",
            "Training throughput",
            "Images per second",
            THROUGHPUT_DIGITS,
            "Each bar is a method's mean training throughput over completed seeds with ± one "
            "std across seeds; taller is faster.",
        ),
        (
            "peak_memory_mb",
            "fig-peak-memory",
            "Peak memory",
            "Peak memory (MB)",
            MEMORY_DIGITS,
            "Each bar is a method's mean peak memory during training over completed seeds with "
            "± one std across seeds; shorter is leaner.",
        ),
    ):
        stats = (
            ctx.completed.groupby(sm.CONFIG_KEYS)[column]
            .agg(mean="mean", std="std", n="count")
            .reset_index()
        )
        if stats["mean"].isna().all():
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
    parts.append(
        figure_html(
            step_time_stack(cost, ctx.configs, sm.PHASES, title="Where a training step goes"),
            "fig-step-phases",
            "Each bar is a method's median training step split into loading the batch (data), "
            "the forward pass, the backward pass with the task weighting (where gradient "
            "methods pay their extra passes) and the optimizer step, averaged over seeds.",
        )
    )
    methods_only = ctx.summary[ctx.summary["method"] != sm.TRIVIAL]
    fronts = {
        workload: sm.distinguishable_front(group)
        for workload, group in methods_only.groupby("workload", sort=False)
    }
    no_front = [w for w, front in fronts.items() if not front]
    parts.append(
        figure_html(
            pareto_plot(methods_only, ctx.palette, title="Accuracy against speed", fronts=fronts),
            "fig-pareto",
            "Each marker is a method (one marker shape per workload) at its mean training "
            "throughput and mean test AUROC, with 95% intervals over seeds on both axes; up and "
            "right is better. The dotted step line joins methods on the Pareto front (none "
            "faster and more accurate) whose intervals are disjoint from their neighbour's on "
            "both axes, so each step is a trade-off the seeds resolve"
            + (
                f"; no such front{' on ' + esc(', '.join(no_front)) if len(fronts) > 1 else ''}"
                ": the points are within each other's intervals, or there is one seed."
                if no_front
                else "."
            ),
        )
    )
    parts.append(_time_to_target_html(ctx))
    return "".join(parts)


def device_label(device: Any, gpu_name: Any) -> str:
    """``"cpu"``, ``"cuda (NVIDIA H200)"``; empty when unknown."""
    device = device if isinstance(device, str) else ""
    if isinstance(gpu_name, str) and gpu_name:
        return f"{device or 'cuda'} ({gpu_name})"
    return device


def nodes_text(manifest: dict[str, Any], trials: pd.DataFrame) -> str:
    """``"2 nodes: node-a (16 CPU, 1 GPU NVIDIA H200), node-b (16 CPU)"`` from the manifest's
    ``nodes``; a node's GPU model is Ray's, else the one its trials saw. Empty for a run
    recorded before nodes were."""
    nodes = [n for n in manifest.get("nodes") or [] if isinstance(n, dict)]
    if not nodes:
        return ""
    seen: dict[str, str] = {}  # node id or host name -> GPU model its trials reported
    for node_id, host, gpu in zip(
        trials["node_id"], trials["hostname"], trials["gpu_name"], strict=True
    ):
        if isinstance(gpu, str) and gpu:
            for key in (node_id, host):
                if isinstance(key, str):
                    seen.setdefault(key, gpu)
    parts = []
    for node in nodes:
        name = str(node.get("hostname") or node.get("node_ip") or "unknown host")
        gpus, cpus = node.get("gpus"), node.get("cpus")
        model = node.get("gpu_model") or seen.get(node.get("node_id")) or seen.get(name)
        res = [f"{_resource('CPU', float(cpus))} CPU"] if cpus is not None else []
        if gpus:
            res.append(f"{_resource('GPU', float(gpus))} GPU" + (f" {model}" if model else ""))
        parts.append(f"{name} ({', '.join(res)})" if res else name)
    return f"{plural(len(parts), 'node')}: {', '.join(parts)}"


def _attempts_html(manifest: dict[str, Any]) -> str:
    """Each `harness run` of this run directory: the first and every --resume."""
    attempts = [a for a in manifest.get("attempts") or [] if isinstance(a, dict)]
    if not attempts:
        return ""
    items = []
    for attempt in attempts:
        start, end = (
            parse_timestamp(attempt.get("started_at")),
            parse_timestamp(attempt.get("ended_at")),
        )
        took = ""
        if start and end and (start.tzinfo is None) == (end.tzinfo is None):
            took = f", {fmt_duration((end - start).total_seconds())}"
        # the attempt that writes the report at the run's end records its outcome just after
        outcome = str(attempt.get("outcome") or "ended its trials, then wrote this report")
        if outcome == "interrupted" and not end:
            outcome += " (end not recorded: the driver was killed)"
        trials_to_run = attempt.get("trials_to_run")
        what = "resumed" if attempt.get("resumed") else "started"
        if isinstance(trials_to_run, int):
            what += f", {plural(trials_to_run, 'trial')} to run"
        command = attempt.get("command")
        items.append(
            f"<li>{esc(fmt_timestamp(attempt.get('started_at')))}: {esc(what)}; "
            f"{esc(outcome)}{esc(took)}"
            + (f" &mdash; <code>{esc(command)}</code>" if command else "")
            + "</li>"
        )
    return f'<ol class="attempts">{"".join(items)}</ol>'


def _run_provenance(run: RunResults, heading_name: str | None) -> str:
    manifest = run.manifest
    started, finished = manifest.get("started_at"), manifest.get("finished_at")
    finished_text = fmt_timestamp(finished) if finished else "not finished"
    start_dt, end_dt = parse_timestamp(started), parse_timestamp(finished)
    if start_dt and end_dt and (start_dt.tzinfo is None) == (end_dt.tzinfo is None):
        finished_text += f" (took {fmt_duration((end_dt - start_dt).total_seconds())})"
    commit = manifest.get("git_commit")
    listed = set((manifest.get("trials") or {}).keys())
    unreported = sorted(listed - set(run.trials["trial_id"].dropna()))

    def mapping(value: Any) -> str:
        if not isinstance(value, dict) or not value:
            return MISSING
        return ", ".join(f"{esc(k)} {esc(_resource(k, v))}" for k, v in value.items())

    items: list[tuple[str, str]] = [
        ("Run directory", f"<code>{esc(run.run_dir)}</code>"),
        ("Command", f"<code>{esc(manifest.get('command') or MISSING)}</code>"),
        ("Started", esc(fmt_timestamp(started))),
        ("Finished", esc(finished_text)),
        ("Git commit", f"<code>{esc(commit)}</code>" if commit else MISSING),
        ("Harness", esc(manifest.get("harness_version") or MISSING)),
        ("Versions", mapping(manifest.get("versions"))),
        ("Driver host" if manifest.get("nodes") else "Hardware", mapping(manifest.get("hardware"))),
        ("Ray cluster", mapping(manifest.get("cluster_resources"))),
    ]
    if nodes := nodes_text(manifest, run.trials):
        items.insert(-2, ("Nodes", esc(nodes)))
    if attempts := _attempts_html(manifest):
        count = len(manifest["attempts"])
        items.insert(4, (f"Attempts ({count})", attempts))
    if unreported:
        items.append(
            (
                "Unreported",
                f'<span class="status status-failed">{plural(len(unreported), "trial")} listed '
                f"in the manifest without a results row: {esc(', '.join(unreported))}</span>",
            )
        )
    meta = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    try:
        import yaml

        config_text = yaml.safe_dump(run.config, sort_keys=False) if run.config else ""
    except Exception:  # a config that does not round-trip is still shown as JSON
        config_text = json.dumps(run.config, indent=1, default=str)
    heading = f"<h3>{esc(heading_name)}</h3>" if heading_name else ""
    return (
        f'{heading}<dl class="meta">{meta}</dl>'
        f"<details><summary>Resolved configuration</summary><pre>{esc(config_text)}</pre>"
        "</details>"
    )


def _resource(key: object, value: Any) -> str:
    """Ray reports memory in bytes: shown in GiB; whole numbers without a trailing .0."""
    if isinstance(value, float) and "memory" in str(key) and value > 2**20:
        return f"{value / 2**30:.1f} GiB"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def section_provenance(ctx: ReportContext) -> str:
    """Per run: config, versions, commit, hardware, cluster, times; then every trial."""
    several = len(ctx.results.runs) > 1
    parts = [
        _run_provenance(run, name if several else None)
        for run, name in zip(ctx.results.runs, ctx.results.run_names, strict=True)
    ]
    parts.append("<h3>Trials</h3>")
    parts.append(_trials_table(ctx))
    return "".join(parts)


def _trials_table(ctx: ReportContext) -> str:
    trials = ctx.trials
    if trials.empty:
        return empty_html("No trials.")
    manifest_trials: dict[str, Any] = {}
    for run, name in zip(ctx.results.runs, ctx.results.run_names, strict=True):
        prefix = f"{name}/" if len(ctx.results.runs) > 1 else ""
        for key, value in (run.manifest.get("trials") or {}).items():
            manifest_trials[prefix + key] = value
    headers = [
        ("Trial", ""),
        ("Method", ""),
        ("Workload" if not ctx.results.workload_is_backbone else "Backbone", ""),
        ("Seed", "num"),
        ("Status", ""),
        ("Epochs", "num"),
        ("Best epoch", "num"),
        ("Test AUROC", "num"),
        ("Wall time", "num"),
        ("Node", ""),
        ("Device", ""),
        ("Attempts", "num"),
        ("Error", ""),
    ]
    ordered = trials.sort_values(["method", "workload", "seed", "trial_id"], kind="mergesort")
    rows = []
    for row in ordered.itertuples(index=False):
        error = row.error
        if not isinstance(error, str):
            entry = manifest_trials.get(row.trial_id)
            error = entry.get("error") if isinstance(entry, dict) else None
        full = error if isinstance(error, str) else ""
        cells = [
            f"<td><code>{esc(row.trial_id)}</code></td>",
            f"<td>{method_cell(row.method, ctx.palette)}</td>",
            f"<td>{esc(row.workload)}</td>",
            f'<td class="num">{fmt_int(row.seed)}</td>',
            f'<td class="status status-{esc(row.status)}">{esc(row.status)}</td>',
            f'<td class="num">{fmt_int(row.epochs_completed)}</td>',
            f'<td class="num">{fmt_int(row.best_epoch)}</td>',
            f'<td class="num">{fmt_number(row.test_mean_auroc, 3)}</td>',
            f'<td class="num">{fmt_duration(row.wall_time_s)}</td>',
            _node_cell(row),
            f"<td>{esc(device_label(row.device, row.gpu_name) or MISSING)}</td>",
            _attempts_cell(row.attempts),
            f'<td class="error" title="{esc(full)}">{esc(error_line(full))}</td>'
            if full
            else "<td></td>",
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    caption = (
        "One row per trial; test AUROC is the mean over findings at the best validation epoch, "
        "and the error column shows the line that names a failed or diverged trial's error "
        "(hover for the full text)."
    )
    return table_html(headers, rows) + f'<p class="caption">{caption}</p>'


def _node_cell(row: Any) -> str:
    """The host a trial ran on (its last attempt), its IP and every worker's host on hover."""
    host = row.hostname if isinstance(row.hostname, str) else None
    if not host:
        return f"<td>{MISSING}</td>"
    title = [row.node_ip] if isinstance(row.node_ip, str) else []
    if isinstance(row.worker_hosts, str) and row.worker_hosts:
        title.append(f"workers: {row.worker_hosts}")
    return f'<td title="{esc("; ".join(title))}">{esc(host)}</td>'


def _attempts_cell(attempts: Any) -> str:
    """How often the trial was started; more than once is marked retried."""
    if is_missing(attempts):
        return f'<td class="num">{MISSING}</td>'
    n = int(attempts)
    mark = ' <span class="status status-retried">retried</span>' if n > 1 else ""
    return f'<td class="num">{n}{mark}</td>'


def _tuning_time_html(run: RunResults, ctx: ReportContext) -> str:
    """AlgoPerf's time to result over the tuning trials: per study the fastest trial to the
    target, the median over studies."""
    by_backbone = {"workload": lambda frame: frame["backbone"]}
    finals = run.trials.assign(**by_backbone)
    tuning = run.tuning_trials.assign(**by_backbone)
    goal = sm.targets(finals, run.epochs, ctx.baseline, ctx.options.target_fraction)
    level = "h4" if len(ctx.results.runs) > 1 else "h3"  # under the run's own h3 when merged
    parts = [f"<{level}>Time to result over the tuning budget</{level}>"]
    if all(is_missing(t) for t in goal.by_workload.values()):
        parts.append(
            empty_html(
                f"No completed final {ctx.baseline!r} trial with a validation score, so there "
                "is no target to time the tuning trials against."
            )
        )
        return "".join(parts)
    table = sm.study_time_to_result(tuning, run.tuning_epochs, goal)
    several = table["workload"].nunique() > 1
    reference = table[table["method"] == ctx.baseline].set_index("workload")["time_s"]
    headers = [("Method", ""), ("Fastest trial per study", "num"), ("Time to result", "num")]
    headers.append((f"vs {ctx.baseline}", "num"))
    never = "not reached"
    rows = []
    for r in table.sort_values(["workload", "method"], kind="mergesort").itertuples():
        base = float(reference.get(r.workload, math.nan))
        ratio = r.time_s / base if math.isfinite(r.time_s) and math.isfinite(base) else math.nan
        label = f"{r.method} · {r.workload}" if several else r.method
        studies = ", ".join(never if math.isinf(t) else fmt_duration(t) for t in r.per_study)
        result = never if math.isinf(r.time_s) else fmt_duration(r.time_s)
        rows.append(
            f"<tr><td>{method_cell(r.method, ctx.palette, label)}</td>"
            f'<td class="num">{esc(studies)}</td><td class="num">{esc(result)}</td>'
            f'<td class="num">{fmt_ratio(ratio)}</td></tr>'
        )
    targets_text = _targets_text(goal)
    parts.append(
        f"<p>As the MLCommons AlgoPerf benchmark scores training algorithms under its external "
        "tuning ruleset: in each study, the training time of the method's fastest tuning trial "
        "to reach the target, and the median of that over the studies. Target: mean val AUROC "
        f"≥ {goal.fraction:g} × the final {esc(ctx.baseline)} trials' mean final val AUROC = "
        f"<strong>{targets_text}</strong>. Only validation scores are read.</p>"
    )
    parts.append(table_html(headers, rows))
    parts.append(
        '<p class="caption">“not reached”: no trial of that study reached the target; the '
        "median is “not reached” once half or more of the studies did not. Below 1× is faster "
        f"than {esc(ctx.baseline)}.</p>"
    )
    return "".join(parts)


def _tuning_run_html(run: RunResults, ctx: ReportContext, anchor: str) -> str:
    trials = run.tuning_trials
    finals = run.trials  # a tuned run's other trials are its final ones (load_run)
    space = sm.tuning_space(run.config)
    protocol = esc(sm.tuning_protocol(run.config, list(set(finals["seed"]))))
    never = esc(sm.NEVER_TEST)
    parts = [
        f'<p class="callout">{protocol.replace(never, f"<strong>{never}</strong>")}</p>',
        "<ul>"
        + "".join(f"<li><code>{esc(k)}</code>: {esc(fmt_space(e))}</li>" for k, e in space.items())
        + "</ul>",
    ]
    rows = []
    several = trials["backbone"].nunique() > 1
    for r in sm.tuning_choices(trials, finals, run.config, run.manifest).itertuples():
        rows.append(
            f"<tr><td>{esc(f'{r.method} · {r.backbone}' if several else r.method)}</td>"
            f'<td class="num">{r.study + 1}</td>'
            f"<td>{esc(', '.join(fmt_number(v, 3) for v in r.scores))}</td>"
            f'<td class="num">{esc(fmt_number(r.spread, 3))}</td>'
            f"<td>{esc(fmt_settings(r.chosen))}</td>"
            f'<td class="num">{esc(fmt_duration(r.seconds))} · {esc(r.device_hours)}</td></tr>'
        )
    parts.append(
        figure_html(
            tuning_strip(trials, ctx.palette, title="Validation AUROC of every tuning trial"),
            f"fig-tuning-{anchor}",
            "Each dot is one tuning trial at its mean validation AUROC, the score selection "
            "used; a cross at the left is a trial without one (failed or diverged). A wide "
            "row is a method whose result depends much on its hyperparameters.",
        )
    )
    parts.append(table_html(TUNING_HEADERS, rows))
    parts.append(f'<p class="caption">{esc(TUNING_CAPTION)}</p>')
    parts.append(_tuning_time_html(run, ctx))
    return "".join(parts)


def section_tuning(ctx: ReportContext) -> str:
    """The tuning protocol, each method's tuning scores, its choice and its cost, and
    AlgoPerf's time to result over the tuning trials."""
    runs = [run for run in ctx.results.runs if not run.tuning_trials.empty]
    if not runs:
        return empty_html(
            "Each method ran one configuration (the experiment file has no tuning section): "
            "a win may come from better-suited defaults. Give every method the same budget "
            "with tuning (README: a fair comparison)."
        )
    parts = []
    for i, run in enumerate(runs):
        if len(ctx.results.runs) > 1:
            parts.append(f"<h3>{esc(run.name)}</h3>")
        parts.append(_tuning_run_html(run, ctx, str(i)))
    return "".join(parts)


SECTIONS: list[Section] = [
    Section("summary", "Summary", section_summary),
    Section("paired", "Paired comparisons", section_paired),
    Section("per-task", "Per finding", section_per_task),
    Section("dynamics", "Training dynamics", section_dynamics),
    Section("cost", "Cost and time to quality", section_cost),
    Section("tuning", "Tuning", section_tuning),
    Section("provenance", "Provenance", section_provenance),
]


# --- the page ----------------------------------------------------------------------------


def render_context(ctx: ReportContext) -> str:
    """The page around the sections of an already computed context."""
    body = [section_header(ctx)]
    for section in SECTIONS:
        body.append(
            f'<section id="{section.anchor}"><h2>{esc(section.title)}</h2>'
            f"{section.render(ctx)}</section>"
        )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(ctx.results.name)} — benchmark report"
        f"{' (partial)' if partial_notes(ctx.results) else ''}</title>\n"
        f"<style>{CSS}</style>\n"
        f'<script type="text/javascript">{_plotly_js()}</script>\n'
        "</head>\n<body>\n<main>\n" + "\n".join(body) + "\n</main>\n</body>\n</html>\n"
    )


def summary_paths(report: Path) -> tuple[Path, Path]:
    """The summary files that go with a report: ``X.html`` -> ``X.summary.csv`` and
    ``X.summary.md``; a run's own ``report.html`` keeps ``summary.csv`` and ``summary.md``."""
    if report.name == REPORT_FILE:
        return report.with_name(SUMMARY_CSV_FILE), report.with_name(SUMMARY_MD_FILE)
    return report.with_name(f"{report.stem}.summary.csv"), report.with_name(
        f"{report.stem}.summary.md"
    )


def _write_files(files: dict[Path, str]) -> None:
    """Write every file via a temporary file beside it, then rename them all, so a reader
    never sees half a report and an unwritable place leaves nothing behind. An OS error
    becomes a one-line :class:`ReportError` naming the path."""
    temporary: dict[Path, Path] = {}
    current = next(iter(files))
    try:
        for path, text in files.items():
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
            # its own temporary name: two writers at once (`harness report` while the run
            # refreshes its partial report) never move each other's file
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            temporary[path] = tmp
            tmp.write_text(text, encoding="utf-8")
        for path, tmp in temporary.items():
            current = path
            os.replace(tmp, path)
    except BaseException as exc:  # Ctrl-C or SIGTERM too: no temporary file is left behind
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        reason = exc.strerror or type(exc).__name__
        raise ReportError(f"cannot write {current}: {reason}") from exc


@dataclass
class WrittenReport:
    html: Path
    summary_csv: Path
    summary_md: Path
    results: Comparison
    summary: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # plain sentences (report_notes)
    verdict: list[tuple[str, list[str]]] = field(default_factory=list)  # (workload, sentences)


def _tuning_markdown(results: Comparison) -> list[str]:
    """The Tuning section of each run that tuned, for the Markdown summary."""
    lines = []
    for run in results.runs:
        if run.tuning_trials.empty:
            continue
        finals = run.trials  # a tuned run's other trials are its final ones (load_run)
        heading = f"Tuning: {run.name}" if len(results.runs) > 1 else "Tuning"
        lines += tuning_markdown(
            heading,
            sm.tuning_protocol(run.config, list(set(finals["seed"]))),
            sm.tuning_space(run.config),
            sm.tuning_choices(run.tuning_trials, finals, run.config, run.manifest),
        )
    return lines


def write_report(
    run_dirs: str | os.PathLike[str] | list[str | os.PathLike[str]],
    out: str | os.PathLike[str] | None = None,
    options: ReportOptions | None = None,
    overwrite: bool = False,
) -> WrittenReport:
    """Write the HTML report and, next to it, its summary files (:func:`summary_paths`).

    ``out`` defaults to the run's own ``report.html`` in its run directory, which is replaced
    freely (``harness run`` rewrites it after every run); it is required when several run
    directories are merged. Any other existing report or summary file is refused unless
    ``overwrite``. Every problem with the input or the output is a one-line ReportError.
    """
    dirs = [run_dirs] if isinstance(run_dirs, str | os.PathLike) else list(run_dirs)
    seen: set[Path] = set()
    for path in dirs:
        if Path(path).resolve() in seen:
            raise ReportError(f"run directory given twice: {path}")
        seen.add(Path(path).resolve())
    if out is None and len(dirs) > 1:
        raise ReportError("several run directories are merged: name the report with --out FILE")
    own = Path(dirs[0]) / REPORT_FILE if len(dirs) == 1 else None
    report = Path(out) if out is not None else Path(dirs[0]) / REPORT_FILE
    if report.suffix.lower() not in (".html", ".htm"):
        raise ReportError(f"--out must name an .html file, got {report}")
    csv_path, md_path = summary_paths(report)
    # the run's own report (however it is named) is that run's to replace
    is_own = own is not None and report.resolve() == own.resolve()
    if not (overwrite or is_own):
        for path in (report, csv_path, md_path):
            if path.exists() or path.is_symlink():
                raise ReportError(f"{path} exists; pass --overwrite to replace it")
    results = load_runs(dirs)
    ctx = build_context(results, options)
    partial = partial_notes(results)
    title = f"{results.name}: summary" + (" (partial)" if partial else "")
    notes = partial + report_notes(results)  # the partial sentence first, right under the title
    verdict = [(v.workload, v.lines) for v in ctx.verdicts] if not ctx.completed.empty else []
    markdown = summary_markdown(
        ctx.summary,
        title,
        results.workload_is_backbone,
        notes=notes,
        verdict=verdict,
        tail=_tuning_markdown(results),
    )
    _write_files(
        {
            csv_path: ctx.summary.to_csv(index=False),
            md_path: markdown,
            report: render_context(ctx),
        }
    )
    return WrittenReport(report, csv_path, md_path, results, ctx.summary, notes, verdict)
