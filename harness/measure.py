"""Per-step timing split into phases, throughput and peak memory.

On CUDA each phase records a pair of ``torch.cuda.Event(enable_timing=True)`` on the current
stream and the host never waits inside a step: ``end_step`` synchronises the device once and
reads every phase's time from its events (the device time between the phase's two markers).
Nothing else in the step is held back, so the CPU keeps queueing work ahead of the GPU, as in a
run without a timer. On CPU a phase is timed with ``time.perf_counter``.

Beside the phase split, the timer keeps each step's wall-clock time: from the start of the
step's first phase to the end of ``end_step`` (on CUDA after its synchronisation, so it covers
the step's queued work; no other synchronisation is added); a step timed only through ``add``
takes the sum of its phase times. Summary keys:

* ``<phase>_time_ms``, ``step_time_ms``: medians of the phase times and of their sum per step;
* ``images_per_second``: images over the summed phase times (device time on CUDA);
* ``wall_step_time_ms``, ``wall_images_per_second``: the same from the wall-clock step times:
  what a run sees, host work between phases and the end-of-step wait included;
* ``peak_memory_mb``: the CUDA allocator's peak on GPU and the process's resident set size,
  sampled at every step, on CPU (so a reused worker process does not carry an earlier trial's
  peak).

Both throughputs leave out the first ``WARMUP_STEPS`` steps (in runs long enough to spare them).
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any

import psutil
import torch

PHASES = ("data", "forward", "backward", "optimizer")
# Steps left out of images/s: the first steps of a trial pay for cuDNN autotuning, the
# allocator's growth and lazy initialisation, which a long run amortises.
WARMUP_STEPS = 5


class CudaClock:
    """Device-side timing on ``device``: timing events and one synchronisation."""

    def __init__(self, device: torch.device):
        self.device = device

    def event(self) -> Any:
        return torch.cuda.Event(enable_timing=True)

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)


class StepTimer:
    """Collects ``{phase: [seconds per step]}``, the wall-clock step times and the images seen.

    ``clock``: what times the phases on the device, an object with ``event()`` (a new event with
    ``record()`` and ``elapsed_time(end) -> ms``) and ``synchronize()``; default ``CudaClock``
    on a CUDA device, none (host timestamps) on CPU. Tests pass a fake one.
    """

    def __init__(self, device: torch.device, history: dict | None = None, *, clock: Any = None):
        self.device = device
        if clock is None and device.type == "cuda":
            clock = CudaClock(device)
        self.clock = clock
        self.times: dict[str, list[float]] = {p: [] for p in PHASES}
        self.wall_times: list[float] = []
        self.step_images: list[int] = []
        self.peak_rss = 0
        self._current: dict[str, float] = {}
        self._events: list[tuple[str, Any, Any]] = []  # (phase, start, end) of this step
        self._step_started: float | None = None
        self._process = psutil.Process()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        if history:  # resumed from a checkpoint
            self.times = {p: list(history["times"][p]) for p in PHASES}
            self.step_images = list(history["step_images"])
            self.peak_rss = int(history["peak_rss"])
            # checkpoints written before wall times were kept have none
            self.wall_times = list(history.get("wall_times", []))

    @contextmanager
    def phase(self, name: str):
        """Time a block as part of phase ``name`` of the current step (a phase entered twice in
        one step, such as FAMO's re-forward after the optimizer step, adds up)."""
        if name not in self.times:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        now = time.perf_counter()
        if self._step_started is None:
            self._step_started = now
        if self.clock is None:
            yield
            self.add(name, time.perf_counter() - now)
            return
        start = self.clock.event()
        start.record()
        yield
        end = self.clock.event()
        end.record()
        self._events.append((name, start, end))

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` towards phase ``name`` of the current step."""
        if name not in self.times:
            raise ValueError(f"unknown phase {name!r}; phases: {', '.join(PHASES)}")
        self._current[name] = self._current.get(name, 0.0) + seconds

    def end_step(self, batch_size: int) -> None:
        """Close the step: its phase times join the history (a step cut short before this, such
        as one with a diverged loss, is left out). On the device clock this is the step's one
        synchronisation; the phase times are then read from the events."""
        if self.clock is not None:
            self.clock.synchronize()
            for name, start, end in self._events:
                self.add(name, start.elapsed_time(end) / 1000)
        if self._step_started is not None:
            self.wall_times.append(time.perf_counter() - self._step_started)
        else:  # timed through ``add`` only: no timestamp to start from
            self.wall_times.append(sum(self._current.values()))
        for name in PHASES:
            self.times[name].append(self._current.get(name, 0.0))
        self._current, self._events, self._step_started = {}, [], None
        self.step_images.append(batch_size)
        if self.device.type != "cuda":
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)

    def state(self) -> dict:
        return {
            "times": self.times,
            "wall_times": self.wall_times,
            "step_images": self.step_images,
            "peak_rss": self.peak_rss,
        }

    def summary(self) -> dict[str, float]:
        """Medians per phase and per step in ms; images/s over the train steps after the
        first ``WARMUP_STEPS`` (over all of them in runs too short to spare those), from the
        phase times and from the wall-clock times; peak MB."""
        steps = [sum(parts) for parts in zip(*self.times.values(), strict=False)]
        out = {f"{p}_time_ms": _median_ms(self.times[p]) for p in PHASES}
        out["step_time_ms"] = _median_ms(steps)
        out["images_per_second"] = _throughput(steps, self.step_images[: len(steps)])
        out["wall_step_time_ms"] = _median_ms(self.wall_times)
        # a resumed trial's earlier steps may have no wall time: the last steps have
        images = self.step_images[len(self.step_images) - len(self.wall_times) :]
        out["wall_images_per_second"] = _throughput(self.wall_times, images)
        out["peak_memory_mb"] = self.peak_memory_bytes() / 2**20
        return out

    def peak_memory_bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(self.peak_rss, self._process.memory_info().rss)


def _throughput(seconds: list[float], images: list[int]) -> float:
    """Images per second over the steps after the first ``WARMUP_STEPS`` (all of them in runs
    of at most ``2 * WARMUP_STEPS`` steps); NaN without time."""
    skip = WARMUP_STEPS if len(seconds) > 2 * WARMUP_STEPS else 0
    total = sum(seconds[skip:])
    return sum(images[skip:]) / total if total > 0 else float("nan")


def _median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values) if values else float("nan")
