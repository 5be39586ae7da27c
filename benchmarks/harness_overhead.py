"""Per-trial overhead of the harness around the training itself, on a local Ray.

    python benchmarks/harness_overhead.py [--trials 6] [--concurrency 1]

Runs a grid of tiny trials through `run_experiment` and compares the wall time of the whole
run (Ray start, Tune scheduling, reporting, checkpoints, Parquet, report) with the sum of
the trials' own wall times (data, model, training, evaluation inside the loop). With one trial
at a time, (run - Ray start - sum of trials) / trials is the harness's cost per trial.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    import pandas as pd
    import ray

    from harness.config import parse_config
    from harness.launch import run_experiment
    from harness.progress import LineProgress

    out = tempfile.mkdtemp(prefix="harness-overhead-")
    cfg = parse_config(
        {
            "name": "overhead",
            "data": {"dataset": "synthetic", "image_size": 32, "num_samples": 240},
            "grid": {
                "methods": ["equal", "deepchest"],
                "seeds": list(range(max(1, args.trials // 2))),
                "backbones": ["simple_cnn"],
            },
            "train": {"epochs": 2, "batch_size": 32},
            "resources": {"cpus_per_worker": 1, "max_concurrent_trials": args.concurrency},
            "output": {"dir": out},
        }
    )
    t0 = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray_start = time.perf_counter() - t0
    t1 = time.perf_counter()
    outcome = run_experiment(cfg, progress=LineProgress(cfg.train.epochs))
    run = time.perf_counter() - t1
    ray.shutdown()
    trials = pd.read_parquet(outcome.run_dir / "results" / "trials.parquet")
    n = len(trials)
    inside = trials.wall_time_s.sum()
    overhead = (run * args.concurrency - inside) / n
    print(f"trials: {n} at concurrency {args.concurrency}; Ray start {ray_start:.1f} s")
    print(
        f"run_experiment wall: {run:.1f} s; trials' own wall time: {inside:.1f} s in total, "
        f"{inside / n:.1f} s per trial"
    )
    print(
        f"harness overhead per trial (Tune scheduling, reports, checkpoints, tables, report): "
        f"{overhead:.2f} s"
    )


if __name__ == "__main__":
    main()
