"""Per-step timing split into phases, throughput and peak memory.

On CUDA the device is synchronised before each timestamp, so a phase's time is the work it
queued, not the launch; that costs a little throughput and is the price of honest numbers.
Peak memory is the CUDA allocator's peak on GPU and the process's resident set size, sampled
at every step, on CPU (so a reused worker process does not carry an earlier trial's peak).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import psutil
import torch

PHASES = ("data", "forward", "backward", "optimizer")
# Steps left out of images/s: the first steps of a trial pay for cuDNN autotuning, the
# allocator's growth and lazy initialisation, which a long run amortises.
WARMUP_STEPS = 5


class StepTimer:
    """Collects ``{phase: [seconds per step]}`` and the images seen."""

    def __init__(self, device: torch.device, history: dict | None = None):
        self.device = device
        self.times: dict[str, list[float]] = {p: [] for p in PHASES}
        self.step_images: list[int] = []
        self.peak_rss = 0
        self._current: dict[str, float] = {}
        self._process = psutil.Process()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if history:  # resumed from a checkpoint
            self.times = {p: list(history["times"][p]) for p in PHASES}
            self.step_images = list(history["step_images"])
            self.peak_rss = int(history["peak_rss"])

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def phase(self, name: str):
        """Time a block as part of phase ``name`` of the current step (a phase entered twice in
        one step, such as FAMO's re-forward after the optimizer step, adds up)."""
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` towards phase ``name`` of the current step."""
        if name not in self.times:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        self._current[name] = self._current.get(name, 0.0) + seconds

    def end_step(self, batch_size: int) -> None:
        """Close the step: its phase times join the history (a step cut short before this, such
        as one with a diverged loss, is left out)."""
        for name in PHASES:
            self.times[name].append(self._current.get(name, 0.0))
        self._current = {}
        self.step_images.append(batch_size)
        if self.device.type != "cuda":
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def state(self) -> dict:
        return {"times": self.times, "step_images": self.step_images, "peak_rss": self.peak_rss}

    def summary(self) -> dict[str, float]:
        """Medians per phase and per step in ms; images/s over the train steps after the
        first ``WARMUP_STEPS`` (over all of them in runs too short to spare those); peak MB."""
        steps = [sum(parts) for parts in zip(*self.times.values(), strict=False)]
        out = {f"{p}_time_ms": _median_ms(self.times[p]) for p in PHASES}
        out["step_time_ms"] = _median_ms(steps)
        skip = WARMUP_STEPS if len(steps) > 2 * WARMUP_STEPS else 0
        total = sum(steps[skip:])
        images = sum(self.step_images[skip : len(steps)])
        out["images_per_second"] = images / total if total > 0 else float("nan")
        out["peak_memory_mb"] = self.peak_memory_bytes() / 2**20
        return out

    def peak_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(self.peak_rss, self._process.memory_info().rss)


def _median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values) if values else float("nan")
