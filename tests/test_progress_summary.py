"""The end-of-run summary on a terminal (``reports.summary_rich``): every number in full, in
its row and column, at 80 and at 200 columns."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from reports import summary as sm
from reports.tables import best_cells, summary_cells, summary_headers, summary_rich
from tests.test_reports import comparison, make_run


def screen(table, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, record=True)
    console.print(summary_rich(table, "quickstart: summary"))
    return console.export_text()


def parse(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """(method, workload) -> {header: cell} read back from rich's boxes, joining multi-line
    headers and cells; several tables (a split summary) add up."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    headers: list[str] = []
    header_parts: list[list[str]] = []
    lines: list[list[str]] = []  # the lines of the row being read

    def end_row() -> None:
        if lines:
            columns = zip(headers, zip(*lines, strict=True), strict=True)
            row = {h: " ".join(filter(None, column)) for h, column in columns}
            if "Method Backbone" in row:  # two-line rows: method over backbone
                key = tuple(lines[i][headers.index("Method Backbone")] for i in (0, 1))
            else:
                key = (row["Method"], row["Backbone"])
            out.setdefault(key, {}).update(row)
            lines.clear()

    for line in text.splitlines():
        if line.startswith("┏"):
            header_parts = []
        elif line.startswith("┃"):
            parts = [p.strip() for p in line.strip("┃").split("┃")]
            header_parts = header_parts or [[] for _ in parts]
            for column, part in zip(header_parts, parts, strict=True):
                column.append(part)
        elif line.startswith("┡"):
            headers = [" ".join(p for p in parts if p) for parts in header_parts]
        elif line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            stacked = "Method Backbone" in headers
            # a new row: its method (one-line rows), or every other line (two-line rows)
            if cells[headers.index("Method")] if not stacked else len(lines) == 2:
                end_row()
            lines.append(cells)
        elif line.startswith("└"):
            end_row()
    return out


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> object:
    # a variant's long name and the longest backbone name: the widest rows a grid gives
    run = make_run(
        Path(tmp_path_factory.mktemp("summary")) / "run",
        methods=("deepchest", "equal", "mgda_ub_representation"),
        backbones=("resnet18", "mobilenet_v3_small"),
        outcomes={("equal", 1): ("failed", "ValueError: boom")},
    )
    results = comparison(run)
    return sm.summary_table(results.trials, results.epochs)


@pytest.mark.parametrize("width", [80, 100, 200])
def test_every_number_in_full_at_any_width(table, width):
    text = screen(table, width)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "…" not in text
    shown = parse(text)
    headers = summary_headers(True)
    best = best_cells(table)
    assert len(shown) == len(table)
    for index, row in table.iterrows():
        cells = summary_cells(row)
        got = shown[(row["method"], row["workload"])]
        if "Method Backbone" in got:  # the two-line layout: method over backbone
            assert got["Method Backbone"] == f"{row['method']} {row['workload']}"
        for position, header in enumerate(headers):
            if header in ("Method", "Backbone") and header not in got:
                continue
            want = cells[position] + ("*" if (index, position) in best else "")
            assert got[header] == want, (width, header)


def test_one_table_when_wide_several_when_narrow(table):
    wide, narrow = screen(table, 200), screen(table, 80)
    assert wide.count("┏") == 1 and "Peak memory (MB)" in wide
    assert re.search(r"0\.\d{3} ± 0\.\d{3}", wide)  # mean and half-width on one line
    assert narrow.count("┏") > 1
    # the title once, above the first table; the caption once, under the last
    assert narrow.count("quickstart: summary") == 1 and narrow.index("quickstart") < 80 * 2
    assert narrow.count("half-width of the 95% t-interval") == 1
    assert narrow.index("half-width of the 95%") > narrow.rindex("└")
    # each table repeats method and backbone, so every row is read without the others
    assert narrow.count("mgda_ub_representation") == 2 * narrow.count("┏")


def test_no_trials():
    empty = sm.summary_table(*[frame.iloc[0:0] for frame in _frames()])
    text = screen(empty, 80)
    assert "no trials" in text and max(len(line) for line in text.splitlines()) <= 80


def _frames():
    import tempfile

    run = make_run(Path(tempfile.mkdtemp()) / "run")
    results = comparison(run)
    return results.trials, results.epochs
