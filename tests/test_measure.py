"""StepTimer: medians per phase, warm-up left out of images/s, partial steps ignored."""

from __future__ import annotations

import pytest
import torch

from harness.measure import PHASES, WARMUP_STEPS, StepTimer


def timer_with(step_seconds: list[float], batch: int = 8) -> StepTimer:
    timer = StepTimer(torch.device("cpu"))
    for seconds in step_seconds:
        for phase in PHASES:  # each phase a quarter of the step
            timer.add(phase, seconds / 4)
        timer.end_step(batch)
    return timer


def test_medians_and_throughput_skip_warmup():
    slow_start = [1.0] * WARMUP_STEPS  # e.g. cuDNN autotuning
    timer = timer_with(slow_start + [0.1] * 20)
    out = timer.summary()
    assert out["step_time_ms"] == pytest.approx(100.0)
    assert out["forward_time_ms"] == pytest.approx(25.0)
    assert out["images_per_second"] == pytest.approx(8 / 0.1)  # warm-up steps left out
    assert out["peak_memory_mb"] > 0


def test_short_runs_count_every_step():
    out = timer_with([0.2, 0.1, 0.3]).summary()
    assert out["images_per_second"] == pytest.approx(3 * 8 / 0.6)


def test_a_step_cut_short_is_left_out():
    timer = timer_with([0.1] * 3)
    timer.add("data", 0.05)  # a step that diverged after loading its batch
    timer.add("forward", 0.05)
    assert timer.summary()["step_time_ms"] == pytest.approx(100.0)


def test_state_round_trip():
    timer = timer_with([0.1] * 12)
    again = StepTimer(torch.device("cpu"), history=timer.state())
    assert again.summary() == pytest.approx(timer.summary(), rel=0.5)  # peak RSS may move
    assert again.summary()["images_per_second"] == timer.summary()["images_per_second"]


def test_a_phase_entered_twice_in_a_step_adds_up():
    timer = StepTimer(torch.device("cpu"))
    timer.add("backward", 0.02)
    timer.add("backward", 0.03)  # e.g. FAMO's re-forward after the optimizer step
    timer.end_step(8)
    assert timer.summary()["backward_time_ms"] == pytest.approx(50.0)
    assert timer.summary()["data_time_ms"] == 0.0


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="unknown phase 'loading'"):
        StepTimer(torch.device("cpu")).add("loading", 0.1)
