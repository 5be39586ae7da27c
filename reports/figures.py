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

from reports.format import MISSING, fmt_mean_std, fmt_number, fmt_p, is_missing, plural
from reports.summary import tuning_scores

TEMPLATE = "plotly_white"
FONT = dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", size=13)
PALETTE: tuple[str, ...] = tuple(qualitative.Plotly) + tuple(qualitative.Dark24)
# Findings: 24 dark colours made for white backgrounds, pairwise CIE76 colour difference >= 26
# (>= 29 among the first 14), so the 14 findings never share a hue (the method palette reuses
# blues after its 10th colour)
FINDING_PALETTE: tuple[str, ...] = tuple(qualitative.Dark24)

Config = tuple[str, str]  # (method, workload)


def method_palette(methods: Iterable[str]) -> dict[str, str]:
    """One colour per method, assigned in sorted-name order so it is stable across reports."""
    names = sorted({str(m) for m in methods})
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def finding_palette(tasks: Sequence[str]) -> dict[str, str]:
    """One colour per finding, in the given order, used by every figure that colours findings."""
    return {t: FINDING_PALETTE[i % len(FINDING_PALETTE)] for i, t in enumerate(tasks)}


def label(text: object) -> str:
    """A user-supplied string made safe for a plotly label."""
    return html.escape(str(text), quote=False)


def config_label(method: object, workload: object) -> str:
    """How a (method, workload) pair is named in figures: ``method [workload]``."""
    return f"{method} [{workload}]"


def _base_layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int) -> None:
    fig.update_layout(
        template=TEMPLATE,
        font=FONT,
        title=dict(text=label(title), x=0.0, xanchor="left"),  # may hold method/workload names
        height=height,
        margin=dict(l=10, r=10, t=60, b=10),
        xaxis=dict(title=dict(text=x_title), automargin=True),
        yaxis=dict(title=dict(text=y_title), automargin=True),
    )


def _none_if_missing(value: object) -> float | None:
    return None if is_missing(value) else float(value)  # type: ignore[arg-type]


def task_heatmap(
    values: pd.DataFrame,
    configs: Sequence[Config],
    tasks: Sequence[str],
    *,
    column: str,
    title: str,
    z_title: str,
    digits: int = 3,
    diverging: bool = False,
    lower_is_better: bool = False,
) -> go.Figure:
    """Rows = configs (given order, top to bottom), columns = tasks, cell = ``values[column]``.

    ``values`` has columns method, workload, task and ``column`` (and ``std``/``n`` when it is
    a mean over seeds, shown on hover). A ``diverging`` map is centred on 0, spans the largest
    absolute value symmetrically and is coloured so that green means better
    (``lower_is_better`` flips it, e.g. for a loss difference). Where ``values`` has a ``noise``
    column (:func:`reports.summary.per_task_paired`), cells within noise are greyed by a
    translucent white layer and marked "·"; the hover gives the 95% paired interval and the
    Holm-corrected p-value. Cells
    without a finite value are blank and annotated ``n/a``.
    """
    cells = {(r.method, r.workload, r.task): r for r in values.itertuples(index=False)}
    z, text, hover, grey = [], [], [], []
    for method, workload in configs:
        z_row, text_row, hover_row, grey_row = [], [], [], []
        for task in tasks:
            cell = cells.get((method, workload, task))
            value = None if cell is None else _none_if_missing(getattr(cell, column))
            noisy = value is not None and bool(getattr(cell, "noise", False))
            z_row.append(value)
            grey_row.append(1.0 if noisy else None)
            shown = "n/a" if value is None else fmt_number(value, digits)
            text_row.append(f"{shown} ·" if noisy else shown)
            detail = MISSING if value is None else fmt_number(value, digits)
            if cell is not None and hasattr(cell, "std"):
                seeds = int(cell.n)
                detail = fmt_mean_std(getattr(cell, column), cell.std, digits)
                detail += f" ({plural(seeds, 'seed')})"
            if value is not None and hasattr(cell, "noise"):
                seeds = int(cell.n)
                if not is_missing(cell.low):
                    detail += f" [{fmt_number(cell.low, digits)}, {fmt_number(cell.high, digits)}]"
                detail += f" over {plural(seeds, 'paired seed')}"
                if not is_missing(getattr(cell, "p_holm", None)):
                    detail += f", Holm p = {fmt_p(cell.p_holm)}"
                detail += "<br>within noise" if noisy else "<br>outside noise"
            hover_row.append(
                f"{label(config_label(method, workload))}<br>{label(task)}<br>{z_title} {detail}"
            )
        z.append(z_row)
        text.append(text_row)
        hover.append(hover_row)
        grey.append(grey_row)
    finite = [v for row in z for v in row if v is not None]
    if diverging:
        span = max((abs(v) for v in finite), default=0.0) or 0.01
        low, high = -span, span
        colorscale = "RdYlGn_r" if lower_is_better else "RdYlGn"
    else:
        low, high = (min(finite), max(finite)) if finite else (0.5, 1.0)
        if high - low < 0.02:
            low, high = low - 0.01, high + 0.01
        colorscale = "Viridis_r" if lower_is_better else "Viridis"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[label(t) for t in tasks],
            y=[label(config_label(m, w)) for m, w in configs],
            text=text,
            texttemplate="%{text}",
            hovertext=hover,
            hoverinfo="text",
            colorscale=colorscale,
            zmin=low,
            zmax=high,
            xgap=2,
            ygap=2,
            colorbar=dict(title=dict(text=z_title), thickness=14),
        )
    )
    if any(v is not None for row in grey for v in row):
        wash = "rgba(255,255,255,0.6)"
        fig.add_trace(
            go.Heatmap(
                z=grey,
                x=[label(t) for t in tasks],
                y=[label(config_label(m, w)) for m, w in configs],
                colorscale=[[0, wash], [1, wash]],
                showscale=False,
                hoverinfo="skip",
                xgap=2,
                ygap=2,
                name="within noise",
            )
        )
    _base_layout(
        fig, title, "Finding", "Method [workload]", height=max(330, 230 + 34 * len(configs))
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

    ``stats`` has columns method, workload, mean, std, n. Configs absent from ``stats`` or with
    a missing mean are skipped.
    """
    rows = {(r.method, r.workload): r for r in stats.itertuples(index=False)}
    xs, ys, errors, colours, texts, hovers = [], [], [], [], [], []
    for method, workload in configs:
        row = rows.get((method, workload))
        if row is None or is_missing(row.mean):
            continue
        xs.append(label(config_label(method, workload)))
        ys.append(float(row.mean))
        errors.append(_none_if_missing(row.std))
        colours.append(palette.get(str(method), PALETTE[0]))
        texts.append(fmt_number(row.mean, digits))
        seeds = int(row.n)
        hovers.append(
            f"{label(config_label(method, workload))}<br>{fmt_mean_std(row.mean, row.std, digits)}"
            f" ({plural(seeds, 'seed')})"
        )
    fig = go.Figure(
        go.Bar(
            x=xs,
            y=ys,
            marker=dict(color=colours),
            error_y=dict(type="data", array=errors, visible=True, color="#444"),
            text=texts,
            # at the base of the bar: the error bar at its top never crosses the label
            textposition="inside",
            insidetextanchor="start",
            hovertext=hovers,
            hoverinfo="text",
        )
    )
    _base_layout(fig, title, "Method [workload]", y_title, height=420)
    fig.update_xaxes(type="category")
    fig.update_yaxes(rangemode="tozero")
    return fig


DASH = {"train": "solid", "val": "dash"}


def _curve(curves: pd.DataFrame, method: str, split: str, task: str) -> pd.DataFrame:
    """One line of :func:`reports.summary.curves`: a method's split and task, by epoch."""
    chosen = (curves["task"] == task) & (curves["method"] == method) & (curves["split"] == split)
    return curves[chosen].sort_values("epoch")


def _epoch_line(part: pd.DataFrame, **style) -> go.Scatter:
    """A line with markers over the epochs of one :func:`_curve`."""
    return go.Scatter(
        x=part["epoch"].tolist(),
        y=[_none_if_missing(v) for v in part["mean"]],
        mode="lines+markers",
        **style,
    )


def _selector(labels: Sequence[str], visibility: Sequence[list[bool]], x: float = 0.0) -> dict:
    """A plotly dropdown: choosing ``labels[i]`` shows the traces flagged in ``visibility[i]``."""
    return dict(
        type="dropdown",
        x=x,
        xanchor="left",
        y=1.0,
        yanchor="bottom",
        pad=dict(b=6),
        showactive=True,
        buttons=[
            dict(label=label(text), method="update", args=[{"visible": list(flags)}])
            for text, flags in zip(labels, visibility, strict=True)
        ],
    )


def loss_curves(
    curves: pd.DataFrame,
    methods: Sequence[str],
    tasks: Sequence[str],
    palette: dict[str, str],
    *,
    title: str,
) -> go.Figure:
    """Train (solid) and val (dashed) loss per epoch, one line per method and split, for the
    task picked in a dropdown (the first entry is the mean over findings).

    ``curves`` is :func:`reports.summary.curves` of the loss, restricted to one workload.
    """
    choices = ["mean", *tasks]
    fig = go.Figure()
    owner: list[str] = []
    for task in choices:
        for method in methods:
            for split in ("train", "val"):
                part = _curve(curves, method, split, task)
                if part.empty:
                    continue
                fig.add_trace(
                    _epoch_line(
                        part,
                        name=label(f"{method} · {split}"),
                        legendgroup=label(method),
                        line=dict(color=palette.get(method, PALETTE[0]), dash=DASH[split]),
                        visible=task == "mean",
                        hovertemplate=f"{label(method)} · {split}<br>epoch %{{x}}<br>"
                        "loss %{y:.4f}<extra></extra>",
                    )
                )
                owner.append(task)
    names = ["mean over findings", *tasks]
    visibility = [[o == task for o in owner] for task in choices]
    _base_layout(fig, title, "Epoch", "Loss (mean over seeds)", height=470)
    fig.update_layout(updatemenus=[_selector(names, visibility)], margin=dict(t=100))
    fig.update_xaxes(dtick=1)
    return fig


def val_auroc_per_epoch(
    curves: pd.DataFrame, methods: Sequence[str], palette: dict[str, str], *, title: str
) -> go.Figure:
    """Mean val AUROC per epoch, one line per method, with ± one std over seeds as error bars.

    ``curves`` is :func:`reports.summary.curves` of the AUROC for one workload.
    """
    fig = go.Figure()
    for method in methods:
        part = _curve(curves, method, "val", "mean")
        if part.empty:
            continue
        fig.add_trace(
            _epoch_line(
                part,
                error_y=dict(
                    type="data", array=[_none_if_missing(v) for v in part["std"]], visible=True
                ),
                name=label(method),
                line=dict(color=palette.get(method, PALETTE[0])),
                hovertemplate=f"{label(method)}<br>epoch %{{x}}<br>AUROC %{{y:.3f}}<extra></extra>",
            )
        )
    _base_layout(fig, title, "Epoch", "Mean val AUROC", height=420)
    fig.update_xaxes(dtick=1)
    return fig


def weight_trajectories(
    curves: pd.DataFrame,
    methods: Sequence[str],
    tasks: Sequence[str],
    *,
    title: str,
    first_shown: str | None = None,
) -> go.Figure:
    """Task weights per epoch, normalised to sum 1, one line per finding, for the method picked
    in a dropdown (``first_shown`` at first, else the first method); the dotted line at 1/T is
    equal weighting.

    ``curves`` is :func:`reports.summary.curves` of ``weight_normalized`` for one workload.
    """
    task_colours = finding_palette(tasks)
    methods = list(methods)
    shown = first_shown if first_shown in methods else methods[0] if methods else None
    fig = go.Figure()
    owner: list[str] = []
    for method in methods:
        for task in tasks:
            part = _curve(curves, method, "train", task)
            if part.empty:
                continue
            fig.add_trace(
                _epoch_line(
                    part,
                    name=label(task),
                    line=dict(color=task_colours[task]),
                    visible=method == shown,
                    hovertemplate=f"{label(method)} · {label(task)}<br>epoch %{{x}}<br>"
                    "weight %{y:.4f}<extra></extra>",
                )
            )
            owner.append(method)
    if tasks:
        fig.add_hline(
            y=1 / len(tasks), line=dict(color="#888", dash="dot"), annotation_text="equal"
        )
    visibility = [[o == method for o in owner] for method in methods]
    _base_layout(fig, title, "Epoch", "Weight (sums to 1 over findings)", height=470)
    menu = _selector(methods, visibility)
    menu["active"] = methods.index(shown) if shown in methods else 0
    fig.update_layout(updatemenus=[menu], margin=dict(t=100))
    fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(dtick=1)
    return fig


def step_time_stack(
    cost: pd.DataFrame, configs: Sequence[Config], phases: Sequence[str], *, title: str
) -> go.Figure:
    """One stacked bar per config: the median step time split into phases (ms).

    ``cost`` is :func:`reports.summary.cost_table` (columns ``<phase>_time_ms``).
    """
    rows = {(r["method"], r["workload"]): r for _, r in cost.iterrows()}
    present = [c for c in configs if c in rows]
    xs = [label(config_label(m, w)) for m, w in present]
    colours = ("#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3", "#a6d854")
    fig = go.Figure()
    for i, phase in enumerate(phases):
        ys = [_none_if_missing(rows[c][f"{phase}_time_ms"]) for c in present]
        fig.add_trace(
            go.Bar(
                x=xs,
                y=ys,
                name=phase if phase != "backward" else "backward + weighting",
                marker=dict(color=colours[i % len(colours)]),
                hovertemplate=f"%{{x}}<br>{phase} %{{y:.1f}} ms<extra></extra>",
            )
        )
    _base_layout(fig, title, "Method [workload]", "Median time per step (ms)", height=440)
    fig.update_layout(barmode="stack")
    fig.update_xaxes(type="category")
    return fig


def _half_widths(row: pd.Series, column: str) -> tuple[float | None, float | None]:
    """(plus, minus) error-bar lengths of the 95% interval around the mean, or None."""
    mean, low, high = (row[f"{column}_{p}"] for p in ("mean", "low", "high"))
    if is_missing(low) or is_missing(high):
        return None, None
    return float(high) - float(mean), float(mean) - float(low)


def _error_bar(plus: float | None, minus: float | None) -> dict:
    """An asymmetric error bar of one point (hidden when the interval is unknown)."""
    return dict(
        type="data",
        symmetric=False,
        array=[plus],
        arrayminus=[minus],
        visible=plus is not None,
        color="#777",
        thickness=1.2,
    )


def pareto_plot(
    summary: pd.DataFrame,
    palette: dict[str, str],
    *,
    title: str,
    fronts: dict[str, list[int]] | None = None,
) -> go.Figure:
    """Mean test AUROC against images/s per config with 95% intervals over seeds on both axes,
    and per workload the Pareto front through the points in ``fronts[workload]`` (index labels
    of ``summary``, from :func:`reports.summary.distinguishable_front`) as a grey step line;
    a workload without such a front gets none.

    ``summary`` is :func:`reports.summary.summary_table` without the trivial rows.
    """
    fronts = fronts or {}
    fig = go.Figure()
    symbols = ("circle", "square", "diamond", "triangle-up", "cross", "x")
    for w_index, (workload, group) in enumerate(summary.groupby("workload", sort=False)):
        group = group.dropna(subset=["images_per_second_mean", "test_mean_auroc_mean"])
        if group.empty:
            continue
        for _, row in group.iterrows():
            x_plus, x_minus = _half_widths(row, "images_per_second")
            y_plus, y_minus = _half_widths(row, "test_mean_auroc")
            fig.add_trace(
                go.Scatter(
                    x=[row["images_per_second_mean"]],
                    y=[row["test_mean_auroc_mean"]],
                    error_x=_error_bar(x_plus, x_minus),
                    error_y=_error_bar(y_plus, y_minus),
                    mode="markers+text",
                    text=[label(row["method"])],
                    textposition="top center",
                    marker=dict(
                        size=13,
                        color=palette.get(row["method"], PALETTE[0]),
                        symbol=symbols[w_index % len(symbols)],
                        line=dict(width=1, color="#333"),
                    ),
                    name=label(config_label(row["method"], workload)),
                    hovertemplate=f"{label(config_label(row['method'], workload))}<br>"
                    "%{x:,.0f} images/s<br>AUROC %{y:.3f}<extra></extra>",
                )
            )
        front = [i for i in fronts.get(workload, []) if i in group.index]
        if len(front) < 2:
            continue
        points = group.loc[front]
        fig.add_trace(
            go.Scatter(
                x=points["images_per_second_mean"].tolist(),
                y=points["test_mean_auroc_mean"].tolist(),
                mode="lines",
                line=dict(color="#999", dash="dot", shape="hv"),
                name=label(f"Pareto front [{workload}]"),
                hoverinfo="skip",
            )
        )
    _base_layout(fig, title, "Training images per second", "Mean test AUROC", height=460)
    return fig


def time_to_target_strip(
    per_trial: pd.DataFrame, configs: Sequence[Config], palette: dict[str, str], *, title: str
) -> go.Figure:
    """One dot per trial at the training time it took to reach the target; trials that never
    reached it are crosses in a "never" column at the right, so none is dropped."""
    reached = per_trial[per_trial["reached"]]
    known = reached["time_s"].dropna()
    horizon = float(known.max()) if len(known) and known.max() > 0 else 1.0
    never_x = horizon * 1.15
    fig = go.Figure()
    for method, workload in configs:
        part = per_trial[(per_trial["method"] == method) & (per_trial["workload"] == workload)]
        if part.empty:
            continue
        y = label(config_label(method, workload))
        for hit, symbol in ((True, "circle"), (False, "x")):
            sub = part[part["reached"] == hit]
            if sub.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=sub["time_s"].tolist() if hit else [never_x] * len(sub),
                    y=[y] * len(sub),
                    mode="markers",
                    marker=dict(
                        size=11, symbol=symbol, color=palette.get(method, PALETTE[0]), opacity=0.8
                    ),
                    name=label(config_label(method, workload))
                    + ("" if hit else " · never reached"),
                    customdata=list(
                        zip(sub["seed"].astype(int), sub["status"].astype(str), strict=True)
                    ),
                    hovertemplate=(
                        "seed %{customdata[0]} (%{customdata[1]})<br>"
                        + ("%{x:.1f} s<extra></extra>" if hit else "never reached<extra></extra>")
                    ),
                    showlegend=False,
                )
            )
    fig.add_vline(x=never_x, line=dict(color="#bbb", dash="dot"))
    fig.add_annotation(x=never_x, y=1.02, yref="paper", text="never", showarrow=False)
    _base_layout(
        fig,
        title,
        "Training time until the target (s)",
        "Method [workload]",
        height=200 + 38 * len(configs),
    )
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_xaxes(rangemode="tozero")
    return fig


def tuning_strip(tuning: pd.DataFrame, palette: dict[str, str], *, title: str) -> go.Figure:
    """One dot per tuning trial at its validation score (the selection score), a row per
    method, backbone (when several) and study; a trial without a score (failed, diverged) is
    a cross at the left edge, so none is dropped. Hover names the trial."""
    fig = go.Figure()
    keys = ["method", "backbone", "study"]
    rows = sorted({tuple(r) for r in tuning[keys].itertuples(index=False)})
    several = tuning["backbone"].nunique() > 1
    score = tuning_scores(tuning)
    floor = float(score.min()) - 0.02 if score.notna().any() else 0.0
    for method, backbone, study in rows:
        here = (
            (tuning["method"] == method)
            & (tuning["backbone"] == backbone)
            & (tuning["study"] == study)
        )
        part, part_score = tuning[here], score[here]
        name = f"{method} · {backbone}" if several else str(method)
        y = label(f"{name} · study {int(study) + 1}")
        for scored, symbol in ((True, "circle"), (False, "x")):
            sub = part[part_score.notna() == scored]
            if sub.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part_score[part_score.notna()].tolist() if scored else [floor] * len(sub),
                    y=[y] * len(sub),
                    mode="markers",
                    marker=dict(
                        size=11, symbol=symbol, color=palette.get(method, PALETTE[0]), opacity=0.8
                    ),
                    customdata=[label(t) for t in sub["trial_id"]],
                    hovertemplate="%{customdata}<br>val AUROC %{x:.3f}<extra></extra>",
                    showlegend=False,
                )
            )
    _base_layout(
        fig,
        title,
        "Mean validation AUROC (the selection score)",
        "Method · study",
        height=200 + 38 * len(rows),
    )
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def profile_plot(
    taus: Sequence[float],
    profiles: dict[str, list[float]],
    areas: dict[str, float],
    palette: dict[str, str],
    *,
    title: str,
) -> go.Figure:
    """AlgoPerf performance profiles: fraction of workloads solved within tau x the fastest."""
    fig = go.Figure()
    for method, fractions in sorted(profiles.items(), key=lambda kv: -areas.get(kv[0], 0)):
        fig.add_trace(
            go.Scatter(
                x=list(taus),
                y=fractions,
                mode="lines",
                line=dict(color=palette.get(method, PALETTE[0]), shape="hv", width=2.5),
                name=label(f"{method} (area {areas.get(method, float('nan')):.2f})"),
                hovertemplate=f"{label(method)}<br>tau %{{x:.2f}}<br>%{{y:.0%}}<extra></extra>",
            )
        )
    _base_layout(
        fig, title, "tau (time / fastest method's time)", "Fraction of workloads", height=420
    )
    fig.update_yaxes(range=[-0.03, 1.03], tickformat=".0%")
    return fig
