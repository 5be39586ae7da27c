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
    columns = ["workload", "rank", "method", "n_trials", "n_completed"]
    for m in SUMMARY_METRICS:
        columns += [f"{m.column}_mean", f"{m.column}_low", f"{m.column}_high"]
    return columns


SUMMARY_COLUMNS: list[str] = _summary_columns()


def _trivial_row(workload: str, trials: pd.DataFrame, epochs: pd.DataFrame) -> dict:
    """What always predicting "negative" scores on the test split of ``workload``.

    With prevalence p_t = positives / labelled of finding t on the test split: accuracy
    mean_t(1 - p_t), AUPRC mean_t p_t (the precision of a constant score), AUROC 0.5, macro F1
    0 (no positive is ever found), exact match the fraction of images without a positive label.
    """
    done = completed_trials(trials[trials["workload"] == workload])
    row: dict = {"workload": workload, "rank": math.nan, "method": TRIVIAL}
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
        values["test_macro_f1"] = 0.0 if (prevalence > 0).any() else math.nan
        values["test_exact_match"] = float(done["test_trivial_exact_match"].mean())
    for column, value in values.items():
        row.update({f"{column}_mean": value, f"{column}_low": math.nan, f"{column}_high": math.nan})
    return row


def summary_table(trials: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """Per config: counts and mean [95% interval] over completed seeds of every summary metric;
    ranked by test AUROC within each workload, then that workload's trivial row (rank NaN)."""
    rows = []
    for workload in workloads(trials):
        in_workload = trials[trials["workload"] == workload]
        config_rows = []
        for method, group in in_workload.groupby("method", sort=True):
            done = completed_trials(group)
            row = {"workload": workload, "method": method}
            row.update(n_trials=len(group), n_completed=len(done))
            for m in SUMMARY_METRICS:
                mean, low, high = stats.mean_ci(done[m.column].tolist())
                row.update(
                    {f"{m.column}_mean": mean, f"{m.column}_low": low, f"{m.column}_high": high}
                )
            config_rows.append(row)
        config_rows.sort(
            key=lambda r: (
                -r["test_mean_auroc_mean"] if np.isfinite(r["test_mean_auroc_mean"]) else math.inf,
                r["method"],
            )
        )
        for rank, row in enumerate(config_rows, start=1):
            row["rank"] = rank
        rows += config_rows
        rows.append(_trivial_row(workload, trials, epochs))
    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return table.astype({"n_trials": "int64", "n_completed": "int64"})


def best_rows(table: pd.DataFrame, metric: Metric) -> set[int]:
    """Index labels of the best method row(s) per workload for one metric (ties all marked;
    the trivial row never counts)."""
    best: set[int] = set()
    methods = table[table["method"] != TRIVIAL]
    for _, group in methods.groupby("workload", sort=False):
        values = group[f"{metric.column}_mean"].dropna()
        if values.empty:
            continue
        target = values.max() if metric.higher_is_better else values.min()
        best |= set(values[values == target].index)
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
            adjusted = stats.holm([r.p_value for _, r in family])
            for (method, r), p_holm in zip(family, adjusted, strict=True):
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


# --- section 3: per task -------------------------------------------------------------------


def per_task(trials: pd.DataFrame, epochs: pd.DataFrame, column: str) -> pd.DataFrame:
    """Test ``column`` (auroc, loss, ...) per (method, workload, task): mean, std and count over
    completed seeds (NaN values, such as the AUROC of a one-class task, skipped)."""
    columns = [*CONFIG_KEYS, "task", "mean", "std", "n"]
    done_ids = set(completed_trials(trials)["trial_id"])
    test = epochs[(epochs["split"] == "test") & epochs["trial_id"].isin(done_ids)]
    if test.empty:
        return pd.DataFrame(columns=columns)
    last = test.sort_values("epoch", kind="mergesort").drop_duplicates(
        ["trial_id", "task"], keep="last"
    )
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
