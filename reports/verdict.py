"""The report's answer in words: per workload, which methods differ from the baseline.

Built only from statistics the report computes anyway (:mod:`reports.summary`,
:mod:`reports.stats`), so every sentence can be checked against the tables below it:

- test AUROC: the paired comparison with the baseline (paired t-test over seeds, Holm-corrected
  over the methods compared with it); a method *differs* when the Holm p-value is below 0.05;
- cost: per seed the ratio method / baseline of images/s and of peak memory; its geometric mean
  with a 95% interval from the paired t-interval of the log values; a ratio is *outside its
  noise* when the paired t-test on the log values survives Holm over the methods at p < 0.05;
- no claim of either kind with fewer than 3 paired seeds: such methods and ratios are listed
  as untested;
- methods with no completed trial or no test AUROC, and methods scoring below the
  always-negative row, are named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from reports import stats
from reports import summary as sm
from reports.format import fmt_number, fmt_ratio, fmt_signed, plural

ALPHA = stats.ALPHA
MIN_SEEDS = stats.MIN_PAIRS  # paired seeds needed before anything is called significant
COST_METRICS = (("images_per_second", "images/s"), ("peak_memory_mb", "peak memory"))

VERDICT_RULE = (
    f"Rule: a method differs from the baseline when the paired t-test over seeds of its mean "
    f"test AUROC survives Holm's correction over the methods compared at p < {ALPHA:g} "
    "(difference shown with its 95% paired interval); a cost ratio (images/s, peak memory; "
    "geometric mean of the per-seed ratios with its 95% interval) is outside its noise when the "
    f"paired t-test on the log values survives Holm at p < {ALPHA:g}; with fewer than "
    f"{MIN_SEEDS} paired seeds no significance claim is made."
)


@dataclass
class WorkloadVerdict:
    workload: str
    lines: list[str] = field(default_factory=list)  # plain text, one sentence each


def _interval(low: float, high: float, digits: int = 3) -> str:
    return f"[{fmt_signed(low, digits)}, {fmt_signed(high, digits)}]"


def _ratio_interval(low: float, high: float) -> str:
    """``[0.91, 0.998]``: two decimals, more where a bound other than 1 would print as 1.00
    (the interval of a ratio outside its noise never contains 1)."""
    parts = []
    for bound in (low, high):
        digits = 2
        while digits < 4 and bound != 1 and round(bound, digits) == 1:
            digits += 1
        parts.append(f"{bound:.{digits}f}")
    return f"[{parts[0]}, {parts[1]}]"


def _diff_text(row: pd.Series) -> str:
    """``+0.012 AUROC [+0.004, +0.020]`` (no interval with one pair)."""
    text = f"{fmt_signed(row['mean_diff'], 3)} AUROC"
    if math.isfinite(row["low"]) and math.isfinite(row["high"]):
        text += f" {_interval(row['low'], row['high'])}"
    return text


def _auroc_phrase(row: pd.Series) -> str:
    return f"{row['method']} {_diff_text(row)}"


def _seeds_text(values: list[int]) -> str:
    low, high = min(values), max(values)
    count = f"{low}" if low == high else f"{low}-{high}"
    return plural(high, "seed", shown=count)


def _cost_ratios(done: pd.DataFrame, workload: str, baseline: str) -> pd.DataFrame:
    """Per method and cost metric: paired seeds, ratio (geometric mean), interval, Holm p."""
    here = done[done["workload"] == workload]
    ref = here[here["method"] == baseline]
    rows = []
    for column, what in COST_METRICS:
        family = []
        for method in sorted(set(here["method"]) - {baseline}):
            paired = here[here["method"] == method].merge(ref, on="seed", suffixes=("", "_ref"))
            a, b = paired[column].to_numpy(float), paired[f"{column}_ref"].to_numpy(float)
            keep = (a > 0) & (b > 0)  # logs need positive values; NaN compares False
            family.append((method, stats.paired_difference(np.log(a[keep]), np.log(b[keep]))))
        for method, r, p_holm in stats.holm_family(family):
            rows.append(
                {
                    "method": method,
                    "what": what,
                    "n": r.n,
                    "ratio": math.exp(r.mean_diff) if r.n else math.nan,
                    "low": math.exp(r.low) if math.isfinite(r.low) else math.nan,
                    "high": math.exp(r.high) if math.isfinite(r.high) else math.nan,
                    "p_holm": p_holm,
                    "enough": r.enough,
                }
            )
    return pd.DataFrame(
        rows, columns=["method", "what", "n", "ratio", "low", "high", "p_holm", "enough"]
    )


def _flag_lines(summary: pd.DataFrame, workload: str) -> list[str]:
    rows = summary[(summary["workload"] == workload) & (summary["method"] != sm.TRIVIAL)]
    trivial = summary[(summary["workload"] == workload) & (summary["method"] == sm.TRIVIAL)]
    lines = []
    for row in rows.itertuples(index=False):
        if row.flag in (sm.ALL_DIVERGED, sm.ALL_FAILED, sm.NONE_COMPLETED):
            lines.append(f"{row.method}: no completed trial ({row.flag}), so it is not ranked.")
        elif row.flag == sm.NO_AUROC:
            lines.append(
                f"{row.method}: no completed trial has a test AUROC ({row.flag}), so it is not "
                "ranked."
            )
        elif row.flag == sm.BELOW_TRIVIAL:
            floor = trivial["test_mean_auroc_mean"].iloc[0] if len(trivial) else math.nan
            lines.append(
                f"{row.method} scores below the always-negative row (mean test AUROC "
                f"{fmt_number(row.test_mean_auroc_mean, 3)} vs {fmt_number(floor, 3)}, or AUPRC "
                "below the prevalence): a failed run rather than a result."
            )
    return lines


def workload_verdicts(
    trials: pd.DataFrame, summary: pd.DataFrame, baseline: str
) -> list[WorkloadVerdict]:
    """One :class:`WorkloadVerdict` per workload, in the order of the summary table."""
    paired = sm.paired_comparisons(trials, baseline)
    paired = paired[paired["metric"] == "test_mean_auroc"]
    done = sm.completed_trials(trials)
    out = []
    for workload in sm.workloads(trials):
        verdict = WorkloadVerdict(workload)
        out.append(verdict)
        here = paired[(paired["workload"] == workload) & (paired["n"] > 0)]
        has_baseline = not done[(done["workload"] == workload) & (done["method"] == baseline)].empty
        if not has_baseline:
            verdict.lines.append(
                f"No completed {baseline} trial here, so no method is compared with the baseline."
            )
        elif here.empty:
            verdict.lines.append(f"No other method completed a trial beside {baseline}.")
        else:
            verdict.lines += _auroc_lines(here, baseline)
            verdict.lines += _cost_lines(_cost_ratios(done, workload, baseline), baseline)
        verdict.lines += _flag_lines(summary, workload)
    return out


def _auroc_lines(here: pd.DataFrame, baseline: str) -> list[str]:
    tested = here[here["enough"].astype(bool)]
    untested = here[~here["enough"].astype(bool)]
    lines = []
    if tested.empty:
        seeds = _seeds_text(untested["n"].astype(int).tolist())
        observed = "; ".join(_auroc_phrase(r) for _, r in untested.iterrows())
        return [
            f"With {seeds} no significance claim is made ({MIN_SEEDS} or more paired seeds "
            f"are needed). Observed test AUROC differences from {baseline}: {observed}."
        ]
    seeds = _seeds_text(tested["n"].astype(int).tolist())
    # the t-test pairs seeds; Holm corrects over every method with a p-value (stats.holm's m)
    family = int(here["p_value"].notna().sum())
    holm = f", Holm-corrected over {family} methods compared" if family > 1 else ""
    procedure = f"paired t-test over {seeds}{holm}, p < {ALPHA:g}"
    significant = tested[tested["p_holm"] < ALPHA]
    for _, r in significant.iterrows():
        direction = "higher" if r["mean_diff"] > 0 else "lower"
        lines.append(
            f"{r['method']} differs from {baseline} ({procedure}): "
            f"test AUROC {direction}: {_diff_text(r)} "
            f"(Holm p = {r['p_holm']:.3g})."
        )
    rest = tested[~(tested["p_holm"] < ALPHA)]
    if len(rest):
        names = "; ".join(_auroc_phrase(r) for _, r in rest.iterrows())
        subject = "no method" if significant.empty else "no other method"
        lines.append(
            f"{subject[0].upper() + subject[1:]} differs from {baseline} ({procedure}); {names}."
        )
    if len(untested):
        names = "; ".join(
            f"{_auroc_phrase(r)} ({plural(int(r['n']), 'seed')})" for _, r in untested.iterrows()
        )
        lines.append(f"Too few paired seeds for a claim: {names}.")
    return lines


def _cost_lines(cost: pd.DataFrame, baseline: str) -> list[str]:
    tested = cost[cost["enough"].astype(bool)]
    untested = cost[~cost["enough"].astype(bool)]
    if tested.empty:
        return [
            f"Cost ratios to {baseline} are not tested: fewer than {MIN_SEEDS} paired seeds "
            "with a recorded value."
        ]
    lines = []
    outside = tested[tested["p_holm"] < ALPHA]
    other = "other tested" if len(untested) else "other"
    if outside.empty:
        tested_what = "tested " if len(untested) else ""
        lines.append(
            f"No {tested_what}images/s or peak memory ratio to {baseline} is outside its noise."
        )
    else:
        parts = [
            f"{r['method']} {r['ratio']:.2f}× {baseline}'s {r['what']} "
            f"{_ratio_interval(r['low'], r['high'])}"
            for _, r in outside.iterrows()
        ]
        lines.append(
            f"Cost outside its noise: {'; '.join(parts)}; every {other} cost ratio is within noise."
        )
        if (outside["what"] == "images/s").any():
            lines.append(
                "Images/s come from trials that may have run side by side and shared the "
                "machine; harness bench times methods step by step in one process."
            )
    if len(untested):
        names = "; ".join(
            (
                f"{r['method']} {fmt_ratio(r['ratio'])} {baseline}'s {r['what']}"
                if math.isfinite(r["ratio"])
                else f"{r['method']} {r['what']}"
            )
            + f" ({plural(int(r['n']), 'paired seed')})"
            for _, r in untested.iterrows()
        )
        lines.append(
            f"Cost ratios to {baseline} with too few paired seeds to test (fewer than "
            f"{MIN_SEEDS}): {names}."
        )
    return lines
