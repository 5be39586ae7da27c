"""Plotly figures for the report, one function per figure, and the method colour palette.

Plotly renders labels as a small subset of HTML, so every user-supplied string that ends up
in a figure goes through :func:`label` (HTML-escaped, which plotly displays literally).
Every figure carries a title and axis titles; captions live in the HTML around it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from reports.format import MISSING, fmt_mean_std, fmt_number, is_missing

TEMPLATE = "plotly_white"
FONT = dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size=13)
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly) + tuple(qualitative.Dark24)

Config = tuple[str, str]  # (method, backbone)


def method_palette(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method, assigned in sorted-name order so it is stable across reports."""
    names = sorted({str(m) for m in methods})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def label(text: object) -> str:
    """A user-supplied string made safe for a plotly label."""
    return html.escape(str(text), quote=False)


def config_label(method: object, backbone: object) -> str:
    """How a (method, backbone) pair is named in figures: ``method [backbone]``."""
    return f"{method} [{backbone}]"


def _base_layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int) -> None:
    fig.update_layout(
        template=TEMPLATE,
        font=FONT,
        title=dict(text=title, x=0.0, xanchor="left"),
        height=height,
        margin=dict(l=10, r=10, t=60, b=10),
        xaxis=dict(title=dict(text=x_title), automargin=True),
        yaxis=dict(title=dict(text=y_title), automargin=True),
    )


def _none_if_missing(value: object) -> float | None:
    return None if is_missing(value) else float(value)  # type: ignore[arg-type]


def per_task_auroc_heatmap(
    per_task: pd.DataFrame, configs: Sequence[Config], tasks: Sequence[str]
) -> go.Figure:
    """Rows = configs (in the given order, top to bottom), columns = tasks, value = mean AUROC.

    ``per_task`` has columns method, backbone, task, mean, std, n
    (see :func:`reports.summary.per_task_test_auroc`). Cells without a finite AUROC are
    left blank and annotated ``n/a``.
    """
    cells = {(r.method, r.backbone, r.task): r for r in per_task.itertuples(index=False)}
    z, text, hover = [], [], []
    for method, backbone in configs:
        z_row, text_row, hover_row = [], [], []
        for task in tasks:
            cell = cells.get((method, backbone, task))
            mean = None if cell is None else _none_if_missing(cell.mean)
            z_row.append(mean)
            text_row.append("n/a" if mean is None else fmt_number(mean, 3))
            seeds = 0 if cell is None else int(cell.n)
            summary = MISSING if cell is None else fmt_mean_std(cell.mean, cell.std, 3)
            hover_row.append(
                f"{label(config_label(method, backbone))}<br>{label(task)}<br>"
                f"AUROC {summary} ({seeds} seed{'s' if seeds != 1 else ''})"
            )
        z.append(z_row)
        text.append(text_row)
        hover.append(hover_row)

    finite = [v for row in z for v in row if v is not None]
    low, high = (min(finite), max(finite)) if finite else (0.5, 1.0)
    if high - low < 0.02:
        low, high = low - 0.01, high + 0.01
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[label(t) for t in tasks],
            y=[label(config_label(m, b)) for m, b in configs],
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hoverinfo="text",
            colorscale="Viridis",
            zmin=low,
            zmax=high,
            xgap=2,
            ygap=2,
            colorbar=dict(title=dict(text="AUROC"), thickness=14),
        )
    )
    _base_layout(
        fig,
        "Per-task test AUROC (mean over seeds)",
        "Task",
        "Method [backbone]",
        height=200 + 40 * len(configs),
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(tickangle=-35, type="category", side="bottom")
    return fig


def config_bar_chart(
    stats: pd.DataFrame,
    configs: Sequence[Config],
    palette: dict[str, str],
    *,
    title: str,
    y_title: str,
    digits: int = 0,
) -> go.Figure:
    """One bar per config (mean over seeds) with a std error bar, coloured by method.

    ``stats`` has columns method, backbone, mean, std, n
    (see :func:`reports.summary.metric_by_config`). Configs absent from ``stats`` or with a
    missing mean are skipped.
    """
    rows = {(r.method, r.backbone): r for r in stats.itertuples(index=False)}
    xs, ys, errors, colours, texts, hovers = [], [], [], [], [], []
    for method, backbone in configs:
        row = rows.get((method, backbone))
        if row is None or is_missing(row.mean):
            continue
        xs.append(label(config_label(method, backbone)))
        ys.append(float(row.mean))
        errors.append(_none_if_missing(row.std))
        colours.append(palette.get(str(method), PALETTE[0]))
        texts.append(fmt_number(row.mean, digits))
        seeds = int(row.n)
        hovers.append(
            f"{label(config_label(method, backbone))}<br>{fmt_mean_std(row.mean, row.std, digits)}"
            f" ({seeds} seed{'s' if seeds != 1 else ''})"
        )
    fig = go.Figure(
        go.Bar(
            x=xs,
            y=ys,
            marker=dict(color=colours),
            error_y=dict(type="data", array=errors, visible=True, color="#444"),
            text=texts,
            textposition="inside",
            insidetextanchor="end",
            hovertext=hovers,
            hoverinfo="text",
        )
    )
    _base_layout(fig, title, "Method [backbone]", y_title, height=420)
    fig.update_xaxes(type="category")
    fig.update_yaxes(rangemode="tozero")
    return fig
