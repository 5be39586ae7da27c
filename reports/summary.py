"""The tables behind the report: pure functions from the merged results tables to DataFrames.

A *config* is a (method, workload) pair; its trials differ by seed. Only ``status ==
"completed"`` trials enter a mean, an interval or a paired test; failed and diverged trials are
counted (``n_trials``) but never averaged. Intervals are Student-t 95% intervals over seeds
(:mod:`reports.stats`), so a single seed has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from reports import stats
from reports.format import is_vector, plural

COMPLETED = "completed"
CONFIG_KEYS = ["method", "workload"]
TRIVIAL = "always negative"  # the method name of the trivial row


@dataclass(frozen=True)
class Metric:
    column: str  # a trials.parquet column
    header: str
    digits: int
    higher_is_better: bool = True


SUMMARY_METRICS: tuple[Metric, ...] = (
    Metric("test_mean_auroc", "Test AUROC", 3),
    Metric("test_mean_auprc", "Test AUPRC", 3),
    Metric("test_mean_accuracy", "Accuracy", 3),
    Metric("test_exact_match", "Exact match", 3),
    Metric("test_macro_f1", "Macro F1", 3),
    Metric("test_macro_f1_tuned", "F1 @ val thr", 3),
    Metric("images_per_second", "Images/s", 0),
    Metric("peak_memory_mb", "Peak memory (MB)", 0, higher_is_better=False),
)
PAIRED_METRICS: tuple[Metric, ...] = SUMMARY_METRICS[0:1] + SUMMARY_METRICS[2:3]


def completed_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials whose metrics may be averaged."""
    return trials[trials["status"] == COMPLETED]


def status_counts(trials: pd.DataFrame) -> dict[str, int]:
    """Number of trials per status: completed, failed, diverged first, then any others."""
    counts = trials["status"].fillna("unknown").value_counts()
    order = [s for s in ("completed", "failed", "diverged") if s in counts.index]
    order += sorted(s for s in counts.index if s not in order)
    return {status: int(counts[status]) for status in order}


def workloads(trials: pd.DataFrame) -> list[str]:
    """Workloads in order of first appearance."""
    return list(dict.fromkeys(trials["workload"].dropna()))


# --- section 1: the summary table ----------------------------------------------------------


def _summary_columns() -> list[str]:
    columns = ["workload", "rank", "method", "n_trials", "n_completed", "flag"]
    for m in SUMMARY_METRICS:
        columns += [f"{m.column}_mean", f"{m.column}_low", f"{m.column}_high"]
    return columns


# Flags of a method row: no completed trial or no finite mean test AUROC (so no rank), or a
# mean test AUROC or AUPRC below what the always-negative row scores (chance level): an exploded
# run, not a result.
ALL_DIVERGED, ALL_FAILED, NONE_COMPLETED = "all diverged", "all failed", "none completed"
NO_AUROC = "no AUROC"  # completed, but no completed trial has a finite test AUROC
BELOW_TRIVIAL = "below trivial"
CHANCE_METRICS = ("test_mean_auroc", "test_mean_auprc")


SUMMARY_COLUMNS: list[str] = _summary_columns()


def _trivial_row(workload: str, trials: pd.DataFrame, epochs: pd.DataFrame) -> dict:
    """What always predicting "negative" scores on the test split of ``workload``.

    With prevalence p_t = positives / labelled of finding t on the test split: accuracy
    mean_t(1 - p_t), AUPRC mean_t p_t (the precision of a constant score), AUROC 0.5, macro F1
    at 0.5 equal to 0 (no positive is ever found), exact match the fraction of images without
    a positive label. F1 @ val thr is what a classifier that learned nothing gets with a
    threshold tuned on validation: its scores are constant, so the best threshold is that
    score, every image is called positive (what :func:`deepchest.metrics.f1_thresholds` picks
    for constant scores) and F1_t = 2 p_t / (1 + p_t) (precision p_t, recall 1); the cell is
    mean_t 2 p_t / (1 + p_t) over the findings with a positive on test, the findings that
    macro F1 averages.
    """
    done = completed_trials(trials[trials["workload"] == workload])
    row: dict = {"workload": workload, "rank": math.nan, "method": TRIVIAL, "flag": ""}
    row.update(n_trials=0, n_completed=0)
    test = epochs[(epochs["split"] == "test") & epochs["trial_id"].isin(set(done["trial_id"]))]
    values = dict.fromkeys((m.column for m in SUMMARY_METRICS), math.nan)
    if not test.empty:
        one = test[test["trial_id"] == test["trial_id"].iloc[0]]
        one = one[one["n_labeled"] > 0]
        prevalence = one["n_positive"] / one["n_labeled"]
        both = prevalence[(prevalence > 0) & (prevalence < 1)]
        values["test_mean_accuracy"] = float((1 - prevalence).mean())
        values["test_mean_auprc"] = float(both.mean()) if len(both) else math.nan
        values["test_mean_auroc"] = 0.5 if len(both) else math.nan
        found = prevalence[prevalence > 0]
        values["test_macro_f1"] = 0.0 if len(found) else math.nan
        values["test_macro_f1_tuned"] = (
            float((2 * found / (1 + found)).mean()) if len(found) else math.nan
        )
        values["test_exact_match"] = float(done["test_trivial_exact_match"].mean())
    for column, value in values.items():
        row.update({f"{column}_mean": value, f"{column}_low": math.nan, f"{column}_high": math.nan})
    return row


def _unranked_flag(group: pd.DataFrame) -> str:
    """Why a config without a completed trial has no rank."""
    statuses = set(group["status"].dropna())
    if statuses == {"diverged"}:
        return ALL_DIVERGED
    if statuses == {"failed"}:
        return ALL_FAILED
    return NONE_COMPLETED


def summary_table(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Per config: counts and mean [95% interval] over completed seeds of every summary metric;
    ranked by test AUROC within each workload, then that workload's trivial row (rank NaN).

    Only configs with a completed trial and a finite mean test AUROC are ranked; every other
    config follows unranked and flagged: ``all diverged`` / ``all failed`` / ``none completed``
    without a completed trial, ``no AUROC`` with completed trials none of which has a finite
    test AUROC. A ranked config whose mean test AUROC or AUPRC is below the trivial row's is
    flagged ``below trivial``."""
    rows = []
    for workload in workloads(trials):
        in_workload = trials[trials["workload"] == workload]
        trivial = _trivial_row(workload, trials, epochs)
        config_rows = []
        for method, group in in_workload.groupby("method", sort=True):
            done = completed_trials(group)
            row = {"workload": workload, "method": method, "flag": ""}
            row.update(n_trials=len(group), n_completed=len(done))
            for m in SUMMARY_METRICS:
                mean, low, high = stats.mean_ci(done[m.column].tolist())
                row.update(
                    {f"{m.column}_mean": mean, f"{m.column}_low": low, f"{m.column}_high": high}
                )
            if done.empty:
                row["flag"] = _unranked_flag(group)
            elif not math.isfinite(row["test_mean_auroc_mean"]):
                row["flag"] = NO_AUROC
            elif any(
                row[f"{c}_mean"] < trivial[f"{c}_mean"]  # False where either is NaN
                for c in CHANCE_METRICS
            ):
                row["flag"] = BELOW_TRIVIAL
            config_rows.append(row)

        def ranked(r: dict) -> bool:
            return r["flag"] not in (ALL_DIVERGED, ALL_FAILED, NONE_COMPLETED, NO_AUROC)

        config_rows.sort(
            key=lambda r: (
                -r["test_mean_auroc_mean"] if ranked(r) else math.inf,
                r["method"],
            )
        )
        rank = 0
        for row in config_rows:
            if ranked(row):
                rank += 1
                row["rank"] = rank
            else:
                row["rank"] = math.nan
        rows += config_rows
        rows.append(trivial)
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return table.astype({"n_trials": "int64", "n_completed": "int64"})


def _disjoint(a_low: float, a_high: float, b_low: float, b_high: float) -> bool:
    """True when two intervals are both known and do not overlap."""
    known = all(math.isfinite(v) for v in (a_low, a_high, b_low, b_high))
    return known and (a_high < b_low or b_high < a_low)


def best_rows(table: pd.DataFrame, metric: Metric) -> set[int]:
    """Index labels of the row per workload that is best in one metric *and* distinguishable
    from the runner-up: its 95% interval over seeds does not overlap the runner-up's. The rule
    is conservative: a difference may be significant at 0.05 with overlapping intervals, while
    two disjoint intervals of equal width correspond to p of about 0.006 (Schenker & Gentleman,
    "On judging the significance of differences by examining the overlap between confidence
    intervals", The American Statistician 55(3), 2001).

    Nothing is marked where the best has no interval (one seed) or shares its mean with
    another row, where there is no runner-up with an interval, where the best is flagged (no
    rank, or below trivial), or where its mean is at or below the always-negative row's."""
    best: set[int] = set()
    mean, low, high = (f"{metric.column}_{part}" for part in ("mean", "low", "high"))
    for _, group in table.groupby("workload", sort=False):
        trivial = group[group["method"] == TRIVIAL][mean].dropna()
        methods = group[(group["method"] != TRIVIAL) & group["rank"].notna()]
        values = methods.dropna(subset=[mean]).sort_values(
            mean, ascending=not metric.higher_is_better, kind="mergesort"
        )
        if len(values) < 2:
            continue
        top, runner_up = values.iloc[0], values.iloc[1]
        if top["flag"] or top[mean] == runner_up[mean]:
            continue
        if len(trivial):
            floor = float(trivial.iloc[0])
            if top[mean] <= floor if metric.higher_is_better else top[mean] >= floor:
                continue
        if _disjoint(top[low], top[high], runner_up[low], runner_up[high]):
            best.add(values.index[0])
    return best


# --- section 2: paired comparisons ---------------------------------------------------------

PAIRED_COLUMNS = [
    "workload",
    "reference",
    "metric",
    "method",
    "n",
    "mean_diff",
    "low",
    "high",
    "p_value",
    "p_holm",
    "enough",
]


def paired_comparisons(trials: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Every other method against ``reference`` on each paired metric, per workload.

    Trials are paired by seed (completed trials on both sides only); the difference is
    method - reference with a paired t interval and p-value, and ``p_holm`` is Holm-corrected
    over the methods compared with the same reference on the same metric and workload.
    """
    rows = []
    done = completed_trials(trials)
    for workload in workloads(trials):
        here = done[done["workload"] == workload]
        ref = here[here["method"] == reference]
        if ref.empty:
            continue
        others = sorted(set(trials[trials["workload"] == workload]["method"]) - {reference})
        for metric in PAIRED_METRICS:
            family = []
            for method in others:
                mine = here[here["method"] == method]
                paired = mine.merge(ref, on="seed", suffixes=("", "_ref"))
                result = stats.paired_difference(
                    paired[metric.column].tolist(), paired[f"{metric.column}_ref"].tolist()
                )
                family.append((method, result))
            for method, r, p_holm in stats.holm_family(family):
                rows.append(
                    {
                        "workload": workload,
                        "reference": reference,
                        "metric": metric.column,
                        "method": method,
                        "n": r.n,
                        "mean_diff": r.mean_diff,
                        "low": r.low,
                        "high": r.high,
                        "p_value": r.p_value,
                        "p_holm": p_holm,
                        "enough": r.enough,
                    }
                )
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def final_test_rows(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Each completed trial's test rows (one per finding, at the epoch the trial was tested
    on: its last test rows), with the trial's ``seed``; empty when there are none."""
    done = completed_trials(trials)
    test = epochs[(epochs["split"] == "test") & epochs["trial_id"].isin(set(done["trial_id"]))]
    last = test.sort_values("epoch", kind="mergesort").drop_duplicates(
        ["trial_id", "task"], keep="last"
    )
    return last.assign(seed=last["trial_id"].map(done.set_index("trial_id")["seed"]))


# the per-finding test metrics Δm% averages over, with whether lower is better
DELTA_M_METRICS: tuple[tuple[str, bool], ...] = (("auroc", False), ("auprc", False), ("loss", True))
DELTA_M_COLUMNS = ["workload", "reference", "method", "n", "mean", "low", "high"]


def delta_m_table(trials: pd.DataFrame, epochs: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Δm% (:func:`reports.stats.delta_m`) of every other method against ``reference``, per
    workload: for each seed both completed, Δm over every finding and every metric of
    ``DELTA_M_METRICS`` (test AUROC and AUPRC, higher is better; test loss, lower is better),
    then the mean over seeds with its 95% t-interval (``n``: the seeds)."""
    last = final_test_rows(trials, epochs)
    if last.empty:
        return pd.DataFrame(columns=DELTA_M_COLUMNS)
    names = [c for c, _ in DELTA_M_METRICS]
    lower = [low for _, low in DELTA_M_METRICS]
    keys = ["workload", "task", "seed"]
    rows = []
    for workload in workloads(trials):
        here = last[last["workload"] == workload]
        ref = here[here["method"] == reference][[*keys, *names]]
        if ref.empty:
            continue
        for method in sorted(set(here["method"]) - {reference}):
            joined = here[here["method"] == method].merge(ref, on=keys, suffixes=("", "_ref"))
            per_seed = [
                stats.delta_m(
                    group[names].to_numpy().ravel(),
                    group[[f"{n}_ref" for n in names]].to_numpy().ravel(),
                    lower * len(group),
                )
                for _, group in joined.groupby("seed")
            ]
            mean, low, high = stats.mean_ci(per_seed)
            rows.append(
                {
                    "workload": workload,
                    "reference": reference,
                    "method": method,
                    "n": int(np.sum(~np.isnan(per_seed))),
                    "mean": mean,
                    "low": low,
                    "high": high,
                }
            )
    return pd.DataFrame(rows, columns=DELTA_M_COLUMNS)


# --- section 3: per task -------------------------------------------------------------------


def per_task(trials: pd.DataFrame, epochs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Test ``column`` (auroc, loss, ...) per (method, workload, task): mean, std and count over
    completed seeds (NaN values, such as the AUROC of a one-class task, skipped)."""
    columns = [*CONFIG_KEYS, "task", "mean", "std", "n"]
    last = final_test_rows(trials, epochs)
    if last.empty:
        return pd.DataFrame(columns=columns)
    return (
        last.groupby([*CONFIG_KEYS, "task"], dropna=False)[column]
        .agg(mean="mean", std="std", n="count")
        .reset_index()[columns]
    )


def per_task_difference(per_task_table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """``mean`` of each method minus the reference's, per (workload, task); the reference's
    own rows are left out. Columns: method, workload, task, diff."""
    ref = per_task_table[per_task_table["method"] == reference][["workload", "task", "mean"]]
    others = per_task_table[per_task_table["method"] != reference]
    joined = others.merge(ref, on=["workload", "task"], suffixes=("", "_ref"))
    joined["diff"] = joined["mean"] - joined["mean_ref"]
    return joined[["method", "workload", "task", "diff"]].reset_index(drop=True)


def per_task_paired(
    trials: pd.DataFrame, epochs: pd.DataFrame, column: str, reference: str
) -> pd.DataFrame:
    """Per (method, workload, task): test ``column`` of the method minus the reference's,
    paired by seed over completed trials (:func:`reports.stats.paired_difference`: mean
    difference, 95% paired t-interval, number of pairs, p-value), ``p_holm``: that p-value
    Holm-corrected over the findings of the same method and workload, and ``noise``: True
    unless the cell has at least ``stats.MIN_PAIRS`` (3) pairs, the verdict's minimum, and
    ``p_holm < stats.ALPHA`` (0.05), so a cell outside noise is a difference that the seeds
    resolve after correcting for looking at every finding. The interval is per finding
    (uncorrected), so it may exclude 0 in a cell that is still noise after Holm."""
    columns = ["method", "workload", "task", "diff", "low", "high", "n", "p_value", "p_holm"]
    columns.append("noise")
    last = final_test_rows(trials, epochs)
    if last.empty:
        return pd.DataFrame(columns=columns)
    ref = last[last["method"] == reference][["workload", "task", "seed", column]]
    others = last[last["method"] != reference]
    joined = others.merge(ref, on=["workload", "task", "seed"], suffixes=("", "_ref"))
    rows = []
    for (method, workload), config in joined.groupby(["method", "workload"], sort=False):
        family = [
            (task, stats.paired_difference(group[column].tolist(), group[f"{column}_ref"].tolist()))
            for task, group in config.groupby("task", sort=False)
        ]
        for task, r, p_holm in stats.holm_family(family):
            rows.append(
                {
                    "method": method,
                    "workload": workload,
                    "task": task,
                    "diff": r.mean_diff,
                    "low": r.low,
                    "high": r.high,
                    "n": r.n,
                    "p_value": r.p_value,
                    "p_holm": p_holm,
                    "noise": not (r.enough and p_holm < stats.ALPHA),  # NaN p: noise
                }
            )
    return pd.DataFrame(rows, columns=columns)


# --- section 4: training dynamics -----------------------------------------------------------


def curves(epochs: pd.DataFrame, trials: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per (method, workload, split, task, epoch): mean and std over completed seeds of
    ``column``, plus the task ``"mean"`` (each trial's mean over findings first)."""
    done_ids = set(completed_trials(trials)["trial_id"])
    rows = epochs[epochs["split"].isin(["train", "val"]) & epochs["trial_id"].isin(done_ids)]
    keys = [*CONFIG_KEYS, "split", "epoch"]
    per_trial_mean = (
        rows.groupby(["trial_id", *keys], dropna=False)[column].mean().reset_index()
    ).assign(task="mean")
    both = pd.concat([rows[["trial_id", *keys, "task", column]], per_trial_mean])
    return (
        both.groupby([*keys, "task"], dropna=False)[column]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )


# --- section 5: cost and time to quality -----------------------------------------------------

PHASES = ("data", "forward", "backward", "optimizer")


def cost_table(trials: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per config: mean images/s, peak memory and step phases over completed seeds, with the
    ratios of images/s and memory to the reference method of the same workload."""
    done = completed_trials(trials)
    columns = ["images_per_second", "peak_memory_mb", "step_time_ms"]
    columns += [f"{p}_time_ms" for p in PHASES]
    table = done.groupby(CONFIG_KEYS, dropna=False)[columns].mean().reset_index()
    ref = table[table["method"] == reference].set_index("workload")
    for column in ("images_per_second", "peak_memory_mb"):
        base = table["workload"].map(ref[column]) if not ref.empty else np.nan
        table[f"{column}_ratio"] = table[column] / base
    return table


def distinguishable_front(points: pd.DataFrame) -> list[int]:
    """Index labels of one workload's Pareto front of test AUROC against images/s (higher is
    better on both), keeping only points that the seeds tell apart.

    ``points`` holds summary rows (``images_per_second_*``, ``test_mean_auroc_*``, ``rank``,
    ``flag``); only ranked rows without a flag count, the rows :func:`best_rows` may mark, so an
    exploded run (``below trivial``) or the always-negative row never anchors the front. The
    front of the means is walked from the fastest point; a point joins when its 95% intervals on
    both axes are disjoint from the last point kept, i.e. it is distinguishably slower and
    distinguishably more accurate. Fewer than two such points give no front (an empty list).
    """
    x, y = "images_per_second", "test_mean_auroc"
    clean = points[points["rank"].notna() & (points["flag"].fillna("") == "")]
    usable = clean.dropna(subset=[f"{x}_mean", f"{y}_mean"])
    ordered = usable.sort_values([f"{x}_mean", f"{y}_mean"], ascending=False, kind="mergesort")
    front, best = [], -math.inf
    for index, row in ordered.iterrows():
        if row[f"{y}_mean"] > best:  # no faster point is at least as accurate
            best = row[f"{y}_mean"]
            front.append(index)
    kept: list[int] = []
    for index in front:
        if not kept:
            kept.append(index)
            continue
        a, b = usable.loc[kept[-1]], usable.loc[index]
        if all(
            _disjoint(a[f"{c}_low"], a[f"{c}_high"], b[f"{c}_low"], b[f"{c}_high"]) for c in (x, y)
        ):
            kept.append(index)
    return kept if len(kept) >= 2 else []


@dataclass(frozen=True)
class Targets:
    fraction: float
    by_workload: dict[str, float]  # NaN where the reference has no completed trial


def final_val_auroc(epochs: pd.DataFrame) -> pd.Series:
    """Each trial's mean val AUROC at its last epoch, indexed by trial_id."""
    curve = val_auroc_curves(epochs)
    last = curve.sort_values("epoch", kind="mergesort").drop_duplicates("trial_id", keep="last")
    return last.set_index("trial_id")["auroc"]


def val_auroc_curves(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per trial and epoch: mean val AUROC over findings and cumulative training time."""
    val = epochs[epochs["split"] == "val"]
    return (
        val.groupby(["trial_id", "epoch"], dropna=False)
        .agg(auroc=("auroc", "mean"), train_time_s=("train_time_s", "max"))
        .reset_index()
    )


def targets(trials: pd.DataFrame, epochs: pd.DataFrame, reference: str, fraction: float) -> Targets:
    """Target per workload: ``fraction`` x the mean over the reference's completed seeds of
    their final mean val AUROC."""
    final = final_val_auroc(epochs)
    done = completed_trials(trials)
    by_workload = {}
    for workload in workloads(trials):
        ids = done[(done["workload"] == workload) & (done["method"] == reference)]["trial_id"]
        values = final.reindex(ids).dropna()
        by_workload[workload] = fraction * float(values.mean()) if len(values) else math.nan
    return Targets(fraction=fraction, by_workload=by_workload)


def time_to_target_trials(
    trials: pd.DataFrame, epochs: pd.DataFrame, goal: Targets
) -> pd.DataFrame:
    """Per trial of a workload that has a target: the epoch and the cumulative training time
    (s) at which its mean val AUROC first reached the target. A trial that never did, failed
    ones before their first epoch included, has ``inf`` for both (slower than any finish,
    never dropped); a trial that reached it without a recorded time has time NaN (unknown)."""
    curve = val_auroc_curves(epochs).sort_values(["trial_id", "epoch"], kind="mergesort")
    by_trial = dict(tuple(curve.groupby("trial_id", sort=False)))
    rows = []
    for trial in trials.itertuples(index=False):
        target = goal.by_workload.get(trial.workload, math.nan)
        if not math.isfinite(target):
            continue  # nothing to time against on this workload
        mine = by_trial.get(trial.trial_id)
        epoch = math.inf
        time = math.inf
        if mine is not None:
            epoch = stats.time_to_target(mine["epoch"], mine["auroc"], target)
            if math.isfinite(epoch):
                time = float(mine.loc[mine["epoch"] == epoch, "train_time_s"].iloc[0])
        rows.append(
            {
                "trial_id": trial.trial_id,
                "method": trial.method,
                "workload": trial.workload,
                "seed": trial.seed,
                "status": trial.status,
                "target": target,
                "time_s": time,
                "epochs": epoch,
                "reached": math.isfinite(epoch),
            }
        )
    columns = ["trial_id", "method", "workload", "seed", "status", "target"]
    return pd.DataFrame(rows, columns=[*columns, "time_s", "epochs", "reached"])


def median_with_inf(values: pd.Series) -> float:
    """Median where inf (never reached) sorts last, so it is inf once half or more never
    reached the target (numpy's median of [t, inf] is inf too)."""
    array = np.asarray(values, dtype=float)
    return float(np.median(array)) if array.size else math.nan


def time_to_target_summary(per_trial: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per config: trials, how many reached the target, the median time and epochs (inf when
    half or more never reached it), the fastest and slowest time among those that did, and the
    median time over the reference's median time on the same workload."""
    rows = []
    for (method, workload), group in per_trial.groupby(["method", "workload"], sort=False):
        reached = group[group["reached"]]
        rows.append(
            {
                "method": method,
                "workload": workload,
                "n": len(group),
                "n_reached": len(reached),
                "median_time_s": median_with_inf(group["time_s"]),
                "min_time_s": reached["time_s"].min() if len(reached) else math.nan,
                "max_time_s": reached["time_s"].max() if len(reached) else math.nan,
                "median_epochs": median_with_inf(group["epochs"]),
            }
        )
    columns = ["method", "workload", "n", "n_reached", "median_time_s", "min_time_s"]
    table = pd.DataFrame(rows, columns=[*columns, "max_time_s", "median_epochs"])
    ref = table[table["method"] == reference].set_index("workload")["median_time_s"]
    base = table["workload"].map(ref).astype(float).replace(np.inf, np.nan)  # no finite base
    with np.errstate(divide="ignore", invalid="ignore"):
        table["ratio"] = table["median_time_s"] / base
    return table


def study_time_to_result(
    tuning_trials: pd.DataFrame,
    tuning_epochs: pd.DataFrame,
    goal: Targets,
) -> pd.DataFrame:
    """AlgoPerf's time to result under its external tuning ruleset: within each study, the
    fastest of the method's tuning trials to reach the target; the score is the median over
    the studies (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms", sec. 4).

    ``tuning_trials`` need ``workload`` (the target's key in ``goal``) and ``study``. Per row of
    the result (one per method and workload): ``per_study`` the fastest time (s) in each study,
    in study order (``inf`` for a study none of whose trials reached the target; NaN, unknown,
    when the only trials that reached it have no recorded time), and ``time_s`` their median
    (inf once half or more of the studies never reached it, see :func:`median_with_inf`; NaN
    when a study's time is unknown). Only validation scores are read.
    """
    per_trial = time_to_target_trials(tuning_trials, tuning_epochs, goal)
    per_trial["study"] = per_trial["trial_id"].map(tuning_trials.set_index("trial_id")["study"])
    rows = []
    for (method, workload), group in per_trial.groupby(["method", "workload"], sort=False):
        fastest = [_fastest(times) for _, times in group.groupby("study", sort=True)["time_s"]]
        rows.append(
            {
                "method": method,
                "workload": workload,
                "per_study": fastest,
                "time_s": math.nan if any(map(math.isnan, fastest)) else median_with_inf(fastest),
            }
        )
    return pd.DataFrame(rows, columns=["method", "workload", "per_study", "time_s"])


def _fastest(times: pd.Series) -> float:
    """The smallest finite time; NaN when a trial reached the target at an unknown time and
    none at a known one; inf when none reached it."""
    finite = times[np.isfinite(times)]
    if len(finite):
        return float(finite.min())
    return math.nan if times.isna().any() else math.inf


PROFILE_TAUS = np.round(np.linspace(1.0, 4.0, 61), 4)


def performance_profiles(ttt_summary: pd.DataFrame) -> tuple[dict[str, list[float]], dict]:
    """AlgoPerf profiles over the workloads in ``ttt_summary`` (those with a target) from each
    config's median time to target (a method absent from a workload counts as never reaching
    it), and each profile's area over tau in [1, 4]."""
    wl = list(dict.fromkeys(ttt_summary["workload"]))
    times = {}
    for method, group in ttt_summary.groupby("method", sort=True):
        by = group.set_index("workload")["median_time_s"]
        times[method] = [float(by.get(w, math.inf)) for w in wl]
    profiles = stats.performance_profile(times, PROFILE_TAUS)
    areas = {m: stats.profile_area(PROFILE_TAUS, f) for m, f in profiles.items()}
    return profiles, areas


# --- the tuning protocol ---------------------------------------------------------------------


def tuning_scores(trials: pd.DataFrame) -> pd.Series:
    """The selection score of each tuning trial as selection saw it: the mean val AUROC of a
    completed trial; NaN for a failed or diverged one (it competed as last)."""
    return trials["val_mean_auroc"].where(trials["status"] == COMPLETED)


def _point_order(trial_ids: pd.Series) -> pd.Series:
    """Tuning trials in the order of their points (``...-t2`` before ``...-t10``)."""
    return trial_ids.map(lambda t: int(str(t).rsplit("-t", 1)[1]))


def tuning_space(config: dict) -> dict[str, object]:
    """The run's search space by dotted key: ``tuning.space`` and each method's
    ``tuning.method_space`` entries as ``method_params.<method>.<key>``."""
    tuning = config.get("tuning") or {}
    space = dict(tuning.get("space") or {})
    for method, entries in (tuning.get("method_space") or {}).items():
        space |= {f"method_params.{method}.{k}": e for k, e in (entries or {}).items()}
    return space


def tuning_protocol(config: dict, final_seeds: list[int]) -> str:
    """The tuning protocol in one paragraph of plain text (the HTML and Markdown summary)."""
    tuning = config.get("tuning") or {}
    budget, studies = int(tuning.get("budget", 0)), int(tuning.get("studies", 1))
    return (
        f"Every method had the same tuning budget: {plural(budget, 'trial')} per method and "
        f"study, {plural(studies, 'study')}, points drawn "
        "from a scrambled Halton sequence (the same points for every method on the shared "
        "keys). Each study's configuration was chosen by the mean validation AUROC at the best "
        f"epoch; {NEVER_TEST}. The chosen configuration was then trained on the final seeds "
        f"({', '.join(str(s) for s in sorted(final_seeds))}), never used in selection; the "
        "comparisons are of those final trials only."
    )


NEVER_TEST = "test metrics are never read during selection"


def tuning_choices(
    tuning: pd.DataFrame, finals: pd.DataFrame, config: dict, manifest: dict
) -> pd.DataFrame:
    """Per method, backbone and study of one run: ``scores``, the selection score of each
    tuning trial in the order of its point (NaN for one without a score); ``spread``, the
    largest minus the smallest score (how much the method depends on its hyperparameters);
    ``chosen``, the setting its final trials were trained with (``{key: value}`` over the
    :func:`tuning_space` keys; None when no final trial ran); ``seconds``, the summed wall
    time of the study's tuning trials and of those final trials (what the result cost to
    obtain), and ``device_hours`` the same as text (:func:`device_hours`)."""
    keys = list(tuning_space(config))
    rows = []
    for (method, backbone, study), group in tuning.groupby(
        ["method", "backbone", "study"], sort=True
    ):
        scores = tuning_scores(group.sort_values("trial_id", key=_point_order))
        mine = finals[
            (finals["method"] == method)
            & (finals["backbone"] == backbone)
            & (finals["study"] == study)
        ]
        chosen = None
        if not mine.empty:
            first = mine.iloc[0]
            chosen = {
                k: first[k]
                for k in keys
                if k in first and (is_vector(first[k]) or not pd.isna(first[k]))
            }
        seconds = float(group["wall_time_s"].sum() + mine["wall_time_s"].sum())
        rows.append(
            {
                "method": method,
                "backbone": backbone,
                "study": int(study),
                "scores": [float(v) for v in scores],
                "spread": scores.max() - scores.min() if scores.notna().any() else math.nan,
                "chosen": chosen,
                "seconds": seconds,
                "device_hours": device_hours(config, manifest, seconds),
            }
        )
    columns = ["method", "backbone", "study", "scores", "spread", "chosen", "seconds"]
    return pd.DataFrame(rows, columns=[*columns, "device_hours"])


def device_hours(config: dict, manifest: dict, seconds: float) -> str:
    """Trial time as device-hours: x the GPUs of a trial (the run's resolved
    ``gpus_per_worker`` x ``workers_per_trial``), else x its CPUs (``"1.2 GPU-h"``)."""
    resources = config.get("resources") or {}
    workers = float(resources.get("workers_per_trial") or 1)
    gpus = manifest.get("gpus_per_worker")
    if isinstance(gpus, int | float) and gpus > 0:
        return f"{seconds * gpus * workers / 3600:.3g} GPU-h"
    cpus = float(resources.get("cpus_per_worker") or 1)
    return f"{seconds * cpus * workers / 3600:.3g} CPU-h"
