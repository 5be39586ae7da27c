"""The driver-side Tune callback that records each trial's reports in the run directory.

Every report carries that epoch's per-task rows; they are stored by epoch, so a retried
trial that reports an epoch again replaces it. The Parquet tables are built from these
records, never from Ray's internal result files. The callback also drives the progress view.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

from ray import tune

from harness.progress import Progress
from harness.results import ENDED, TrialRecord


class ResultsCollector(tune.Callback):
    """``on_ended(trial_id, best_epoch)`` is called once a trial's final report (completed
    or diverged) is saved in its record: the launcher prunes its checkpoints then, not the
    trial, so that a crash before the record is saved leaves the epoch state to resume from."""

    def __init__(
        self,
        records: dict[str, TrialRecord],
        progress: Progress,
        on_ended: Callable[[str, int | None], None] | None = None,
    ):
        self.records = records
        self.progress = progress
        self.on_ended = on_ended

    # Tune pickles its run config (callbacks included) into its experiment state; the live
    # records and the progress view belong to this driver process and are not saved.
    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.records, self.progress, self.on_ended = {}, None, None

    def _record(self, trial) -> tuple[str, TrialRecord]:
        trial_id = trial.config["trial_id"]
        return trial_id, self.records[trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        trial_id, record = self._record(trial)
        record.set(status="running", error=None)
        record.start_attempt()  # every start counts: first, retried, or resumed
        record.save()
        self.progress.update(trial_id, status="running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        trial_id, record = self._record(trial)
        rows = json.loads(result.get("rows_json", "[]"))
        if "node_json" in result:  # the trial's own word on its node (rank 0's)
            record.attempt_ran_on(json.loads(result["node_json"]))
        if result.get("done"):
            # the final report carries the trial's whole history: it replaces what was
            # recorded epoch by epoch (a trial resumed elsewhere may not have replayed it all)
            summary = json.loads(result["summary_json"])
            record.replace_history(rows)
            record.set(summary=summary, status=summary["status"], error=summary["error"])
            record.attempt_ran_on(summary)
            record.end_attempt(summary["status"], summary["error"])
            self.progress.update(
                trial_id,
                status=summary["status"],
                test_auroc=summary["test_mean_auroc"],
                error=summary["error"],
            )
        else:
            record.add_epochs(rows)  # this epoch's, after a restore also the earlier ones
            self.progress.update(
                trial_id,
                epoch=result["epoch"],
                val_auroc=result["val_mean_auroc"],
                loss=result["train_mean_loss"],
            )
        record.save()
        if result.get("done") and record.status in ENDED and self.on_ended is not None:
            self.on_ended(trial_id, record.data["summary"].get("best_epoch"))

    def on_trial_complete(self, iteration, trials, trial, **info):
        trial_id, record = self._record(trial)
        if record.status == "running":  # returned without its final report
            record.set(status="failed", error="trial ended without a final report")
            record.end_attempt("failed", record.data["error"])
            record.save()
            self.progress.update(trial_id, status="failed", error=record.data["error"])

    def on_trial_error(self, iteration, trials, trial, **info):
        trial_id, record = self._record(trial)
        record.set(status="failed", error=error_line(trial))
        record.end_attempt("failed", record.data["error"])
        record.save()
        self.progress.update(trial_id, status="failed", error=record.data["error"])

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed attempt that Tune retries (``train.max_failures``): the next start is a new
        attempt; the trial itself stays running."""
        trial_id, record = self._record(trial)
        record.end_attempt("failed", error_line(trial))
        record.save()


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*:")


def error_line(trial) -> str:
    """The line that names a trial's error (``SomeError: message``), read from the error file
    that Tune has just written into the trial's local directory."""
    text = ""
    try:
        if trial.error_file:
            text = Path(trial.error_file).read_text()
    except OSError:  # no local error file: Tune could not write it
        pass
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    named = [ln for ln in lines if _EXCEPTION_LINE.match(ln)]
    line = named[-1] if named else lines[-1] if lines else ""
    return line[:500] or "unknown error (see the trial's error.txt under ray/)"
