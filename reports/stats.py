"""Small, pure statistics for comparing methods trained with several seeds.

numpy and scipy only (never torch or ray). Every function takes plain sequences of floats and
returns floats, so the HTML report can show intervals, paired tests and time-to-target profiles
that a reader can recompute by hand from the formulas in the docstrings.

Conventions: a NaN is a missing run and is dropped (``mean_ci``, ``paired_difference``) or
passed through (``holm``); ``inf`` is a time that was never reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

NAN = float("nan")
ALPHA = 0.05  # the report's significance level (after Holm)
MIN_PAIRS = 3  # paired seeds needed before a difference may be called significant


def _as_floats(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype=float).ravel()


def _t_half_width(sd: float, n: int, confidence: float) -> float:
    """t_{(1+c)/2, n-1} * sd / sqrt(n)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    q = float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1))
    return q * sd / math.sqrt(n)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds with a Student-t confidence interval.

    With x_1..x_n the non-NaN values (NaNs are dropped)::

        mean = sum(x_i) / n
        s    = sqrt(sum((x_i - mean)^2) / (n - 1))        # sample sd, n - 1 dof
        half = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)
        (mean, mean - half, mean + half)

    n == 1 gives ``(x_1, nan, nan)`` (no spread to estimate); n == 0 gives all NaN.
    Equal values (s == 0) give the interval collapsed to the mean.
    """
    x = _as_floats(values)
    x = x[~np.isnan(x)]
    n = x.size
    if n == 0:
        return (NAN, NAN, NAN)
    mean = float(x.mean())
    if n == 1:
        return (mean, NAN, NAN)
    half = _t_half_width(float(x.std(ddof=1)), n, confidence)
    return (mean, mean - half, mean + half)


def delta_m(
    values: Sequence[float], reference: Sequence[float], lower_is_better: Sequence[bool]
) -> float:
    """Δm%: the mean relative change of a multi-task model against a reference, in percent
    (Maninis, Radosavovic and Kokkinos, CVPR 2019, "Attentive single-tasking of multiple
    tasks"; the measure of LibMTL's ``count_improvement`` and of the Nash-MTL and FAMO papers).

    Over the K (task, metric) entries with M_k the model's value, B_k the reference's and
    l_k = 1 when lower is better (a loss), else 0::

        Δm = 100 / K * sum_k (-1)^{l_k} * (M_k - B_k) / B_k

    so Δm > 0 is better than the reference. Entries where either value is NaN or B_k is 0
    are left out of the mean (and out of K); none left gives NaN.
    """
    m, b = _as_floats(values), _as_floats(reference)
    lower = np.asarray(lower_is_better, dtype=bool).ravel()
    if not m.size == b.size == lower.size:
        raise ValueError(f"delta_m: {m.size}, {b.size} and {lower.size} entries differ")
    keep = ~np.isnan(m) & ~np.isnan(b) & (b != 0)
    if not keep.any():
        return NAN
    sign = np.where(lower[keep], -1.0, 1.0)
    return float(100.0 * np.mean(sign * (m[keep] - b[keep]) / b[keep]))


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of two methods over the same seeds (difference is a - b)."""

    n: int
    mean_diff: float
    low: float
    high: float
    p_value: float
    enough: bool  # n >= MIN_PAIRS: fewer pairs give an interval too wide to read anything into


def paired_difference(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> PairedResult:
    """Paired t comparison of a against b, where a[i] and b[i] come from the same seed.

    Pairs where either side is NaN are dropped. With d_i = a_i - b_i over the n kept pairs::

        mean_diff = sum(d_i) / n
        s         = sqrt(sum((d_i - mean_diff)^2) / (n - 1))
        half      = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)
        interval  = (mean_diff - half, mean_diff + half)
        T         = mean_diff / (s / sqrt(n)),  p = 2 * P(t_{n-1} > |T|)   # = scipy ttest_rel

    Edge cases: n == 0 gives mean_diff NaN; n < 2 gives a NaN interval and p-value. When all
    differences are equal (s == 0) the t statistic is undefined, so by convention
    p = 1.0 if mean_diff == 0 else 0.0 and the interval collapses to (mean_diff, mean_diff).
    ``enough`` is n >= ``MIN_PAIRS`` (3).
    """
    x = _as_floats(a)
    y = _as_floats(b)
    if x.shape != y.shape:
        raise ValueError(f"paired inputs differ in length: {x.size} != {y.size}")
    keep = ~(np.isnan(x) | np.isnan(y))
    d = x[keep] - y[keep]
    n = int(d.size)
    if n == 0:
        return PairedResult(0, NAN, NAN, NAN, NAN, False)
    mean = float(d.mean())
    if n == 1:
        return PairedResult(1, mean, NAN, NAN, NAN, False)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
        return PairedResult(n, mean, mean, mean, p, n >= MIN_PAIRS)
    half = _t_half_width(sd, n, confidence)
    # T and p from the formula above (what ttest_rel computes), without ttest_rel's precision
    # warning when the differences are nearly equal
    t_stat = mean / (sd / math.sqrt(n))
    p = float(2.0 * stats.t.sf(abs(t_stat), n - 1))
    return PairedResult(n, mean, mean - half, mean + half, p, n >= MIN_PAIRS)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    With the m non-NaN p-values sorted ascending, p_(1) <= ... <= p_(m)::

        adj_(k) = min(1, max_{j <= k} (m - j + 1) * p_(j))

    (step-down, monotone in k, capped at 1). Rejecting where adj <= alpha is Holm's procedure
    at family-wise level alpha. NaNs are returned as NaN and do not count in m.
    """
    p = _as_floats(p_values)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = idx.size
    if m == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for k, i in enumerate(order):  # k = j - 1, so the factor is m - k
        running = max(running, min(1.0, (m - k) * float(p[i])))
        out[i] = running
    return out.tolist()


def holm_family(
    family: Sequence[tuple[Any, PairedResult]],
) -> list[tuple[Any, PairedResult, float]]:
    """``(key, result, Holm-adjusted p)`` for each paired comparison of one family (the
    comparisons a correction runs over), in the input order; see :func:`holm`."""
    adjusted = holm([r.p_value for _, r in family])
    return [(key, r, p) for (key, r), p in zip(family, adjusted, strict=True)]


def time_to_target(
    curve_times: Sequence[float], curve_values: Sequence[float], target: float
) -> float:
    """First time at which the curve reaches the target (higher is better).

    ``curve_times[i]`` is the cumulative time at the end of epoch i and ``curve_values[i]`` the
    metric then. Returns ``curve_times[i*]`` with i* = min{i : curve_values[i] >= target}, or
    ``inf`` when no value reaches the target (NaN values never do). No interpolation between
    epochs: the target counts as reached only once an evaluation shows it.
    """
    t = _as_floats(curve_times)
    v = _as_floats(curve_values)
    if t.shape != v.shape:
        raise ValueError(f"times and values differ in length: {t.size} != {v.size}")
    hit = np.flatnonzero(v >= target)  # NaN >= target is False
    return float(t[hit[0]]) if hit.size else math.inf


def performance_profile(
    times: Mapping[str, Sequence[float]], taus: Sequence[float]
) -> dict[str, list[float]]:
    """AlgoPerf-style performance profile of time-to-target over workloads.

    ``times[method][w]`` is the method's time on workload w (``inf`` or NaN: never reached).
    For each workload w, with best_w = min over methods of times[method][w]::

        r_{method, w} = times[method][w] / best_w
        rho_method(tau) = #{w : r_{method, w} <= tau} / W          # W = number of workloads

    A time that never reached the target (inf/NaN) has r = inf and never counts, also for
    workloads no method solved. If best_w == 0, a zero time has r = 1 and any other r = inf.
    Tied fastest methods all get r = 1.
    """
    methods = list(times)
    if not methods:
        return {}
    arr = np.array([_as_floats(times[m]) for m in methods], dtype=float)
    if arr.ndim != 2:
        raise ValueError("every method needs a time for the same workloads")
    arr = np.where(np.isnan(arr), np.inf, arr)
    n_workloads = arr.shape[1]
    tau = _as_floats(taus)
    if n_workloads == 0:
        return {m: [NAN] * tau.size for m in methods}
    best = arr.min(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = arr / best
    ratio = np.where(np.isfinite(arr), ratio, np.inf)  # never reached: inf, also when best is inf
    ratio = np.where((best == 0) & (arr == 0), 1.0, ratio)  # 0 / 0: tied fastest
    ratio = np.where(np.isnan(ratio), np.inf, ratio)
    frac = (ratio[:, :, None] <= tau[None, None, :]).sum(axis=1) / n_workloads
    return {m: frac[i].tolist() for i, m in enumerate(methods)}


def profile_area(taus: Sequence[float], fractions: Sequence[float]) -> float:
    """Normalised area under a performance profile (1 = fastest everywhere).

    Trapezoid rule over increasing taus::

        area = sum_k (tau_{k+1} - tau_k) * (f_k + f_{k+1}) / 2  /  (tau_last - tau_first)

    Needs at least two taus with tau_last > tau_first.
    """
    t = _as_floats(taus)
    f = _as_floats(fractions)
    if t.shape != f.shape:
        raise ValueError(f"taus and fractions differ in length: {t.size} != {f.size}")
    if t.size < 2 or not t[-1] > t[0]:
        raise ValueError("profile_area needs at least two increasing taus")
    return float(np.trapezoid(f, t) / (t[-1] - t[0]))
