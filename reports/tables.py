"""The summary table as display strings: one cell formatter shared by the terminal (rich), the
Markdown summary and the HTML report, so all three show the same numbers."""

from __future__ import annotations

import html

import pandas as pd
from rich.table import Table
from rich.text import Text

from reports.format import MISSING, fmt_ci
from reports.summary import SUMMARY_METRICS, TRIVIAL, best_rows

SUMMARY_CAPTION = (
    "mean ± half-width of the 95% t-interval over completed seeds; ranked by test AUROC "
    "within each workload; * = best in its column; the always-negative row shows what the "
    "metrics give for a classifier that learned nothing"
)


def summary_headers(workload_is_backbone: bool) -> list[str]:
    workload = "Backbone" if workload_is_backbone else "Workload"
    return ["#", "Method", workload, *(m.header for m in SUMMARY_METRICS), "Completed"]


TEXT_COLUMNS = (1, 2)  # method, workload: left-aligned


def summary_cells(row: pd.Series) -> list[str]:
    """One row in ``summary_headers`` order (not escaped)."""
    trivial = row["method"] == TRIVIAL
    cells = [
        "" if trivial else str(int(row["rank"])),
        str(row["method"]),
        str(row["workload"]),
    ]
    for m in SUMMARY_METRICS:
        cells.append(
            fmt_ci(
                row[f"{m.column}_mean"], row[f"{m.column}_low"], row[f"{m.column}_high"], m.digits
            )
        )
    cells.append(MISSING if trivial else f"{int(row['n_completed'])}/{int(row['n_trials'])}")
    return cells


def best_cells(table: pd.DataFrame) -> set[tuple[int, int]]:
    """(index label, cell position) of every best value."""
    marked = set()
    for position, metric in enumerate(SUMMARY_METRICS, start=3):
        marked |= {(index, position) for index in best_rows(table, metric)}
    return marked


def summary_rich(table: pd.DataFrame, title: str, workload_is_backbone: bool = True) -> Table:
    """The summary as a rich Table; names are shown literally (no markup)."""
    out = Table(title=Text(title, style="bold"), header_style="bold")
    for i, header in enumerate(summary_headers(workload_is_backbone)):
        out.add_column(
            header, justify="left" if i in TEXT_COLUMNS else "right", no_wrap=i in TEXT_COLUMNS
        )
    if table.empty:
        out.caption = Text("no trials")
        return out
    best = best_cells(table)
    for index, row in table.iterrows():
        cells = [Text(cell) for cell in summary_cells(row)]
        for position, cell in enumerate(cells):
            if (index, position) in best:
                cell.append("*")
                cell.stylize("bold green")
        if row["method"] == TRIVIAL:
            for cell in cells:
                cell.stylize("dim")
        elif int(row["n_completed"]) < int(row["n_trials"]):
            cells[-1].stylize("red")
        out.add_row(*cells)
    out.caption = Text(SUMMARY_CAPTION)
    return out


def _markdown_cell(text: str) -> str:
    text = html.escape(" ".join(text.split()), quote=False)
    return text.replace("\\", "\\\\").replace("|", "\\|")


def summary_markdown(table: pd.DataFrame, title: str, workload_is_backbone: bool = True) -> str:
    """The summary as a GitHub-flavoured Markdown table under a ``#`` heading."""
    lines = [f"# {_markdown_cell(title)}", ""]
    if table.empty:
        return "\n".join([*lines, "No trials.", ""])
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
    return "\n".join(lines)
