"""Train a few trials of the real loop on one GPU (no Ray) and print what they measured.

    python benchmarks/gpu_smoke.py --out gpu.json [--backbone resnet18] [--image-size 128]

Checks the CUDA path end to end: AMP (bf16 autocast, fp16 with loss scaling, off), per-step
timings synchronised on the device, the CUDA allocator's peak memory, and learning (test
AUROC). All trials run in one process on one device, so the ratios between them are fair;
absolute times from different runs are not comparable.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from harness.trainloop import MemoryReporter, train_trial


def spec(method: str, backbone: str, amp: str, image_size: int, epochs: int, seed: int = 0):
    return {
        "trial_id": f"{method}-{backbone}-{amp}",
        "method": method,
        "backbone": backbone,
        "seed": seed,
        "data": {
            "dataset": "synthetic",
            "root": None,
            "image_size": image_size,
            "num_samples": 3000,
            "tasks": "all",
            "seed": 0,
            "val_fraction": 0.15,
            "test_fraction": 0.15,
            "prevalence_floor": 0.05,
            "noise_tasks": 0,
            "label_noise": 0.05,
        },
        "train": {
            "epochs": epochs,
            "batch_size": 64,
            "optimizer": "adam",
            "lr": 1e-3,
            "weight_decay": 0.0,
            "momentum": 0.9,
            "amp": amp,
            "pretrained": False,
            "max_failures": 0,
        },
        "method_params": {},
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": 4,
        "workers": 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--methods", default="", help="comma-separated methods to run with amp auto and fp16"
    )
    args = parser.parse_args()
    runs = [("equal", "off"), ("equal", "auto"), ("deepchest", "auto"), ("equal", "fp16")]
    for method in filter(None, args.methods.split(",")):
        runs += [(method, "auto"), (method, "fp16")]
    # warm-up: cuDNN autotuning and the data cache must not count against the first trial
    train_trial(spec("equal", args.backbone, "auto", args.image_size, 1), MemoryReporter())
    results = []
    for method, amp in runs:
        started = time.perf_counter()
        out = train_trial(
            spec(method, args.backbone, amp, args.image_size, args.epochs), MemoryReporter()
        )
        row = {k: v for k, v in out.items() if k != "rows"}
        row.update(
            method=method,
            amp=amp,
            backbone=args.backbone,
            image_size=args.image_size,
            seconds=time.perf_counter() - started,
        )
        results.append(row)
        print(
            json.dumps(
                {
                    k: row[k]
                    for k in (
                        "method",
                        "amp",
                        "device",
                        "status",
                        "test_mean_auroc",
                        "images_per_second",
                        "step_time_ms",
                        "forward_time_ms",
                        "backward_time_ms",
                        "optimizer_time_ms",
                        "data_time_ms",
                        "peak_memory_mb",
                        "seconds",
                    )
                }
            ),
            flush=True,
        )
    base = next(r for r in results if r["method"] == "equal" and r["amp"] == "auto")
    for r in results:
        r["step_time_ratio_vs_equal_auto"] = r["step_time_ms"] / base["step_time_ms"]
    with open(args.out, "w") as f:
        json.dump({"torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
