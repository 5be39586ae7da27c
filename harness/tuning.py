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
* ``{choice: [v_0, ..., v_{n-1}]}``: ``v_floor(u n)``.

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

KINDS = ("choice", "uniform", "log_uniform")


def space_problem(entry: Any) -> str | None:
    """Why ``entry`` is not a search-space entry (``{choice: [...]}``, ``{uniform: [a, b]}``,
    ``{log_uniform: [a, b]}``), or None."""
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
        return "must be one of {choice: [...]}, {uniform: [a, b]}, {log_uniform: [a, b]}"
    kind, values = next(iter(entry.items()))
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


def bounds(entry: dict[str, list[Any]]) -> list[Any]:
    """The values that bound an entry (its choices, or low and high), for validation."""
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


def _halton(dims: int, budget: int, seed: Any) -> np.ndarray:
    from scipy.stats import qmc

    if dims == 0:
        return np.zeros((budget, 0))
    return qmc.Halton(d=dims, scramble=True, seed=np.random.default_rng(seed)).random(budget)


def study_seed(base: int, study: int) -> int:
    return base + study


def draw_points(
    space: dict[str, dict[str, list[Any]]],
    method_space: dict[str, dict[str, list[Any]]],
    budget: int,
    seed: int,
) -> list[dict[str, Any]]:
    """``budget`` points of one method in one study (module docstring): ``space`` the shared
    keys (dotted, e.g. ``train.lr``), ``method_space`` the method's own (already dotted,
    ``method_params.<m>.<key>``), ``seed`` the study's seed; the method's name enters through
    the keys of ``method_space``. Returns one dict of values per point, shared keys first."""
    shared = _halton(len(space), budget, seed)
    own_seed = [seed, *(zlib.crc32(key.encode()) for key in method_space)]
    own = _halton(len(method_space), budget, own_seed)
    points = []
    for i in range(budget):
        point = {k: map_unit(e, float(shared[i, j])) for j, (k, e) in enumerate(space.items())}
        point |= {k: map_unit(e, float(own[i, j])) for j, (k, e) in enumerate(method_space.items())}
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
