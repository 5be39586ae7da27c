"""Live progress of a run: a rich table of trials on a terminal, plain log lines otherwise.

Both show each trial's elapsed time (since it started running) and an estimate of the time
the run has left: the epochs still to train over the rate at which this run has trained
epochs so far (all trials together, so concurrency is accounted for), "—" until one epoch is in.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, RenderResult
from rich.live import Live
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from reports.format import plural

_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "diverged": "yellow",
    "failed": "red",
}
FINISHED = ("completed", "diverged", "failed")
MISSING = "—"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_clock(seconds: float | None) -> str:
    """``42`` -> ``"0:42"``, ``3725`` -> ``"1:02:05"``; an em dash when unknown."""
    if seconds is None or math.isnan(seconds):
        return MISSING
    minutes, secs = divmod(int(max(seconds, 0.0)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Base: collects state and timing; subclasses show it."""

    def __init__(
        self,
        epochs: int,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.epochs = epochs
        self.console = console or Console(stderr=True)
        self.clock = clock
        self.state: dict[str, dict[str, Any]] = {}
        self.started = clock()
        self.first_running: float | None = None  # the rate counts from here, not Ray's start
        self.epochs_reported = 0

    @staticmethod
    def create(epochs: int, console: Console | None = None) -> Progress:
        console = console or Console(stderr=True)
        live = console.is_terminal and sys.stderr.isatty()
        return (LiveProgress if live else LineProgress)(epochs, console)

    def start(self, identities: list[dict[str, Any]], statuses: dict[str, str]) -> None:
        for ident in identities:
            self.state[ident["trial_id"]] = {
                **ident,
                "status": statuses.get(ident["trial_id"], "pending"),
            }

    def update(self, trial_id: str, **fields: Any) -> None:
        now = self.clock()
        s = self.state[trial_id]
        status = fields.get("status")
        if status == "running":
            s.setdefault("started_at", now)  # a retried trial keeps its first start
            s.pop("ended_at", None)
            if self.first_running is None:
                self.first_running = now
        elif status in FINISHED:
            s["ended_at"] = now
        if "epoch" in fields:
            self.epochs_reported += 1
        s.update(fields)

    def stop(self) -> None:
        pass

    def elapsed(self, trial_id: str) -> float | None:
        """Seconds since the trial started running (to its end once finished); None if it did
        not run in this run."""
        s = self.state[trial_id]
        if "started_at" not in s:
            return None
        return s.get("ended_at", self.clock()) - s["started_at"]

    def remaining_epochs(self) -> int:
        return sum(
            max(self.epochs - int(s.get("epoch", 0)), 0)
            for s in self.state.values()
            if s["status"] not in FINISHED
        )

    def eta(self) -> float | None:
        """Seconds the run has left; None until an epoch has been reported."""
        remaining = self.remaining_epochs()
        if remaining == 0:
            return 0.0
        if not self.epochs_reported or self.first_running is None:
            return None
        rate = self.epochs_reported / max(self.clock() - self.first_running, 1e-9)
        return remaining / rate

    def counts(self) -> str:
        statuses = [s["status"] for s in self.state.values()]
        done = sum(s in FINISHED for s in statuses)
        return f"{done}/{plural(len(statuses), 'trial')} done"


class LineProgress(Progress):
    """One line per event, for logs and CI."""

    def update(self, trial_id: str, **fields: Any) -> None:
        super().update(trial_id, **fields)
        run_elapsed = self.clock() - self.started
        s = self.state[trial_id]
        elapsed = self.elapsed(trial_id)
        took = f"  elapsed {fmt_clock(elapsed)}" if elapsed is not None else ""
        if "epoch" in fields:
            msg = (
                f"epoch {s['epoch']}/{self.epochs}  val AUROC {_fmt(s.get('val_auroc'))}  "
                f"train loss {_fmt(s.get('loss'))}{took}"
            )
        elif fields.get("status") in FINISHED:
            msg = f"{fields['status']}  test AUROC {_fmt(s.get('test_auroc'))}{took}"
            if s.get("error"):
                msg += f"  ({s['error']})"
            eta = self.eta()
            msg += f"  [{self.counts()}" + (f", ETA {fmt_clock(eta)}]" if eta != 0 else "]")
        else:
            msg = fields.get("status", "")
        self.console.print(
            f"[{run_elapsed:6.1f}s] {trial_id}: {msg}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


# (header, short header, justify): the short headers take two lines, as narrow as the values
_COLUMNS = (
    ("method", "method", "left"),
    ("backbone", "backbone", "left"),
    ("seed", "seed", "right"),
    ("status", "status", "left"),
    ("epoch", "epoch", "right"),
    ("val AUROC", "val\nAUROC", "right"),
    ("train loss", "train\nloss", "right"),
    ("test AUROC", "test\nAUROC", "right"),
    ("elapsed", "elapsed", "right"),
)


class LiveProgress(Progress):
    """A table of trials redrawn in place, one row per trial, fitted to the terminal's width."""

    def start(self, identities, statuses) -> None:
        super().start(identities, statuses)
        self._live = Live(self, console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def stop(self) -> None:
        self._live.stop()

    def title(self) -> str:
        run_elapsed = fmt_clock(self.clock() - self.started)
        return f"{self.counts()}  ·  {run_elapsed} elapsed  ·  ETA {fmt_clock(self.eta())}"

    def table(self, compact: bool = False) -> Table:
        """The full table, or (``compact``) one without borders and with two-line headers."""
        table = Table(
            title=self.title(),
            title_justify="left",
            box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
            padding=(0, 0) if compact else (0, 1),
            show_edge=not compact,
        )
        for header, short, justify in _COLUMNS:
            # names may shrink (with an ellipsis) on a very narrow screen, numbers never
            name = header in ("method", "backbone")
            table.add_column(
                short if compact else header,
                justify=justify,
                no_wrap=not name,
                overflow="ellipsis",
            )
        for trial_id, s in self.state.items():
            epoch = f"{s['epoch']}/{self.epochs}" if "epoch" in s else MISSING
            table.add_row(
                Text(str(s.get("method", trial_id))),  # names literally, never as markup
                Text(str(s.get("backbone", ""))),
                Text(str(s.get("seed", ""))),
                Text(s["status"], style=_STYLE.get(s["status"], "")),
                epoch,
                _fmt(s.get("val_auroc")),
                _fmt(s.get("loss")),
                _fmt(s.get("test_auroc")),
                fmt_clock(self.elapsed(trial_id)),
            )
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        table = self.table()
        wide = options.update_width(10_000)  # rich clamps a measurement to the width given
        if Measurement.get(console, wide, table).maximum > options.max_width:
            table = self.table(compact=True)
        yield table
