"""The summary table as display strings: one cell formatter shared by the terminal (rich), the
Markdown summary and the HTML report, so all three show the same numbers."""

from __future__ import annotations

import html
import re
import textwrap

import pandas as pd
from rich.console import Console, ConsoleOptions, NewLine, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from reports.format import (
    MISSING,
    fmt_ci,
    fmt_duration,
    fmt_number,
    fmt_settings,
    fmt_space,
)
from reports.summary import SUMMARY_METRICS, TRIVIAL, best_rows

SUMMARY_CAPTION = (
    "mean ± half-width of the 95% t-interval over completed seeds; ranked by test AUROC "
    "within each workload (methods without a completed trial are not ranked); * = best in its "
    "column with a 95% interval disjoint from the runner-up's (never with one seed, never at or "
    "below the always-negative row); the always-negative row shows what the metrics give for a "
    "classifier that learned nothing, and 'below trivial' flags a method under it in AUROC or "
    "AUPRC; accuracy and macro F1 are at probability 0.5, F1 @ val thr at per-finding "
    "thresholds chosen on validation (0.5 for a finding without a positive in validation, so "
    "both F1 columns average the same findings)"
)
THRESHOLD_NOTE = (
    "Accuracy and macro F1 depend on the decision threshold. At a fixed 0.5 on rare findings "
    "a model predicts almost no positives, so its accuracy lands near the always-negative row "
    "(which is right on every negative) and its F1 near 0; AUROC and AUPRC do not depend on a "
    "threshold. F1 @ val thr picks, per finding, the threshold that maximises F1 on the "
    "validation split and measures F1 with it on test (macro mean over the same findings as "
    "macro F1: a finding without a positive in validation keeps 0.5). A classifier that "
    "learned nothing, tuned that way, calls every image positive and gets F1 2p/(1+p) on a "
    "finding of test prevalence p: that is the always-negative row's F1 @ val thr."
)


def summary_headers(workload_is_backbone: bool) -> list[str]:
    workload = "Backbone" if workload_is_backbone else "Workload"
    return ["#", "Method", workload, *(m.header for m in SUMMARY_METRICS), "Completed"]


TEXT_COLUMNS = (1, 2)  # method, workload: left-aligned


def summary_cells(row: pd.Series) -> list[str]:
    """One row in ``summary_headers`` order (not escaped)."""
    trivial = row["method"] == TRIVIAL
    ranked = not trivial and pd.notna(row["rank"])
    cells = [
        str(int(row["rank"])) if ranked else "",
        str(row["method"]),
        str(row["workload"]),
    ]
    for m in SUMMARY_METRICS:
        cells.append(
            fmt_ci(
                row[f"{m.column}_mean"], row[f"{m.column}_low"], row[f"{m.column}_high"], m.digits
            )
        )
    count = f"{int(row['n_completed'])}/{int(row['n_trials'])}"
    flag = row.get("flag")
    cells.append(
        MISSING if trivial else f"{count} {flag}" if isinstance(flag, str) and flag else count
    )
    return cells


def best_cells(table: pd.DataFrame) -> set[tuple[int, int]]:
    """(index label, cell position) of every value marked best (:func:`best_rows`: best and
    distinguishable from the runner-up)."""
    marked = set()
    for position, metric in enumerate(SUMMARY_METRICS, start=3):
        marked |= {(index, position) for index in best_rows(table, metric)}
    return marked


def summary_rich(table: pd.DataFrame, title: str, workload_is_backbone: bool = True) -> SummaryRich:
    """The summary for the terminal; names are shown literally (no markup). It fits the width
    it is printed at (see ``SummaryRich``), so that no number is ever cut."""
    return SummaryRich(table, title, workload_is_backbone)


_IDENTITY = (0, 1, 2)  # rank, method, workload: repeated in every table of a split summary


def _natural_width(console: Console, options: ConsoleOptions, table: Table) -> int:
    """The width ``table`` takes with nothing wrapped (rich clamps measurements to the width)."""
    return Measurement.get(console, options.update_width(10_000), table).maximum


def _stack(cell: str) -> str:
    """``"0.810 ± 0.127"`` -> the mean over ``"± 0.127"``."""
    return cell.replace(" ± ", "\n± ")


class SummaryRich:
    """The summary table as a renderable that picks its layout from the console's width.

    One table when every column fits on one line. Narrower, the value columns are dealt out
    over several tables in order, each repeating rank, method and workload; when putting the
    ± half-width under its mean makes fewer tables, the values take two lines. Value columns
    never wrap or shrink: an 80-column terminal shows every number in full.
    """

    def __init__(self, table: pd.DataFrame, title: str, workload_is_backbone: bool = True):
        self.title = title
        self.headers = summary_headers(workload_is_backbone)
        self.rows: list[tuple[list[str], set[int], str | None]] = []
        best = best_cells(table)
        for index, row in table.iterrows():
            marked = {position for (label, position) in best if label == index}
            if row["method"] == TRIVIAL:
                style = "dim"
            elif int(row["n_completed"]) < int(row["n_trials"]):
                style = "incomplete"
            else:
                style = None
            self.rows.append((summary_cells(row), marked, style))

    def _table(self, positions: list[int], stacked: bool, first: bool, last: bool) -> Table:
        out = Table(
            title=Text(self.title, style="bold") if first else None,
            header_style="bold",
            caption=Text(SUMMARY_CAPTION if self.rows else "no trials") if last else None,
        )
        # rows take two lines anyway: method over workload in one column saves a column's width
        identity = [[0], [1, 2]] if stacked else [[p] for p in _IDENTITY]
        columns = [*identity, *([p] for p in positions)]
        for group in columns:
            position = group[0]
            header = "\n".join(self.headers[p] for p in group)
            if stacked and position not in _IDENTITY:  # "Test\nAUROC": as narrow as its values
                width = self._stacked_width(position)
                header = "\n".join(
                    textwrap.wrap(header, width, break_long_words=False, break_on_hyphens=False)
                )
            out.add_column(
                header,
                justify="left" if position in TEXT_COLUMNS else "right",
                no_wrap=position not in TEXT_COLUMNS,
                overflow="fold",  # only a name wider than the whole screen is ever folded
            )
        for cells, marked, style in self.rows:
            texts = []
            for group in columns:
                position = group[0]
                cell = "\n".join(cells[p] for p in group)
                if stacked and position not in _IDENTITY:
                    cell = _stack(cell)
                text = Text(cell)
                if position in marked:
                    text.append("*")
                    text.stylize("bold green")
                if style == "dim":
                    text.stylize("dim")
                elif style == "incomplete" and position == len(cells) - 1:
                    text.stylize("red")
                texts.append(text)
            out.add_row(*texts)
        return out

    def _stacked_width(self, position: int) -> int:
        """The widest line of a column's values on two lines (best marks included)."""
        lines = [line for cells, _, _ in self.rows for line in _stack(cells[position]).split("\n")]
        return max(len(line) + 1 for line in lines)

    def _split(self, console: Console, options: ConsoleOptions, stacked: bool) -> list[list[int]]:
        """The value columns dealt out in order over as few tables as fit ``options.max_width``."""
        groups: list[list[int]] = [[]]
        for position in range(len(_IDENTITY), len(self.headers)):
            wider = self._table([*groups[-1], position], stacked, True, False)
            fits = _natural_width(console, options, wider) <= options.max_width
            if groups[-1] and not fits:
                groups.append([position])
            else:
                groups[-1].append(position)
        return groups

    def tables(self, console: Console, options: ConsoleOptions) -> list[Table]:
        """The tables shown at ``options.max_width``."""
        if not self.rows:
            return [self._table([], False, True, True)]
        stacked = False
        groups = self._split(console, options, stacked=False)
        if len(groups) > 1:
            two_line = self._split(console, options, stacked=True)
            if len(two_line) < len(groups):
                stacked, groups = True, two_line
        last = len(groups) - 1
        return [self._table(g, stacked, i == 0, i == last) for i, g in enumerate(groups)]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for i, table in enumerate(self.tables(console, options)):
            if i:
                yield NewLine()
            yield table


# what a Markdown renderer would read as HTML: a tag's start, or an entity
_MARKDOWN_HTML = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?\w+;)")


def _markdown_cell(text: str) -> str:
    """One line of Markdown showing ``text`` literally; a plain ``p < 0.05`` stays readable
    in an editor (only a ``<`` that could open a tag, or an ``&`` of an entity, is escaped)."""
    text = _MARKDOWN_HTML.sub(lambda m: html.escape(m.group()), " ".join(text.split()))
    return text.replace("\\", "\\\\").replace("|", "\\|")


def summary_markdown(
    table: pd.DataFrame,
    title: str,
    workload_is_backbone: bool = True,
    notes: list[str] | None = None,
    verdict: list[tuple[str, list[str]]] | None = None,
    tail: list[str] | None = None,
) -> str:
    """The summary as a GitHub-flavoured Markdown table under a ``#`` heading: ``notes`` (plain
    sentences) above it, and under it the caption, the threshold note, the ``verdict``
    (pairs of workload, plain sentences; the workload is named when there are several) and
    ``tail`` (ready Markdown lines, e.g. :func:`tuning_markdown`)."""
    lines = [f"# {_markdown_cell(title)}", ""]
    for note in notes or []:
        lines += [_markdown_cell(note), ""]
    if table.empty:
        return "\n".join([*lines, "No trials.", "", *(tail or [])])
    headers = summary_headers(workload_is_backbone)
    lines.append("| " + " | ".join(headers) + " |")
    lines.append(
        "| " + " | ".join(":--" if i in TEXT_COLUMNS else "--:" for i in range(len(headers))) + " |"
    )
    best = best_cells(table)
    for index, row in table.iterrows():
        cells = [_markdown_cell(c) for c in summary_cells(row)]
        cells = [f"**{c}**\\*" if (index, i) in best else c for i, c in enumerate(cells)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", SUMMARY_CAPTION[0].upper() + SUMMARY_CAPTION[1:] + ".", ""]
    lines += [THRESHOLD_NOTE, ""]
    if verdict:
        lines += ["## Verdict", ""]
        for workload, sentences in verdict:
            if len(verdict) > 1:
                lines += [f"### {_markdown_cell(workload)}", ""]
            lines += [f"- {_markdown_cell(sentence)}" for sentence in sentences]
            lines.append("")
    return "\n".join([*lines, *(tail or [])])


# the Tuning section's table, in the HTML and the Markdown summary: (header, css class)
TUNING_HEADERS = [
    ("Method", ""),
    ("Study", "num"),
    ("Val AUROC of each tuning trial", ""),
    ("Spread", "num"),
    ("Chosen", ""),
    ("Compute (tuning + final)", "num"),
]


def tuning_markdown(
    heading: str,
    protocol: str,
    space: dict[str, object],
    choices: pd.DataFrame,
) -> list[str]:
    """The report's Tuning section for one run as Markdown lines: the protocol, the search
    space and, per method and study (:func:`reports.summary.tuning_choices`), the tuning
    trials' val AUROC, their spread, the chosen setting and the compute it took."""
    lines = [f"## {_markdown_cell(heading)}", "", _markdown_cell(protocol), ""]
    lines += [f"- `{k}`: {_markdown_cell(fmt_space(e))}" for k, e in space.items()]
    several = choices["backbone"].nunique() > 1
    lines += ["", "| " + " | ".join(h for h, _ in TUNING_HEADERS) + " |"]
    lines.append(
        "| " + " | ".join("--:" if c == "num" else ":--" for _, c in TUNING_HEADERS) + " |"
    )
    for r in choices.itertuples():
        cells = [
            f"{r.method} · {r.backbone}" if several else str(r.method),
            str(r.study + 1),
            ", ".join(fmt_number(v, 3) for v in r.scores),
            fmt_number(r.spread, 3),
            fmt_settings(r.chosen),
            f"{fmt_duration(r.seconds)} · {r.device_hours}",
        ]
        lines.append("| " + " | ".join(_markdown_cell(c) for c in cells) + " |")
    return [*lines, "", TUNING_CAPTION, ""]


TUNING_CAPTION = (
    "Spread: the largest minus the smallest validation AUROC over the method's tuning trials, "
    "how much its result depends on its hyperparameters. Compute: the summed wall time of the "
    "study's tuning trials and of the final trials trained with its choice, and the same in "
    "device-hours (times each trial's GPUs, or its CPUs on a CPU run): what the result cost "
    "to obtain."
)
