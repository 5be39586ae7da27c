"""StepTimer: medians per phase, warm-up left out of images/s, partial steps ignored; on the
device clock (CUDA events, a fake here) one synchronisation per step; wall-clock step times."""

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


# ---- the device clock (CUDA events), exercised on CPU through a fake ----------------------


class FakeClock:
    """A device whose work runs on its own timeline: ``run(ms)`` queues work; an event records
    the timeline's position; times can be read only after ``synchronize`` (as a CUDA event's)."""

    def __init__(self):
        self.device_ms = 0.0
        self.syncs = 0
        self.unsynced = False  # an event recorded since the last synchronize

    def run(self, ms: float) -> None:
        self.device_ms += ms

    def event(self):
        clock = self

        class Event:
            at: float | None = None

            def record(self):
                self.at = clock.device_ms
                clock.unsynced = True

            def elapsed_time(self, end) -> float:
                assert not clock.unsynced, "event read before the device was synchronised"
                return end.at - self.at

        return Event()

    def synchronize(self) -> None:
        self.syncs += 1
        self.unsynced = False


@pytest.fixture
def host_clock(monkeypatch):
    """``time.perf_counter`` of harness.measure, advanced by hand (seconds)."""
    import harness.measure as measure

    now = [100.0]
    monkeypatch.setattr(measure.time, "perf_counter", lambda: now[0])
    return now


def test_device_clock_reads_events_and_synchronises_once_per_step(host_clock):
    clock = FakeClock()
    timer = StepTimer(torch.device("cpu"), clock=clock)
    for _ in range(3):
        with timer.phase("data"):
            clock.run(1.0)
        with timer.phase("forward"):
            clock.run(10.0)
            host_clock[0] += 0.002  # the host only queues: its time is not the phase's
        with timer.phase("backward"):
            clock.run(20.0)
        with timer.phase("optimizer"):
            clock.run(4.0)
        with timer.phase("backward"):  # entered twice: adds up
            clock.run(5.0)
        before = clock.syncs
        host_clock[0] += 0.038  # the end-of-step wait for the queued work
        timer.end_step(8)
        assert clock.syncs == before + 1  # one synchronisation per step, in end_step
    out = timer.summary()
    assert out["data_time_ms"] == pytest.approx(1.0)
    assert out["forward_time_ms"] == pytest.approx(10.0)
    assert out["backward_time_ms"] == pytest.approx(25.0)
    assert out["optimizer_time_ms"] == pytest.approx(4.0)
    assert out["step_time_ms"] == pytest.approx(40.0)
    assert out["images_per_second"] == pytest.approx(8 / 0.040)
    assert out["wall_step_time_ms"] == pytest.approx(40.0)  # 2 ms queueing + 38 ms wait
    assert out["wall_images_per_second"] == pytest.approx(8 / 0.040)
    assert clock.syncs == 3


def test_no_synchronisation_inside_a_step():
    clock = FakeClock()
    timer = StepTimer(torch.device("cpu"), clock=clock)
    for name in PHASES:
        with timer.phase(name):
            clock.run(1.0)
    assert clock.syncs == 0
    timer.end_step(4)
    assert clock.syncs == 1


def test_wall_time_counts_host_work_between_phases(host_clock):
    timer = StepTimer(torch.device("cpu"))
    for _ in range(12):
        with timer.phase("forward"):
            host_clock[0] += 0.010
        host_clock[0] += 0.005  # bookkeeping outside any phase
        with timer.phase("backward"):
            host_clock[0] += 0.020
        timer.end_step(6)
    out = timer.summary()
    assert out["step_time_ms"] == pytest.approx(30.0)
    assert out["wall_step_time_ms"] == pytest.approx(35.0)
    assert out["images_per_second"] == pytest.approx(6 / 0.030)
    assert out["wall_images_per_second"] == pytest.approx(6 / 0.035)


def test_wall_times_survive_a_checkpoint_and_old_histories_have_none(host_clock):
    timer = StepTimer(torch.device("cpu"))
    for seconds in [0.1] * 4:
        with timer.phase("forward"):
            host_clock[0] += seconds
        timer.end_step(8)
    again = StepTimer(torch.device("cpu"), history=timer.state())
    assert again.wall_times == timer.wall_times
    old = {k: v for k, v in timer.state().items() if k != "wall_times"}
    resumed = StepTimer(torch.device("cpu"), history=old)
    with resumed.phase("forward"):
        host_clock[0] += 0.2
    resumed.end_step(4)
    out = resumed.summary()
    assert out["wall_step_time_ms"] == pytest.approx(200.0)
    assert out["wall_images_per_second"] == pytest.approx(4 / 0.2)  # the new step only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_time_the_device_work():
    device = torch.device("cuda")
    timer = StepTimer(device)
    x = torch.randn(2048, 2048, device=device)
    for _ in range(3):
        with timer.phase("forward"):
            for _ in range(20):
                x = (x @ x).tanh()
        timer.end_step(1)
    out = timer.summary()
    assert out["forward_time_ms"] > 0
    assert out["wall_step_time_ms"] >= 0.9 * out["step_time_ms"]
