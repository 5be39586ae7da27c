"""How fast images reach the model: raw PNG decoding versus packed (memory-mapped) batches.

    python benchmarks/input_pipeline.py [--images 2048] [--size 224] [--device cpu|cuda]
        [--train-step] [--out result.json]

1. Raw: decode + resize of 1024 x 1024 8-bit PNGs (radiograph-like content) with
   ``harness data prepare``'s decoder, through ``prepare`` with every core.
2. Packed: ``--images`` images prepared at ``--size`` px, then random batches of 64 drawn from
   the memory-mapped array as the training loop draws them (``images[idx]``), moved to the
   device and turned into model input: as is (evaluation) and augmented (training).
3. ``--train-step``: ResNet-18 training steps (14 tasks, AMP on CUDA) fed from the packed
   batches and from one batch already on the device; the ratio says whether the loader or the
   model sets the pace.

Everything runs in this process; compare numbers within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepchest.data.augment import augment_batch, eval_batch
from deepchest.data.index import ImageIndex
from deepchest.data.packed import load_packed
from deepchest.data.prepare import prepare
from deepchest.findings import FINDINGS

BATCH = 64


def radiograph_like(size: int, seed: int) -> np.ndarray:
    """A smooth bright body with darker lungs and noise: compresses like a real radiograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    body = 200 - 120 * ((x - 0.5) ** 2 + (y - 0.55) ** 2)
    lungs = 70 * (np.exp(-((x - 0.33) ** 2 + (y - 0.5) ** 2) / 0.02))
    lungs += 70 * np.exp(-((x - 0.67) ** 2 + (y - 0.5) ** 2) / 0.02)
    image = body - lungs + rng.normal(0, 6, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_pngs(folder: Path, count: int, size: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.png"
        Image.fromarray(radiograph_like(size, i)).save(path)
        paths.append(str(path))
    return paths


def index_of(paths: list[str]) -> ImageIndex:
    n, t = len(paths), len(FINDINGS)
    splits = tuple("train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test") for i in range(n))
    rng = np.random.default_rng(0)
    return ImageIndex(
        paths=tuple(paths),
        patients=tuple(str(i) for i in range(n)),
        splits=splits,
        labels=(rng.random((n, t)) < 0.1).astype(np.float32),
        mask=np.ones((n, t), dtype=bool),
        task_names=FINDINGS,
        dataset="nih",
        root=str(Path(paths[0]).parent),
    )


def rate(seconds: list[float], per: int) -> float:
    return per / statistics.median(seconds)


def time_batches(fn, batches: int) -> list[float]:
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="images packed for loading")
    parser.add_argument("--raw-images", type=int, default=48, help="1024 px PNGs decoded")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--train-step", action="store_true")
    parser.add_argument("--out", help="write the figures as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    result: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = write_pngs(tmp / "raw", args.raw_images, 1024)
        report = prepare(index_of(raw), tmp / "raw-packed", 256, shard_size=8)
        result["raw_png_1024_decode_resize_images_per_s"] = report.images_per_second
        print(
            f"raw 1024 px PNG -> 256 px (prepare, all cores): {report.images_per_second:,.0f}"
            " images/s",
            flush=True,
        )

        small = write_pngs(tmp / "small", args.images, 256)
        prepare(index_of(small), tmp / "packed", args.size, shard_size=512)
        splits, _ = load_packed(tmp / "packed")
        images = splits["train"].images
        n = len(images)
        gen = torch.Generator().manual_seed(0)

        def draw() -> torch.Tensor:
            idx = torch.randint(0, n, (BATCH,), generator=gen)
            return images[idx].to(device, non_blocking=True)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()

        figures = {
            "packed_gather_images_per_s": lambda: (draw(), sync()),
            "packed_to_eval_input_images_per_s": lambda: (eval_batch(draw(), args.size), sync()),
            "packed_to_augmented_input_images_per_s": lambda: (
                augment_batch(draw(), args.size, generator=gen),
                sync(),
            ),
        }
        for name, fn in figures.items():
            fn()  # warm-up: page cache, allocator
            result[name] = rate(time_batches(fn, args.batches), BATCH)
            print(f"{name}: {result[name]:,.0f}", flush=True)

        if args.train_step:
            from harness import bench, bench_spec

            settings = bench_spec.BenchSettings(
                backbone="resnet18",
                image_size=args.size,
                batch_size=BATCH,
                tasks=len(FINDINGS),
                device=args.device,
                amp="auto" if device.type == "cuda" else "off",
            )
            step = bench.build_step(
                bench_spec.MethodSpec.parse("equal", len(FINDINGS)), settings, device
            )
            labels = splits["train"].labels.to(device)
            mask = torch.ones(BATCH, len(FINDINGS), dtype=torch.bool, device=device)
            fixed = augment_batch(draw(), args.size, generator=gen)
            y = labels[:BATCH]

            def from_packed():
                step(augment_batch(draw(), args.size, generator=gen), y, mask)
                sync()

            def from_memory():
                step(fixed, y, mask)
                sync()

            for name, fn in (
                ("train_step_fixed_batch", from_memory),
                ("train_step_from_packed", from_packed),
            ):
                for _ in range(3):
                    fn()
                result[f"{name}_images_per_s"] = rate(time_batches(fn, 15), BATCH)
                print(f"{name}: {result[f'{name}_images_per_s']:,.0f} images/s", flush=True)
            loader = result["packed_to_augmented_input_images_per_s"]
            model = result["train_step_fixed_batch_images_per_s"]
            result["bottleneck"] = "loader" if loader < model else "model"
            print(
                f"bottleneck: {result['bottleneck']} (loader {loader:,.0f} vs model "
                f"{model:,.0f} images/s)"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
