"""The progress view: a live table on a terminal, one plain line per event otherwise; elapsed
times and the run's ETA on a fake clock."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from harness.progress import LineProgress, LiveProgress, Progress, fmt_clock

IDS = [
    {"trial_id": "equal-simple_cnn-s0", "method": "equal", "backbone": "simple_cnn", "seed": 0},
    {
        "trial_id": "deepchest-simple_cnn-s0",
        "method": "deepchest",
        "backbone": "simple_cnn",
        "seed": 0,
    },
]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def grid(methods=("equal", "deepchest", "aligned_mtl"), backbones=("resnet18",), seeds=(0, 1)):
    return [
        {"trial_id": f"{m}-{b}-s{s}", "method": m, "backbone": b, "seed": s}
        for m in methods
        for b in backbones
        for s in seeds
    ]


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    progress = Progress.create(epochs=4, console=Console(file=out, width=200))
    assert isinstance(progress, LineProgress)
    progress.start(IDS, {})
    progress.update("equal-simple_cnn-s0", epoch=2, val_auroc=0.8123, loss=0.25)
    progress.update("equal-simple_cnn-s0", status="completed", test_auroc=0.8)
    progress.update("deepchest-simple_cnn-s0", status="failed", error="ValueError: boom")
    lines = out.getvalue().splitlines()
    assert "equal-simple_cnn-s0: epoch 2/4  val AUROC 0.812  train loss 0.250" in lines[0]
    # no trial was seen starting: no elapsed time and no rate for an ETA yet
    assert "completed  test AUROC 0.800  [1/2 trials done, ETA —]" in lines[1]
    assert "failed  test AUROC —  (ValueError: boom)  [2/2 trials done]" in lines[2]


def test_plain_lines_carry_elapsed_and_eta():
    out, clock = io.StringIO(), FakeClock()
    progress = LineProgress(epochs=4, console=Console(file=out, width=80), clock=clock)
    progress.start(IDS, {})
    progress.update("equal-simple_cnn-s0", status="running")
    clock.now += 5
    progress.update("deepchest-simple_cnn-s0", status="running")
    clock.now += 25  # equal: 30 s in; two epochs in 30 s since the first start
    progress.update("equal-simple_cnn-s0", epoch=1, val_auroc=0.7, loss=0.4)
    progress.update("deepchest-simple_cnn-s0", epoch=1, val_auroc=0.6, loss=0.5)
    clock.now += 30  # four epochs in 60 s: 15 s an epoch; 3 + 0 epochs left after this
    progress.update("equal-simple_cnn-s0", epoch=2, val_auroc=0.75, loss=0.3)
    progress.update("equal-simple_cnn-s0", epoch=3, val_auroc=0.75, loss=0.3)
    progress.update("equal-simple_cnn-s0", epoch=4, val_auroc=0.8, loss=0.2)
    progress.update("equal-simple_cnn-s0", status="completed", test_auroc=0.81)
    lines = out.getvalue().splitlines()
    assert lines[0] == "[   0.0s] equal-simple_cnn-s0: running"
    assert lines[2].endswith("epoch 1/4  val AUROC 0.700  train loss 0.400  elapsed 0:30")
    assert lines[3].endswith("epoch 1/4  val AUROC 0.600  train loss 0.500  elapsed 0:25")
    # 5 epochs in 60 s, deepchest has 3 left: 3 / (5 / 60) = 36 s
    assert lines[-1] == (
        "[  60.0s] equal-simple_cnn-s0: completed  test AUROC 0.810  elapsed 1:00  "
        "[1/2 trials done, ETA 0:36]"
    )
    clock.now += 600  # a finished trial's elapsed time stops at its end
    assert progress.elapsed("equal-simple_cnn-s0") == 60


def test_eta_from_the_rate_of_completed_epochs():
    clock = FakeClock()
    ids = grid()  # 6 trials x 10 epochs
    progress = Progress(epochs=10, console=Console(file=io.StringIO()), clock=clock)
    # a resumed run: one trial finished before, it neither counts as work left nor as rate
    progress.start(ids, {"equal-resnet18-s0": "completed"})
    assert progress.remaining_epochs() == 50
    assert progress.eta() is None  # nothing has run yet
    clock.now += 100  # Ray's start-up is not part of the rate
    running = [i["trial_id"] for i in ids[1:3]]
    for trial_id in running:
        progress.update(trial_id, status="running")
    clock.now += 40
    assert progress.eta() is None  # running, but no epoch in yet: no data
    for trial_id in running:  # two trials at once, each 40 s an epoch: 20 s an epoch overall
        progress.update(trial_id, epoch=1, val_auroc=0.6, loss=0.5)
    assert progress.remaining_epochs() == 48
    assert progress.eta() == pytest.approx(48 * 20)
    clock.now += 40
    progress.update(running[0], epoch=2, val_auroc=0.6, loss=0.5)
    progress.update(running[1], status="diverged", test_auroc=float("nan"))  # stopped early
    assert progress.remaining_epochs() == 8 + 30
    assert progress.eta() == pytest.approx(38 / (3 / 80))
    for trial_id in [i["trial_id"] for i in ids[3:]] + running[:1]:
        progress.update(trial_id, status="completed", test_auroc=0.7)
    assert progress.remaining_epochs() == 0 and progress.eta() == 0


def test_elapsed_from_the_first_start():
    clock = FakeClock()
    progress = Progress(epochs=2, console=Console(file=io.StringIO()), clock=clock)
    progress.start(IDS, {})
    assert progress.elapsed("equal-simple_cnn-s0") is None
    progress.update("equal-simple_cnn-s0", status="running")
    clock.now += 65
    assert progress.elapsed("equal-simple_cnn-s0") == 65
    progress.update("equal-simple_cnn-s0", status="running")  # retried: keeps its first start
    clock.now += 10
    assert progress.elapsed("equal-simple_cnn-s0") == 75


def test_clock_format():
    assert [fmt_clock(s) for s in (None, 0, 42.9, 65, 3599, 3725, 90061)] == [
        "—",
        "0:00",
        "0:42",
        "1:05",
        "59:59",
        "1:02:05",
        "25:01:01",
    ]


def live_screen(width: int, backbones=("resnet18", "mobilenet_v3_small")) -> tuple[str, list]:
    """A mid-run table as a terminal of ``width`` columns shows it."""
    clock = FakeClock()
    console = Console(file=io.StringIO(), width=width, record=True, force_terminal=True)
    progress = LiveProgress(epochs=15, console=console, clock=clock)
    ids = grid(backbones=backbones, seeds=(0, 1, 2))
    Progress.start(progress, ids, {ids[0]["trial_id"]: "completed"})  # no Live on a test
    clock.now += 10
    progress.update(ids[1]["trial_id"], status="running")
    progress.update(ids[4]["trial_id"], status="running")
    clock.now += 2990
    progress.update(ids[1]["trial_id"], epoch=12, val_auroc=0.7123, loss=0.3104)
    progress.update(ids[4]["trial_id"], epoch=3, val_auroc=0.6, loss=0.45)
    progress.update(ids[4]["trial_id"], status="diverged", test_auroc=0.5)
    console.print(progress)
    return console.export_text(), ids


@pytest.mark.parametrize("width", [80, 200])
def test_live_table_fits_and_shows_every_field(width):
    screen, ids = live_screen(width)
    lines = screen.splitlines()
    assert max(len(line) for line in lines) <= width
    assert "…" not in screen
    # 15 trials not started x 15 epochs + 3 epochs: 228 epochs left at 2 epochs in 2990 s
    assert lines[0].split() == ["2/18", "trials", "done", "·", "50:00", "elapsed", "·", "ETA"] + [
        fmt_clock(228 * 2990 / 2)
    ]
    cells = [line.replace("│", " ").split() for line in lines]
    rows = {tuple(c[:3]): c[3:] for c in cells}
    assert rows[("equal", "resnet18", "1")] == [
        "running", "12/15", "0.712", "0.310", "—", "49:50"
    ]  # fmt: skip
    assert rows[("equal", "mobilenet_v3_small", "1")] == [
        "diverged", "3/15", "0.600", "0.450", "0.500", "49:50"
    ]  # fmt: skip
    assert rows[("equal", "resnet18", "0")] == ["completed", *["—"] * 5]
    assert rows[("aligned_mtl", "mobilenet_v3_small", "2")] == ["pending", *["—"] * 5]
    assert len([key for key in rows if key[0] in ("equal", "deepchest", "aligned_mtl")]) == 18
    if width == 200:  # room for the full headers and borders
        assert "val AUROC" in screen and "train loss" in screen and "┃" in screen
    else:  # two-line headers, no borders
        assert "val AUROC" not in screen and "AUROC" in screen


def test_live_table_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    progress = LiveProgress(epochs=4, console=console)
    progress.start(IDS, {"deepchest-simple_cnn-s0": "completed"})
    progress.update("equal-simple_cnn-s0", status="running", epoch=3, val_auroc=0.7, loss=0.3)
    progress.stop()
    screen = out.getvalue()
    assert "1/2 trials done" in screen
    assert "simple_cnn" in screen and "3/4" in screen and "0.700" in screen


def test_names_are_not_markup():
    console = Console(file=io.StringIO(), width=80, record=True, force_terminal=True)
    progress = LiveProgress(epochs=1, console=console)
    ident = {"trial_id": "x", "method": "[red]m[/red]", "backbone": "b", "seed": 0}
    Progress.start(progress, [ident], {})
    console.print(progress)
    assert "[red]m[/red]" in console.export_text()
