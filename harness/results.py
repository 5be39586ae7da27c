"""The results store of a run directory.

While a run goes on, the driver keeps one JSON file per trial in ``trials/`` with the rows
that the trial reported, keyed by epoch, so that a retried or restored trial that reports an
epoch again replaces it rather than duplicating it. When the run ends they become
``results/trials.parquet`` and ``results/epochs.parquet`` (see the README for the columns).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TRIAL_KEYS = ("trial_id", "method", "backbone", "seed")

# which run a row belongs to, in both tables, so that the tables of several runs stacked
# together (``pd.read_parquet`` of ``runs/*/results/trials.parquet``) stay apart: the run's
# ``name`` (the run directory's name when it was written), ``data.dataset`` and the trial's
# ``data.image_size`` (a swept one included)
RUN_FIELDS = [("run", pa.string()), ("dataset", pa.string()), ("image_size", pa.int64())]

TRIALS_SCHEMA = pa.schema(
    [
        *RUN_FIELDS,
        ("trial_id", pa.string()),
        ("method", pa.string()),
        ("backbone", pa.string()),
        ("seed", pa.int64()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("epochs_completed", pa.int64()),
        ("best_epoch", pa.int64()),
        ("val_mean_auroc", pa.float64()),
        ("test_mean_auroc", pa.float64()),
        ("test_mean_accuracy", pa.float64()),
        ("test_mean_auprc", pa.float64()),
        ("test_macro_f1", pa.float64()),
        ("test_macro_f1_tuned", pa.float64()),  # at thresholds chosen on val (max F1 there)
        ("test_exact_match", pa.float64()),
        ("test_trivial_exact_match", pa.float64()),
        ("n_train", pa.int64()),
        ("n_val", pa.int64()),
        ("n_test", pa.int64()),
        ("images_per_second", pa.float64()),
        ("step_time_ms", pa.float64()),
        ("data_time_ms", pa.float64()),
        ("forward_time_ms", pa.float64()),
        ("backward_time_ms", pa.float64()),
        ("optimizer_time_ms", pa.float64()),
        # wall-clock per step: host work between phases included (on CUDA the phases are
        # device time from CUDA events, one synchronisation per step)
        ("wall_step_time_ms", pa.float64()),
        ("wall_images_per_second", pa.float64()),
        ("peak_memory_mb", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("train_time_s", pa.float64()),
        ("workers", pa.int64()),
        ("device", pa.string()),  # "cpu" or "cuda" (runs before 0.x: "cuda:<GPU model>")
        # where the trial ran (its last attempt; rank 0 under several workers)
        ("hostname", pa.string()),
        ("node_ip", pa.string()),
        ("node_id", pa.string()),  # Ray's node id
        ("gpu_name", pa.string()),
        ("cpu_threads", pa.int64()),
        ("worker_hosts", pa.string()),  # every worker's host, by rank (several workers only)
        ("attempts", pa.int64()),  # times started: 1 + retries (max_failures) + resumes
        ("single_task", pa.string()),  # the one task of a single-task reference (method stl)
        # with tuning: "tuning" or "final", the study, and a final trial's chosen tuning trial
        ("phase", pa.string()),
        ("study", pa.int64()),
        ("selected", pa.string()),
    ]
)

EPOCHS_SCHEMA = pa.schema(
    [
        *RUN_FIELDS,
        ("trial_id", pa.string()),
        ("method", pa.string()),
        ("backbone", pa.string()),
        ("seed", pa.int64()),
        ("epoch", pa.int64()),
        ("split", pa.string()),
        ("task", pa.string()),
        ("loss", pa.float64()),
        ("accuracy", pa.float64()),
        ("auroc", pa.float64()),
        ("auprc", pa.float64()),
        ("f1", pa.float64()),
        ("threshold", pa.float64()),  # val, test: probability threshold chosen on val
        ("f1_tuned", pa.float64()),  # F1 at that threshold (val: in-sample)
        ("weight", pa.float64()),
        ("weight_normalized", pa.float64()),
        ("n_labeled", pa.int64()),
        ("n_positive", pa.int64()),
        ("train_time_s", pa.float64()),  # cumulative training time at the end of the epoch
    ]
)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _write_json(path: Path, obj: Any) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


def _open_attempts(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The attempts never closed: their driver stopped, or was killed, while they ran."""
    return [a for a in attempts if a.get("ended_at") is None and a.get("status") == "running"]


def interrupt_open_attempts(trials_dir: Path) -> None:
    """The run was stopped (Ctrl-C, SIGTERM): every trial attempt still running is
    ``interrupted``, ending now, in its record (``trials/<id>.json``)."""
    for path in sorted(trials_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # a record cut short: the next run rewrites it
            continue
        open_attempts = _open_attempts(data.get("attempts") or [])
        for attempt in open_attempts:
            attempt.update(status="interrupted", ended_at=now_iso())
        if open_attempts:
            _write_json(path, data)


# the statuses whose final report ends a trial for good (a failed one may be run again)
ENDED = ("completed", "diverged")


class TrialRecord:
    """What the driver knows of one trial: identity, state, rows by epoch, summary."""

    def __init__(self, directory: Path, identity: dict[str, Any]):
        self.path = directory / f"{identity['trial_id']}.json"
        self.data: dict[str, Any] = {
            "identity": identity,
            "status": "pending",
            "error": None,
            "rows": {},  # "epoch:<n>" or "test" -> list of row dicts
            "summary": None,
            # one entry per start: started_at, ended_at, status, hostname, node_ip, node_id
            "attempts": [],
        }
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            self.data.setdefault("attempts", [])  # a record written before attempts were kept

    # ---- attempts ----------------------------------------------------------------------
    def start_attempt(self) -> None:
        """The trial was (re)started: a retry after a failure, or a run resumed."""
        self._close_open("interrupted")
        self.data["attempts"].append(
            {
                "started_at": now_iso(),
                "ended_at": None,
                "status": "running",
                "error": None,
                "hostname": None,
                "node_ip": None,
                "node_id": None,
            }
        )

    def attempt_ran_on(self, node: dict[str, Any]) -> None:
        """Where the current attempt runs, from its first report that says so."""
        attempts = self.data["attempts"]
        if attempts and attempts[-1]["ended_at"] is None and not attempts[-1]["hostname"]:
            attempts[-1].update({k: node.get(k) for k in ("hostname", "node_ip", "node_id")})

    def end_attempt(self, status: str, error: str | None = None) -> None:
        attempts = self.data["attempts"]
        if attempts and attempts[-1]["ended_at"] is None:
            attempts[-1].update(ended_at=now_iso(), status=status, error=error)

    def _close_open(self, status: str) -> None:
        """An attempt never closed: its driver stopped or was killed while it ran."""
        for attempt in _open_attempts(self.data["attempts"]):
            attempt["status"] = status

    @property
    def attempts(self) -> list[dict[str, Any]]:
        return self.data["attempts"]

    def add_epochs(self, rows: list[dict[str, Any]]) -> None:
        """Train/val rows of one or more epochs; each epoch's replace what was recorded."""
        by_epoch: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_epoch.setdefault(f"epoch:{row['epoch']}", []).append(row)
        self.data["rows"].update(by_epoch)

    def replace_history(self, rows: list[dict[str, Any]]) -> None:
        """All rows of the trial (train/val by epoch, then test) replace what was recorded."""
        self.data["rows"] = {}
        for row in rows:
            key = "test" if row["split"] == "test" else f"epoch:{row['epoch']}"
            self.data["rows"].setdefault(key, []).append(row)

    def reset(self) -> None:
        """Forget an unfinished attempt before the trial is run again (its entry in
        ``attempts`` stays, marked interrupted if it never ended)."""
        self._close_open("interrupted")
        self.data.update(status="pending", error=None, rows={}, summary=None)

    def set(self, **fields: Any) -> None:
        self.data.update(fields)

    def save(self) -> None:
        _write_json(self.path, self.data)

    @property
    def status(self) -> str:
        return self.data["status"]


def _table(records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    columns = {}
    for field in schema:
        values = [r.get(field.name) for r in records]
        if pa.types.is_floating(field.type):
            values = [math.nan if v is None else float(v) for v in values]
        if pa.types.is_string(field.type):  # a swept column of mixed types: as text
            values = [None if v is None else str(v) for v in values]
        columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=schema)


def _with_swept(schema: pa.Schema, records: list[TrialRecord]) -> pa.Schema:
    """``schema`` with a column per swept setting (the identities' dotted keys, e.g.
    ``train.lr``) after ``seed``; a trial that does not vary a key (another method's
    hyperparameter) has null there. Types as pyarrow infers them (text when mixed)."""
    keys = list(dict.fromkeys(k for r in records for k in r.data["identity"] if "." in k))
    fields = []
    for key in keys:
        values = [r.data["identity"].get(key) for r in records]
        try:
            kind = pa.array(values).type
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            kind = pa.string()
        fields.append(pa.field(key, pa.float64() if pa.types.is_null(kind) else kind))
    at = schema.get_field_index("seed") + 1
    return pa.schema([*list(schema)[:at], *fields, *list(schema)[at:]])


def write_tables(
    run_dir: Path,
    records: list[TrialRecord],
    *,
    run: str | None = None,
    dataset: str | None = None,
    image_size: int | None = None,
) -> tuple[Path, Path]:
    """``results/trials.parquet`` and ``results/epochs.parquet`` from the trial records, with
    a column per swept setting in both, and in every row ``run``, ``dataset`` and
    ``image_size`` (a trial's swept ``data.image_size`` over the experiment's)."""
    out = run_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    trial_rows, epoch_rows = [], []
    for record in records:
        identity = {
            "run": run,
            "dataset": dataset,
            "image_size": image_size,
            **record.data["identity"],
        }
        identity["image_size"] = identity.get("data.image_size", image_size)
        summary = record.data["summary"] or {}
        # a trial without a summary (failed, interrupted) still says where it last ran
        ran = [a for a in record.attempts if a.get("hostname")]
        where = {k: ran[-1].get(k) for k in ("hostname", "node_ip", "node_id")} if ran else {}
        trial_rows.append(
            {
                **where,
                **summary,
                "attempts": len(record.attempts),
                **identity,
                "status": record.status,
                "error": record.data["error"],
                "epochs_completed": summary.get(
                    "epochs_completed",
                    len([k for k in record.data["rows"] if k.startswith("epoch:")]),
                ),
            }
        )
        for key in sorted(record.data["rows"], key=_row_key_order):
            epoch_rows += [{**row, **identity} for row in record.data["rows"][key]]
    trials_path, epochs_path = out / "trials.parquet", out / "epochs.parquet"
    pq.write_table(_table(trial_rows, _with_swept(TRIALS_SCHEMA, records)), trials_path)
    pq.write_table(_table(epoch_rows, _with_swept(EPOCHS_SCHEMA, records)), epochs_path)
    return trials_path, epochs_path


def _row_key_order(key: str) -> tuple[int, int]:
    return (1, 0) if key == "test" else (0, int(key.split(":")[1]))


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    _write_json(run_dir / "manifest.json", manifest)


# ---- the run's attempts ------------------------------------------------------------------
# The manifest's ``attempts``: one entry per `harness run` (the first, then each --resume) with
# started_at, ended_at, command, resumed, trials_to_run, outcome (finished / interrupted /
# failed; null while it runs) and driver (host:pid of the process that ran it).


def _driver() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def past_run_attempts(stored: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The attempts recorded in an earlier manifest; one that never recorded its end (a driver
    killed with SIGKILL, or a lost head node) is marked interrupted, its end unknown. A manifest
    written before attempts were kept yields its start and ``resumed_at`` times."""
    if not stored:
        return []
    if isinstance(stored.get("attempts"), list):
        attempts = [dict(a) for a in stored["attempts"] if isinstance(a, dict)]
    else:
        starts = [stored.get("started_at"), *(stored.get("resumed_at") or [])]
        attempts = [
            {
                "started_at": start,
                "ended_at": None,
                "command": stored.get("command") if i == len(starts) - 1 else None,
                "resumed": i > 0,
                "trials_to_run": None,
                "outcome": None,
            }
            for i, start in enumerate(starts)
        ]
        if stored.get("finished_at") and attempts:
            attempts[-1].update(ended_at=stored["finished_at"], outcome="finished")
    for attempt in attempts:
        if attempt.get("outcome") is None:
            attempt["outcome"] = "interrupted"
    return attempts


def new_run_attempt(
    command: str, resumed: bool, trials_to_run: int, started_at: str | None = None
) -> dict[str, Any]:
    return {
        "started_at": started_at or now_iso(),
        "ended_at": None,
        "command": command,
        "resumed": resumed,
        "trials_to_run": trials_to_run,
        "outcome": None,
        "driver": _driver(),
    }


def current_run_attempt(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's attempt that this process runs, if any."""
    attempts = manifest.get("attempts") or []
    last = attempts[-1] if attempts else None
    if last and last.get("outcome") is None and last.get("driver") == _driver():
        return last
    return None


def end_run_attempt(manifest: dict[str, Any], outcome: str) -> None:
    if (attempt := current_run_attempt(manifest)) is not None:
        attempt.update(ended_at=now_iso(), outcome=outcome)


def record_run_attempt_end(run_dir: Path, outcome: str) -> None:
    """Best effort, for a run that stops early (Ctrl-C, SIGTERM, an error): record this
    process's attempt as ended with ``outcome`` in the manifest on disk."""
    path = run_dir / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(manifest, dict) and current_run_attempt(manifest) is not None:
        end_run_attempt(manifest, outcome)
        write_manifest(run_dir, manifest)
