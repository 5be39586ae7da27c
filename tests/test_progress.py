"""The progress view: a live table on a terminal, one plain line per event otherwise."""

from __future__ import annotations

import io

from rich.console import Console

from harness.progress import LineProgress, LiveProgress, Progress

IDS = [
    {"trial_id": "equal-simple_cnn-s0", "method": "equal", "backbone": "simple_cnn", "seed": 0},
    {
        "trial_id": "deepchest-simple_cnn-s0",
        "method": "deepchest",
        "backbone": "simple_cnn",
        "seed": 0,
    },
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
    assert "completed  test AUROC 0.800  [1/2 trials done]" in lines[1]
    assert "failed  test AUROC —  (ValueError: boom)  [2/2 trials done]" in lines[2]


def test_live_table_on_a_terminal():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    progress = LiveProgress(epochs=4, console=console)
    progress.start(IDS, {"deepchest-simple_cnn-s0": "completed"})
    progress.update("equal-simple_cnn-s0", status="running", epoch=3, val_auroc=0.7, loss=0.3)
    progress.stop()
    screen = out.getvalue()
    assert "1/2 trials done" in screen
    assert "equal-simple_cnn-s0" in screen and "3/4" in screen and "0.700" in screen
