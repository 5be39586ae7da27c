"""What a trial asks of the cluster, and how many trials run at once, on a fixed or an
autoscaling Ray cluster.

The cluster's *ceiling* is what it has now or, per resource, what its autoscaler can reach
(Ray's cluster config: each node group's ``max_count`` times its resources; Ray Train reads the
same figure, ``ray._private.state.state.get_max_resources_from_cluster_config``). Only an
autoscaler that reports its config to Ray's GCS fills it (KubeRay); Ray's own autoscaler of
``ray up`` and ``ray start --autoscaling-config`` does not (checked with Ray 2.60, v1 and v2),
so there the user declares it in ``cluster.max_resources``. Decisions
that used to freeze the size at start use the ceiling instead:

- ``gpus_per_worker: auto`` is 1 when the cluster has a GPU or can scale to one, so a GPU node
  group scaled to zero never turns a GPU grid into a CPU grid without a word;
- a trial that fits the ceiling but not the nodes up now waits for the autoscaler (Tune's
  pending trials are the demand it scales on) instead of being refused;
- single-worker trials are not capped: Tune starts as many as the cluster's free resources
  hold, so concurrency follows the cluster as it grows. Multi-worker trials are capped at what
  the ceiling holds (their Tune trial reserves no CPU; see ``launch._fit``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

from harness.config import ExperimentConfig
from harness.errors import RunError
from reports.format import plural


def autoscaler_limits(declared: dict[str, float] | None = None) -> dict[str, float]:
    """The most of each resource the autoscaler can add nodes up to, as the cluster reports
    it (KubeRay does; Ray's own autoscaler of ``ray up`` and ``ray start
    --autoscaling-config`` does not), else ``declared`` (``cluster.max_resources``), else
    empty (a fixed cluster, a local Ray). Needs a connected Ray."""
    try:
        from ray._private.state import state

        reported = dict(state.get_max_resources_from_cluster_config() or {})
    except Exception:  # an older or newer Ray without it: behave as a fixed cluster
        reported = {}
    return reported or dict(declared or {})


def ceiling(now: dict[str, float], limits: dict[str, float]) -> dict[str, float]:
    """Per resource, the larger of what the cluster has ``now`` and its autoscaler ``limits``."""
    return {key: max(now.get(key, 0), limits.get(key, 0)) for key in {*now, *limits}}


def resolve_gpus(cfg: ExperimentConfig, most: dict[str, float]) -> float:
    """GPUs per worker: ``auto`` is 1 when the cluster has or can scale to a GPU (``most``,
    the ceiling), else 0; a number is itself."""
    gpus = cfg.resources.gpus_per_worker
    if gpus == "auto":
        return 1.0 if most.get("GPU", 0) > 0 else 0.0
    return float(gpus)


@dataclass(frozen=True)
class Plan:
    gpus: float  # per worker
    max_concurrent: int | None  # None: as many as the cluster's free resources hold
    notes: list[str]  # what the user should know before the trials start


def _amount(value: float) -> str:
    return "unlimited" if value >= sys.maxsize else f"{value:g}"


def plan(cfg: ExperimentConfig, now: dict[str, float], limits: dict[str, float]) -> Plan:
    """The resources of one trial and the concurrency cap, from the cluster ``now`` and its
    autoscaler ``limits`` (see :func:`autoscaler_limits`).

    Raises:
        RunError: one trial needs more than the cluster has and can ever scale to.
    """
    r = cfg.resources
    most = ceiling(now, limits)
    gpus = resolve_gpus(cfg, most)
    need_cpu = r.workers_per_trial * r.cpus_per_worker
    need_gpu = r.workers_per_trial * gpus
    workers = plural(r.workers_per_trial, "worker")
    have = f"{now.get('CPU', 0):g} CPU and {now.get('GPU', 0):g} GPU"
    if need_cpu > most.get("CPU", 0) or need_gpu > most.get("GPU", 0):
        scales = (
            " and its autoscaler cannot add more"
            if limits
            else "; if an autoscaler can add nodes, say how far in cluster.max_resources "
            "(e.g. {CPU: 64, GPU: 8})"
        )
        raise RunError(
            f"resources: a trial needs {need_cpu:g} CPU and {need_gpu:g} GPU ({workers}) but "
            f"the cluster has {have}{scales}"
        )
    notes = []
    if need_cpu > now.get("CPU", 0) or need_gpu > now.get("GPU", 0):
        notes.append(
            f"a trial needs {need_cpu:g} CPU and {need_gpu:g} GPU and the cluster has {have} "
            f"now: trials wait until the autoscaler adds nodes (it can reach "
            f"{_amount(most.get('CPU', 0))} CPU and {_amount(most.get('GPU', 0))} GPU)"
        )
    if cfg.resources.gpus_per_worker == "auto" and gpus == 0:
        notes.append(
            "trials run on CPU: the cluster has no GPU and cannot scale to one "
            "(resources.gpus_per_worker: auto; an autoscaler that can add GPU nodes but does "
            "not report it to Ray is declared in cluster.max_resources)"
        )
    cap = r.max_concurrent_trials
    if r.workers_per_trial > 1:
        fits = [
            math.floor(most.get(key, 0) / need)
            for key, need in (("CPU", need_cpu), ("GPU", need_gpu))
            if need and most.get(key, 0) < sys.maxsize  # an unbounded node group: no limit
        ]
        if fits:
            cap = min(cap or min(fits), min(fits))
    return Plan(gpus=gpus, max_concurrent=max(1, cap) if cap else None, notes=notes)
