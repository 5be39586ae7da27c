"""Equal tuning budgets: quasi-random search points per method and study, and selection on
validation only.

The protocol follows MLCommons AlgoPerf's external tuning ruleset (Dahl et al., 2023,
"Benchmarking Neural Network Training Algorithms", arXiv:2306.07179): each method declares a
search space, gets the same number of tuning trials drawn quasi-randomly from it, and the
configuration with the best validation score is then trained on the final seeds; several
independent studies repeat the whole search with another tuning seed. The critics of MTL
weighting methods (Xin et al., NeurIPS 2022; Kurin et al., NeurIPS 2022) showed why the plain
sum of losses must get the same budget.

Draws. Study ``j`` has the tuning seed ``tuning.seed + j``. The keys shared by every method
(``tuning.space``) are drawn from one scrambled Halton sequence seeded with the study's seed,
so every method gets the very same points on them; a method's own keys
(``tuning.method_space.<method>``) from a second sequence seeded with the study's seed and the
method's name. Point ``i`` of a budget of ``k`` is row ``i`` of ``Halton(d, scramble=True,
seed=...).random(k)`` (:mod:`scipy.stats.qmc`), mapped per key:

* ``{uniform: [a, b]}``: ``a + u (b - a)``;
* ``{log_uniform: [a, b]}`` (``0 < a < b``): ``exp(log a + u (log b - log a))``;
* ``{choice: [v_0, ..., v_{n-1}]}``: ``v_floor(u n)``;
* ``{dirichlet: alpha}`` (``fixed``'s ``weights`` only: Xin et al.'s sweep of static weights):
  T dimensions of the sequence, ``g_t = F^{-1}_{Gamma(alpha)}(u_t)``, ``w_t = T g_t / sum g``,
  a quasi-random draw from ``T x Dirichlet(alpha, ..., alpha)`` (weights that sum to T, as
  equal weighting's ones do).

Selection reads only each tuning trial's validation score (``select``, default the mean val
AUROC at its best epoch); a trial that did not complete ranks last; ties go to the earlier
point. Test metrics are never passed to it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

KINDS = ("choice", "uniform", "log_uniform", "dirichlet")
# the one key a Dirichlet entry may tune: fixed weighting's vector of one weight per task
DIRICHLET_KEY = "method_params.fixed.weights"


def space_problem(entry: Any) -> str | None:
    """Why ``entry`` is not a search-space entry (``{choice: [...]}``, ``{uniform: [a, b]}``,
    ``{log_uniform: [a, b]}``, ``{dirichlet: alpha}``), or None."""
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
        return (
            "must be one of {choice: [...]}, {uniform: [a, b]}, {log_uniform: [a, b]}, "
            "{dirichlet: alpha}"
        )
    kind, values = next(iter(entry.items()))
    if kind == "dirichlet":
        ok = isinstance(values, int | float) and not isinstance(values, bool)
        if not ok or not math.isfinite(values) or values <= 0:
            return f"dirichlet: alpha must be a finite number above 0, got {values!r}"
        return None
    if not isinstance(values, list) or not values:
        return f"{kind}: must be a non-empty list"
    if kind == "choice":
        return None
    if len(values) != 2 or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        return f"{kind}: must be [low, high], two finite numbers"
    low, high = values
    if not low < high:
        return f"{kind}: low {low} must be below high {high}"
    if kind == "log_uniform" and low <= 0:
        return f"{kind}: low {low} must be above 0"
    return None


def is_dirichlet(entry: dict[str, Any]) -> bool:
    return next(iter(entry)) == "dirichlet"


def bounds(entry: dict[str, Any], num_tasks: int) -> list[Any]:
    """Values that bound an entry, for validation: its choices, low and high, or (Dirichlet)
    the equal weights and a weight vector with zeros."""
    if is_dirichlet(entry):
        return [[1.0] * num_tasks, [float(num_tasks)] + [0.0] * (num_tasks - 1)]
    return list(next(iter(entry.values())))


def map_unit(entry: dict[str, list[Any]], u: float) -> Any:
    """The value of ``entry`` at ``u`` in [0, 1) (module docstring)."""
    kind, values = next(iter(entry.items()))
    if kind == "choice":
        return values[min(int(u * len(values)), len(values) - 1)]
    low, high = float(values[0]), float(values[1])
    if kind == "uniform":
        return low + u * (high - low)
    return math.exp(math.log(low) + u * (math.log(high) - math.log(low)))


def map_dirichlet(alpha: float, u: Sequence[float]) -> list[float]:
    """``T`` weights from ``T`` numbers in [0, 1) (module docstring): Gamma(alpha) quantiles,
    scaled to sum ``T``."""
    from scipy.stats import gamma

    g = gamma.ppf(np.clip(np.asarray(u, dtype=float), 1e-12, 1 - 1e-12), alpha)
    return [float(x) for x in len(g) * g / g.sum()]


def _halton(dims: int, budget: int, seed: Any) -> np.ndarray:
    from scipy.stats import qmc

    if dims == 0:
        return np.zeros((budget, 0))
    return qmc.Halton(d=dims, scramble=True, seed=np.random.default_rng(seed)).random(budget)


def study_seed(base: int, study: int) -> int:
    return base + study


def draw_points(
    space: dict[str, dict[str, Any]],
    method_space: dict[str, dict[str, Any]],
    budget: int,
    seed: int,
    num_tasks: int = 0,
) -> list[dict[str, Any]]:
    """``budget`` points of one method in one study (module docstring): ``space`` the shared
    keys (dotted, e.g. ``train.lr``), ``method_space`` the method's own (already dotted,
    ``method_params.<m>.<key>``), ``seed`` the study's seed; the method's name enters through
    the keys of ``method_space``; a Dirichlet entry takes ``num_tasks`` dimensions. Returns
    one dict of values per point, shared keys first."""
    shared = _halton(len(space), budget, seed)
    widths = [num_tasks if is_dirichlet(e) else 1 for e in method_space.values()]
    own_seed = [seed, *(zlib.crc32(key.encode()) for key in method_space)]
    own = _halton(sum(widths), budget, own_seed)
    starts = np.cumsum([0, *widths])
    points = []
    for i in range(budget):
        point = {k: map_unit(e, float(shared[i, j])) for j, (k, e) in enumerate(space.items())}
        for j, (key, entry) in enumerate(method_space.items()):
            u = own[i, starts[j] : starts[j + 1]]
            point[key] = (
                map_dirichlet(float(entry["dirichlet"]), u)
                if is_dirichlet(entry)
                else map_unit(entry, float(u[0]))
            )
        points.append(point)
    return points


def select(scores: Sequence[float | None]) -> int:
    """The index of the best validation score (higher is better); None or NaN (a trial that
    did not complete) ranks last; ties go to the earlier index."""
    best, best_score = 0, -math.inf
    for i, score in enumerate(scores):
        value = -math.inf if score is None or not math.isfinite(score) else float(score)
        if value > best_score:
            best, best_score = i, value
    return best
