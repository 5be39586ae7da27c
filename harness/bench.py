"""``harness bench``: what each method costs per training step, measured in one process.

Every method trains its own copy of the same network (same initial weights) on the same
synthetic batch, through the training loop's own ``TrainStep``, so the benchmark times exactly
what a trial runs. The methods take turns step by step (round-robin), so a change in the
machine's load hits them all alike; the ratios to equal weighting are the numbers to read, not
the absolute times. Per method:

* ``step_time_ms``: median over the timed steps (forward, weighting + backward, optimizer);
* ``ratio_vs_equal``: its ``step_time_ms`` over equal weighting's (with ``update_every = k``
  the mean over a cycle of ``k`` steps);
* ``epoch_ratio_vs_equal``: the time per image seen over equal's, i.e. an epoch's time over
  equal's (differs from the step ratio for SDMGrad and MoDo, whose steps take two batches);
* ``flop_ratio_vs_equal``: FLOPs of one step (``torch.utils.flop_counter``) over equal's: the
  cost the method's arithmetic implies; ``ratio_vs_equal`` far above it is overhead;
* ``peak_memory_mb``: the CUDA allocator's peak over a few steps of that method alone, or on
  CPU the peak resident set size of a fresh process running a few of its steps (the process
  baseline, about the size of torch, is included: compare methods, not absolute values).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import methods
from deepchest.data import to_model_input
from deepchest.models import MultiTaskNet
from harness.bench_spec import BASELINE, BenchError, BenchSettings, MethodSpec
from harness.measure import StepTimer
from harness.trainloop import Collective, TrainStep, build_optimizer, resolve_amp, seed_everything

MEMORY_STEPS = 3


def synthetic_batch(settings: BenchSettings, device: torch.device, batches: int = 1):
    """One fixed batch: uint8-range grayscale images, labels at ~20% prevalence, all labelled.

    ``batches``: mini-batches per step (2 for SDMGrad and MoDo, which the step splits in two):
    ``batches x batch_size`` images."""
    g = torch.Generator().manual_seed(settings.seed)
    size, tasks = settings.image_size, settings.tasks
    batch = settings.batch_size * batches
    images = torch.randint(0, 256, (batch, 1, size, size), generator=g, dtype=torch.uint8)
    x = to_model_input(images.to(device))
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, tasks, generator=g) < 0.2).float().to(device)
    return x, y, torch.ones(batch, tasks, dtype=torch.bool, device=device)


def build_step(spec: MethodSpec, settings: BenchSettings, device: torch.device) -> TrainStep:
    """A fresh network (the same initial weights for every method), method and optimizer."""
    seed_everything(settings.seed)
    net = MultiTaskNet(settings.backbone, settings.tasks).to(device)
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    method = methods.create(spec.name, num_tasks=settings.tasks, **spec.params).to(device)
    groups = [{"params": list(net.parameters())}]
    if (group := method.optimizer_group()) is not None:
        groups.append(group)
    train = {"optimizer": settings.optimizer, "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9}
    amp_dtype = resolve_amp(settings.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    net.train()
    validation = None
    if getattr(method, "needs_validation_batch", False):  # Auto-Lambda's look-ahead batch
        held_out = synthetic_batch(dataclasses.replace(settings, seed=settings.seed + 1), device)
        validation = lambda: held_out  # noqa: E731
    return TrainStep(
        net,
        net,
        method,
        build_optimizer(train, groups),
        collective=Collective(),
        timer=StepTimer(device),
        amp_dtype=amp_dtype,
        scaler=scaler,
        validation_batch=validation,
    )


def step_batch(step: TrainStep, settings: BenchSettings, device: torch.device):
    """The synthetic batch ``step``'s method takes per step (two mini-batches for SDMGrad,
    MoDo)."""
    return synthetic_batch(settings, device, _batches(step.method))


def _batches(method: methods.Method) -> int:
    return getattr(method, "batches_per_step", 1)


def count_flops(step: TrainStep, batch) -> int:
    """FLOPs of one step; with ``update_every = k``, the mean over ``k`` steps (one cycle)."""
    from torch.utils.flop_counter import FlopCounterMode

    every = getattr(step.method, "update_every", 1)
    with FlopCounterMode(display=False) as counter:
        for _ in range(every):
            step(*batch)
    return int(counter.get_total_flops()) // every


def _peak_rss_bytes() -> int:
    """This process's peak resident set size: ``VmHWM`` on Linux (``ru_maxrss`` would carry the
    parent's peak across the ``exec`` of a spawned child), else ``ru_maxrss``."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_memory_bytes(spec: MethodSpec, settings: BenchSettings, device: torch.device) -> int:
    """A few steps of this method alone (:func:`measure_peak_memory`)."""
    return measure_peak_memory(functools.partial(_method_step, spec, settings), device, spec.text)


def _method_step(spec: MethodSpec, settings: BenchSettings, device: torch.device):
    step = build_step(spec, settings, device)
    return step, step_batch(step, settings, device)


def measure_peak_memory(
    build: Callable, device: torch.device, label: str, steps: int = MEMORY_STEPS
) -> int:
    """The peak memory of ``steps`` steps of ``build(device) -> (step, batch)`` alone,
    in bytes: the CUDA allocator's peak, or on CPU the peak RSS of a fresh spawned process
    (``build`` is pickled to it: a module-level function or a ``functools.partial`` of one).
    Raises ``RuntimeError`` naming ``label`` when that process fails."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        step, batch = build(device)
        for _ in range(steps):
            step(*batch)
        torch.cuda.synchronize(device)
        peak = int(torch.cuda.max_memory_allocated(device))
        del step, batch
        return peak
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(
        target=_cpu_peak_rss_child, args=(build, steps, torch.get_num_threads(), queue)
    )
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the memory measurement of {label} failed (exit {child.exitcode})")
    return int(queue.get(timeout=10))


def _cpu_peak_rss_child(build: Callable, steps: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)
    step, batch = build(torch.device("cpu"))
    for _ in range(steps):
        step(*batch)
    queue.put(_peak_rss_bytes())


def bench_device(settings: BenchSettings) -> torch.device:
    """The device to measure on (the current CUDA device for ``cuda``, with cuDNN's autotuner
    on, as the training loop has it). Raises ``BenchError`` when ``cuda`` is asked for and
    torch sees no CUDA device."""
    if settings.device != "cuda":
        return torch.device(settings.device)
    if not torch.cuda.is_available():
        raise BenchError("--device cuda: no CUDA device is visible to torch")
    torch.backends.cudnn.benchmark = True
    return torch.device("cuda", torch.cuda.current_device())


def run_bench(specs: list[MethodSpec], settings: BenchSettings, progress=None) -> list[dict]:
    """Time every method (round-robin), count its FLOPs and measure its peak memory.

    ``specs`` must include ``equal`` (the baseline of the ratios). ``progress(text)`` is called
    as work advances. Returns one dict per method, in the order given.
    """
    if not any(s.text == BASELINE for s in specs):
        raise BenchError(f"the methods must include {BASELINE!r}, the baseline of the ratios")
    device = bench_device(settings)
    say = progress or (lambda text: None)
    steps = [build_step(s, settings, device) for s in specs]
    for spec, step in zip(specs, steps, strict=True):
        every = getattr(step.method, "update_every", 1)
        if settings.steps < every:
            raise BenchError(
                f"{spec.text}: --steps must be at least its update_every ({every}), so that the "
                "timed steps hold a whole cycle"
            )
    batches = [step_batch(step, settings, device) for step in steps]
    flops = []
    for spec, step, batch in zip(specs, steps, batches, strict=True):
        say(f"counting the FLOPs of {spec.text}")
        flops.append(count_flops(step, batch))
    for i in range(settings.warmup + settings.steps):
        if i == settings.warmup:
            for step in steps:  # the warm-up steps are not timed
                step.timer = StepTimer(device)
        say(f"step {i + 1}/{settings.warmup + settings.steps} (warm-up {settings.warmup})")
        for step, batch in zip(steps, batches, strict=True):
            step(*batch)
            step.timer.end_step(len(batch[0]))
    times = [_typical_step_seconds(step) * 1000 for step in steps]
    images = [len(batch[0]) for batch in batches]
    update_every = [getattr(step.method, "update_every", 1) for step in steps]
    del steps, step, batches, batch  # the last loop variables would keep a network on the device
    memory = []
    for spec in specs:
        say(f"measuring the peak memory of {spec.text}")
        memory.append(peak_memory_bytes(spec, settings, device))
    base = next(i for i, s in enumerate(specs) if s.text == BASELINE)
    net = MultiTaskNet(settings.backbone, settings.tasks)
    rows = []
    for i, spec in enumerate(specs):
        method = methods.create(spec.name, num_tasks=settings.tasks, **spec.params)
        ratio = times[i] / times[base]
        flop_ratio = flops[i] / flops[base] if flops[base] else math.nan
        rows.append(
            {
                "method": spec.text,
                "level": method.level,
                "step_time_ms": times[i],
                "ratio_vs_equal": ratio,
                "peak_memory_mb": memory[i] / 2**20,
                "extra_memory_mb_vs_equal": (memory[i] - memory[base]) / 2**20,
                "jacobian_mb": jacobian_bytes(method.level, net, settings) / 2**20,
                "flop_ratio_vs_equal": flop_ratio,
                "wall_over_flop_ratio": ratio / flop_ratio if flop_ratio else math.nan,
                "gflops_per_step": flops[i] / 1e9,
                "images_per_second": images[i] / (times[i] / 1000),
                # per image seen: an epoch's time over equal's (two-batch methods take half
                # as many steps of twice the images)
                "epoch_ratio_vs_equal": (times[i] / images[i]) / (times[base] / images[base]),
                "batches_per_step": images[i] // settings.batch_size,
                "update_every": update_every[i],
            }
        )
    return rows


def jacobian_bytes(level: str, net: MultiTaskNet, settings: BenchSettings) -> int:
    """The size of the float32 Jacobian a method of ``level`` builds each step (0 at the loss
    level): T x (shared parameters | batch x representation | last shared layer's parameters)."""
    columns = {
        "loss": 0,
        "parameters": sum(p.numel() for p in net.shared_parameters()),
        "representation": settings.batch_size * net.representation_dim,
        "last_shared_layer": sum(p.numel() for p in net.last_shared_layer().parameters()),
    }[level]
    return 4 * settings.tasks * columns


def _step_seconds(timer: StepTimer) -> list[float]:
    return [sum(parts) for parts in zip(*timer.times.values(), strict=True)]


def _typical_step_seconds(step: TrainStep) -> float:
    """The median step time; for a method with ``update_every = k`` the median over the
    windows of ``k`` consecutive steps of their mean (each window holds one Jacobian step and
    ``k - 1`` cheap ones, so this is the amortised cost, ``about 1 + (r - 1) / k`` of equal's
    for a method of ratio ``r``; the plain median would be a cheap step's)."""
    seconds = _step_seconds(step.timer)
    every = getattr(step.method, "update_every", 1)
    if every == 1:
        return statistics.median(seconds)
    windows = [seconds[i : i + every] for i in range(0, len(seconds) - every + 1)]
    return statistics.median(sum(w) / every for w in windows)


def machine_description(device: str) -> dict[str, Any]:
    import platform

    info: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def write_json(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2) + "\n")


def elapsed(start: float) -> str:
    return f"{time.perf_counter() - start:.0f} s"
