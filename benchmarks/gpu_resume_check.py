"""GPU check of the checkpoint store: one trial (rlw, ResNet-18, synthetic 64 px, augmentation
on) run 3 epochs straight and interrupted after epoch 2's save then continued, with AMP bf16
and fp16 (GradScaler state saved and restored), on one CUDA device; no Ray needed.

    python benchmarks/gpu_resume_check.py OUT_DIR

Prints, per AMP mode: the store's files after the interruption and after the end (MiB), the
time of one save (serialise + write), and how far the continued trial's rows and test metric are
from the straight one's (GPU kernels are not bit-reproducible: cuDNN autotuning is on).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path

from harness import checkpoints
from harness.trainloop import MemoryReporter, train_trial


class Crash(Exception):
    pass


class CrashingReporter(MemoryReporter):
    def report(self, metrics):
        super().report(metrics)
        if not metrics["done"] and metrics["epoch"] == 2:
            raise Crash


def sizes(folder: Path) -> dict[str, float]:
    return {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(folder.iterdir())}


def main(out: Path) -> None:
    base = json.loads((Path(__file__).parent / "gpu_resume_spec.json").read_text())
    save_times = []
    real_save = checkpoints.CheckpointStore.save

    def timed_save(self, *args, **kwargs):
        started = time.perf_counter()
        real_save(self, *args, **kwargs)
        save_times.append(time.perf_counter() - started)

    checkpoints.CheckpointStore.save = timed_save
    for amp in ("bf16", "fp16"):
        spec = {**base, "train": {**base["train"], "amp": amp}}
        straight = train_trial(spec, MemoryReporter())
        store = out / f"store-{amp}"
        spec = {**spec, "checkpoints": str(store)}
        save_times.clear()
        with contextlib.suppress(Crash):
            train_trial(spec, CrashingReporter())
        mid = sizes(store / spec["trial_id"])
        resumed = train_trial(spec, MemoryReporter())
        end = sizes(store / spec["trial_id"])
        diffs = [
            abs(a[k] - b[k])
            for a, b in zip(straight["rows"], resumed["rows"], strict=True)
            for k in ("loss", "auroc")
            if not (math.isnan(a[k]) and math.isnan(b[k]))
        ]
        print(
            json.dumps(
                {
                    "amp": amp,
                    "device": straight["device"],
                    "grad_scaler": amp == "fp16",
                    "store_after_epoch_2_mib": mid,
                    "store_after_end_mib": end,
                    "save_s": [round(t, 3) for t in save_times],
                    "max_abs_diff_rows_loss_auroc": max(diffs),
                    "test_mean_auroc": [straight["test_mean_auroc"], resumed["test_mean_auroc"]],
                    "epochs_rows_equal_1_2": repr(
                        [r["loss"] for r in straight["rows"] if r["epoch"] <= 2][:56]
                    )
                    == repr([r["loss"] for r in resumed["rows"] if r["epoch"] <= 2][:56]),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
