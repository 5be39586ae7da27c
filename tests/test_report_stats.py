"""reports.stats against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from reports.stats import (
    PairedResult,
    delta_m,
    holm,
    mean_ci,
    paired_difference,
    performance_profile,
    profile_area,
    time_to_target,
)

# t quantile for 2 dof has a closed form: t_q = (2q - 1) / sqrt(2 q (1 - q)).
# q = 0.975: 0.95 / sqrt(2 * 0.975 * 0.025) = 0.95 / sqrt(0.04875) = 4.302652729749462
# (scipy.stats.t.ppf(0.975, 2) gives the same literal).
T975_2 = 4.302652729749462
# scipy.stats.t.ppf(0.975, 1) = 12.706204736174694 (= tan(0.475 pi)).
T975_1 = 12.706204736174694
# scipy.stats.t.ppf(0.95, 2): 0.9 / sqrt(2 * 0.95 * 0.05) = 0.9 / sqrt(0.095) = 2.9199855803537242
T95_2 = 2.9199855803537242
# Intervals built on these quantiles are checked to T_REL: scipy 1.17 gives the literals above,
# scipy 1.13 .. 1.16 (the floor is tested in CI) some 2e-11 (relative) away.
T_REL = 1e-10


# ---- mean_ci ---------------------------------------------------------------------------------


def test_mean_ci_three_seeds_by_hand():
    # x = 1, 2, 3: mean 2, s = sqrt((1 + 0 + 1) / 2) = 1, se = 1 / sqrt(3) = 0.5773502691896258
    # half = 4.302652729749462 * 0.5773502691896258 = 2.4841377118...
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    half = T975_2 / math.sqrt(3)
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(2.48413771, abs=1e-8)
    assert low == pytest.approx(2.0 - half, rel=T_REL)
    assert high == pytest.approx(2.0 + half, rel=T_REL)


def test_mean_ci_other_confidence():
    # 90 %: half = 2.9199855803537242 / sqrt(3) = 1.6858547...
    _, low, high = mean_ci([1.0, 2.0, 3.0], confidence=0.90)
    assert (high - low) / 2 == pytest.approx(T95_2 / math.sqrt(3), rel=T_REL)


def test_mean_ci_two_seeds():
    # x = 0, 2: mean 1, s = sqrt((1 + 1) / 1) = sqrt(2), se = sqrt(2) / sqrt(2) = 1
    # half = 12.706204736174694 * 1
    mean, low, high = mean_ci([0.0, 2.0])
    assert mean == pytest.approx(1.0)
    assert low == pytest.approx(1.0 - T975_1, rel=T_REL)
    assert high == pytest.approx(1.0 + T975_1, rel=T_REL)


def test_mean_ci_drops_nan():
    assert mean_ci([1.0, float("nan"), 2.0, 3.0]) == pytest.approx(mean_ci([1.0, 2.0, 3.0]))


def test_mean_ci_one_and_zero_values():
    mean, low, high = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in mean_ci([]))
    assert all(math.isnan(v) for v in mean_ci([float("nan"), float("nan")]))


def test_mean_ci_zero_variance_collapses():
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


# ---- paired_difference -----------------------------------------------------------------------


def test_paired_difference_three_seeds_by_hand():
    # d = a - b = (1 - 0.5, 2 - 1, 4 - 2.5) = (0.5, 1.0, 1.5): mean 1.0,
    # s = sqrt((0.25 + 0 + 0.25) / 2) = 0.5, se = 0.5 / sqrt(3) = 0.28867513459481287
    # half = 4.302652729749462 * 0.28867513459481287 = 1.2420688559...
    # T = 1.0 / 0.28867513459481287 = 2 sqrt(3) = sqrt(12)
    # For 2 dof, P(|t| > T) = 1 - T / sqrt(2 + T^2) = 1 - sqrt(12 / 14) = 0.07417990022744858
    r = paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 2.5])
    assert isinstance(r, PairedResult)
    assert r.n == 3 and r.enough
    assert r.mean_diff == pytest.approx(1.0)
    half = T975_2 * 0.5 / math.sqrt(3)
    assert half == pytest.approx(1.24206886, abs=1e-8)
    assert r.low == pytest.approx(1.0 - half, rel=T_REL)
    assert r.high == pytest.approx(1.0 + half, rel=T_REL)
    assert r.p_value == pytest.approx(1 - math.sqrt(12 / 14), rel=1e-9)
    assert r.p_value == pytest.approx(0.07417990022744858, rel=1e-9)


def test_paired_difference_is_frozen():
    r = paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 2.5])
    with pytest.raises(AttributeError):
        r.n = 5  # type: ignore[misc]


def test_paired_difference_drops_pairs_with_nan():
    nan = float("nan")
    r = paired_difference([1.0, nan, 2.0, 4.0, 9.0], [0.5, 3.0, 1.0, 2.5, nan])
    assert r == paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 2.5])


def test_paired_difference_sign_flips():
    r = paired_difference([0.5, 1.0, 2.5], [1.0, 2.0, 4.0])
    assert r.mean_diff == pytest.approx(-1.0)
    assert r.p_value == pytest.approx(0.07417990022744858, rel=1e-9)


def test_paired_difference_two_pairs_not_enough():
    # d = (1, 3): mean 2, s = sqrt(2), se = 1, half = 12.706204736174694
    # T = 2, 1 dof: p = 1 - 2 atan(2) / pi = 0.2951672353008665
    r = paired_difference([2.0, 4.0], [1.0, 1.0])
    assert r.n == 2 and not r.enough
    assert r.low == pytest.approx(2.0 - T975_1, rel=T_REL)
    assert r.high == pytest.approx(2.0 + T975_1, rel=T_REL)
    assert r.p_value == pytest.approx(1 - 2 * math.atan(2.0) / math.pi, rel=1e-9)


def test_paired_difference_one_and_zero_pairs():
    r = paired_difference([2.0], [1.0])
    assert r.n == 1 and r.mean_diff == 1.0 and not r.enough
    assert math.isnan(r.low) and math.isnan(r.high) and math.isnan(r.p_value)
    r = paired_difference([], [])
    assert r.n == 0 and not r.enough
    assert all(math.isnan(v) for v in (r.mean_diff, r.low, r.high, r.p_value))


def test_paired_difference_zero_variance():
    # constant nonzero difference: p = 0, interval collapsed to the mean
    r = paired_difference([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert (r.mean_diff, r.low, r.high, r.p_value) == (0.5, 0.5, 0.5, 0.0)
    # identical runs: p = 1
    r = paired_difference([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (r.mean_diff, r.low, r.high, r.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_difference_length_mismatch():
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


# ---- holm ------------------------------------------------------------------------------------


def test_holm_textbook():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005, 0.01, 0.03, 0.04
    # raw factors: 4 * 0.005 = 0.02, 3 * 0.01 = 0.03, 2 * 0.03 = 0.06, 1 * 0.04 = 0.04
    # running max: 0.02, 0.03, 0.06, 0.06  -> back in input order:
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_is_monotone():
    # sorted 0.5, 0.6: 2 * 0.5 = 1.0, 1 * 0.6 = 0.6 -> running max 1.0, 1.0
    assert holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    # 3 * 0.4 = 1.2 -> capped at 1
    assert holm([0.4, 0.9, 0.95]) == pytest.approx([1.0, 1.0, 1.0])


def test_holm_nan_passed_through_and_not_counted():
    # m = 2 (NaN ignored): 2 * 0.01 = 0.02, 1 * 0.04 = 0.04
    out = holm([0.04, float("nan"), 0.01])
    assert math.isnan(out[1])
    assert [out[0], out[2]] == pytest.approx([0.04, 0.02])
    assert holm([]) == []


def test_holm_ties():
    # 3 * 0.01 = 0.03, 2 * 0.01 = 0.02 -> running max keeps 0.03, 1 * 0.02 = 0.02 -> 0.03
    assert holm([0.01, 0.01, 0.02]) == pytest.approx([0.03, 0.03, 0.03])


# ---- time_to_target --------------------------------------------------------------------------


def test_time_to_target_first_crossing():
    times = [10.0, 20.0, 30.0, 40.0]
    values = [0.5, 0.7, 0.69, 0.8]
    assert time_to_target(times, values, 0.7) == 20.0  # >= counts, first epoch only
    assert time_to_target(times, values, 0.75) == 40.0
    assert time_to_target(times, values, 0.1) == 10.0


def test_time_to_target_never_reached_and_nan():
    assert time_to_target([1.0, 2.0], [0.5, 0.6], 0.9) == math.inf
    assert time_to_target([], [], 0.5) == math.inf
    assert time_to_target([1.0, 2.0], [float("nan"), 0.9], 0.8) == 2.0
    with pytest.raises(ValueError):
        time_to_target([1.0], [0.5, 0.6], 0.5)


# ---- performance_profile / profile_area ------------------------------------------------------


def test_performance_profile_by_hand():
    inf = math.inf
    times = {"A": [1.0, 2.0, inf], "B": [2.0, 2.0, 4.0], "C": [inf, inf, inf]}
    # best per workload: (1, 2, 4)
    # A ratios (1, 1, inf); B (2, 1, 1) (tie on workload 2: both 1); C all inf
    # tau = 1:   A 2/3, B 2/3 (workloads 2, 3), C 0
    # tau = 1.5: A 2/3, B 2/3, C 0
    # tau = 2:   A 2/3, B 3/3, C 0
    # tau = 3:   A 2/3, B 1,   C 0
    taus = [1.0, 1.5, 2.0, 3.0]
    prof = performance_profile(times, taus)
    assert prof["A"] == pytest.approx([2 / 3] * 4)
    assert prof["B"] == pytest.approx([2 / 3, 2 / 3, 1.0, 1.0])
    assert prof["C"] == [0.0, 0.0, 0.0, 0.0]
    # B area: 0.5 * (2/3 + 2/3) / 2 = 1/3; 0.5 * (2/3 + 1) / 2 = 5/12; 1 * (1 + 1) / 2 = 1
    # total 4/12 + 5/12 + 12/12 = 21/12, over tau range 3 - 1 = 2 -> 21/24 = 0.875
    assert profile_area(taus, prof["B"]) == pytest.approx(0.875)
    assert profile_area(taus, prof["A"]) == pytest.approx(2 / 3)
    assert profile_area(taus, prof["C"]) == 0.0


def test_performance_profile_unsolved_workload_and_nan():
    # workload 2 solved by nobody: never counts, so the best fraction is 1/2
    prof = performance_profile({"A": [1.0, math.inf], "B": [3.0, float("nan")]}, [1.0, 3.0])
    assert prof == {"A": [0.5, 0.5], "B": [0.0, 0.5]}


def test_performance_profile_zero_time():
    prof = performance_profile({"A": [0.0], "B": [0.0], "C": [1.0]}, [1.0, 100.0])
    assert prof == {"A": [1.0, 1.0], "B": [1.0, 1.0], "C": [0.0, 0.0]}


def test_profile_area_needs_range():
    with pytest.raises(ValueError):
        profile_area([1.0], [1.0])
    with pytest.raises(ValueError):
        profile_area([1.0, 1.0], [1.0, 1.0])


# ---- import hygiene --------------------------------------------------------------------------


def test_import_does_not_pull_torch_or_ray():
    code = (
        "import sys, reports.stats; "
        "bad = [m for m in ('torch', 'ray') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("seed", range(20))
def test_paired_p_value_equals_scipy_ttest_rel(seed: int) -> None:
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    a = rng.normal(0.8, 0.02, n)
    b = a + rng.normal(0.005, 0.01, n)
    result = paired_difference(a, b)
    assert result.p_value == pytest.approx(float(ttest_rel(a, b).pvalue), rel=1e-9)


def test_paired_nearly_equal_differences_warn_nothing() -> None:
    import warnings

    a = [0.82, 0.84, 0.86]
    b = [0.77, 0.79, 0.81]  # differences 0.05 up to rounding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_difference(a, b)
    assert result.mean_diff == pytest.approx(0.05) and result.p_value < 1e-6


# ---- delta_m ---------------------------------------------------------------------------------


def test_delta_m_by_hand():
    """AUROC 0.8 vs 0.7: +0.1/0.7 = +0.142857; AUPRC 0.5 vs 0.5: 0; loss 0.2 vs 0.25 (lower
    is better): -(0.2 - 0.25)/0.25 = +0.2. Mean of the three x 100 = 11.428571..."""
    value = delta_m([0.8, 0.5, 0.2], [0.7, 0.5, 0.25], [False, False, True])
    assert value == pytest.approx(100 * (0.1 / 0.7 + 0.0 + 0.2) / 3, rel=1e-12)
    assert value == pytest.approx(11.428571428571429, rel=1e-12)


def test_delta_m_as_libmtl_averages_it():
    """LibMTL's count_improvement averages (-1)^w (B - M)/B over each task's metrics (w = 1
    when higher is better), then over tasks: with the same metrics for every task that is the
    mean over all entries, written out here independently of delta_m."""
    rng = np.random.default_rng(0)
    tasks, lower = 5, [False, False, True]
    base = rng.uniform(0.2, 0.9, (tasks, 3))
    new = base * rng.uniform(0.8, 1.2, (tasks, 3))
    per_task = []
    for t in range(tasks):
        w = np.array([0 if low else 1 for low in lower])
        per_task.append(((-1.0) ** w * (base[t] - new[t]) / base[t]).mean())
    expected = 100 * float(np.mean(per_task))
    assert delta_m(new.ravel(), base.ravel(), lower * tasks) == pytest.approx(expected, rel=1e-12)


def test_delta_m_skips_undefined_entries_and_is_zero_against_itself():
    x = [0.7, 0.4, 0.3, 0.9]
    assert delta_m(x, x, [False, False, True, False]) == 0.0
    # NaN on either side and a zero reference leave their entry out of the mean
    value = delta_m([0.8, math.nan, 0.5, 0.3], [0.4, 0.5, 0.0, 0.3], [False] * 4)
    assert value == pytest.approx(100 * (1.0 + 0.0) / 2)
    assert math.isnan(delta_m([math.nan], [0.5], [False]))
    with pytest.raises(ValueError, match="entries differ"):
        delta_m([0.5, 0.6], [0.5], [False, False])
