"""Grid makespan on a simulated multi-node Ray cluster against the ideal schedule.

    python benchmarks/cluster_makespan.py [--nodes 3] [--trials 24] [--epochs 2] [--out FILE]

Starts ``ray.cluster_utils.Cluster`` with ``--nodes`` nodes of one CPU each (separate raylets
on this machine), runs a grid of ``--trials`` tiny single-worker trials through
``run_experiment`` joined by address, and compares in one run:

- makespan: the wall time of ``run_experiment`` (claim, Tune scheduling, reporting, tables,
  report), the cluster already up;
- ideal: the sum of the trials' own wall times (``wall_time_s``, measured inside the loop) over
  the slots (one trial per node at a time).

``makespan / ideal`` is the scheduling efficiency (1.0 = no gap); ``(makespan x slots - sum of
trials) / trials`` the harness's overhead per trial in seconds. Both are ratios of one run, so
a loaded machine slows the trials and the makespan alike.

The makespan is also split, on the driver's clock (the trials' attempts in their records), into
the start (``run_experiment`` called to the first trial started: pre-flight, Ray connection,
Tune's set-up), the grid (first trial started to last trial ended) and the end (tables and
HTML report); ``grid_over_ideal`` and ``gap_per_trial_s`` are the figures without the run's
fixed start and end, i.e. what a longer grid converges to.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", help="write the figures as JSON to this file")
    args = parser.parse_args()

    import pandas as pd
    from ray.cluster_utils import Cluster

    from harness.config import parse_config
    from harness.launch import run_experiment
    from harness.progress import LineProgress

    out_dir = tempfile.mkdtemp(prefix="harness-makespan-")  # removed at the end
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        cfg = parse_config(
            {
                "name": "makespan",
                "data": {"dataset": "synthetic", "image_size": 32, "num_samples": 240},
                "grid": {
                    "methods": ["equal", "deepchest"],
                    "seeds": list(range(max(1, args.trials // 2))),
                    "backbones": ["simple_cnn"],
                },
                "train": {"epochs": args.epochs, "batch_size": 32},
                "resources": {"cpus_per_worker": 1, "gpus_per_worker": 0},
                "cluster": {"ship_code": False},  # same machine: the package is installed
                "output": {"dir": out_dir},
            }
        )
        called = time.time()
        start = time.perf_counter()
        outcome = run_experiment(cfg, address=cluster.address, progress=LineProgress(args.epochs))
        makespan = time.perf_counter() - start
        returned = called + makespan
    finally:
        cluster.shutdown()
    trials = pd.read_parquet(outcome.run_dir / "results" / "trials.parquet")
    shutil.rmtree(out_dir, ignore_errors=True)
    n, slots = len(trials), args.nodes
    inside = float(trials.wall_time_s.sum())
    ideal = inside / slots
    figures = {
        "nodes": args.nodes,
        "trials": n,
        "completed": int((trials.status == "completed").sum()),
        "makespan_s": round(makespan, 1),
        "ideal_s": round(ideal, 1),
        "makespan_over_ideal": round(makespan / ideal, 3),
        "overhead_per_trial_s": round((makespan * slots - inside) / n, 2),
        "mean_trial_s": round(inside / n, 2),
    }
    attempts = [a for r in outcome.records for a in r.attempts]
    first = min(dt.datetime.fromisoformat(a["started_at"]).timestamp() for a in attempts)
    last = max(dt.datetime.fromisoformat(a["ended_at"]).timestamp() for a in attempts)
    grid = last - first
    figures.update(
        start_s=round(first - called, 1),
        grid_s=round(grid, 1),
        end_s=round(returned - last, 1),
        grid_over_ideal=round(grid / ideal, 3),
        gap_per_trial_s=round((grid * slots - inside) / n, 2),
    )
    nodes = trials.get("node_id", trials.get("hostname"))
    if nodes is not None:
        figures["distinct_nodes"] = int(nodes.nunique())
    print(json.dumps(figures, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
