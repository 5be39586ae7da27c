"""Live progress of a run: a rich table of trials on a terminal, plain log lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

_STYLE = {
    "pending": "dim",
    "running": "cyan",
    "completed": "green",
    "diverged": "yellow",
    "failed": "red",
}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


class Progress:
    """Base: collects state; subclasses show it."""

    def __init__(self, epochs: int, console: Console | None = None):
        self.epochs = epochs
        self.console = console or Console(stderr=True)
        self.state: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()

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
        self.state[trial_id].update(fields)

    def stop(self) -> None:
        pass

    def counts(self) -> str:
        statuses = [s["status"] for s in self.state.values()]
        done = sum(s in ("completed", "diverged", "failed") for s in statuses)
        return f"{done}/{len(statuses)} trials done"


class LineProgress(Progress):
    """One line per event, for logs and CI."""

    def update(self, trial_id: str, **fields: Any) -> None:
        super().update(trial_id, **fields)
        elapsed = time.monotonic() - self.started
        s = self.state[trial_id]
        if "epoch" in fields:
            msg = (
                f"epoch {s['epoch']}/{self.epochs}  val AUROC {_fmt(s.get('val_auroc'))}  "
                f"train loss {_fmt(s.get('loss'))}"
            )
        elif fields.get("status") in ("completed", "diverged", "failed"):
            msg = f"{fields['status']}  test AUROC {_fmt(s.get('test_auroc'))}"
            if s.get("error"):
                msg += f"  ({s['error']})"
            msg += f"  [{self.counts()}]"
        else:
            msg = fields.get("status", "")
        self.console.print(
            f"[{elapsed:6.1f}s] {trial_id}: {msg}", highlight=False, markup=False, soft_wrap=True
        )


class LiveProgress(Progress):
    """A table of trials redrawn in place."""

    def start(self, identities, statuses) -> None:
        super().start(identities, statuses)
        self._live = Live(self, console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def stop(self) -> None:
        self._live.stop()

    def __rich__(self) -> Table:
        elapsed = time.monotonic() - self.started
        table = Table(title=f"{self.counts()}  ·  {elapsed:.0f}s", title_justify="left")
        for col in ("trial", "status", "epoch", "val AUROC", "train loss", "test AUROC"):
            table.add_column(col, justify="left" if col in ("trial", "status") else "right")
        for trial_id, s in self.state.items():
            epoch = f"{s['epoch']}/{self.epochs}" if "epoch" in s else "—"
            table.add_row(
                trial_id,
                f"[{_STYLE.get(s['status'], '')}]{s['status']}[/]",
                epoch,
                _fmt(s.get("val_auroc")),
                _fmt(s.get("loss")),
                _fmt(s.get("test_auroc")),
            )
        return table
