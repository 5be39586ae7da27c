"""The results store of a run directory.

While a run goes on, the driver keeps one JSON file per trial in ``trials/`` with the rows
that the trial reported, keyed by epoch, so that a retried or restored trial that reports an
epoch again replaces it rather than duplicating it. When the run ends they become
``results/trials.parquet`` and ``results/epochs.parquet`` (see the README for the columns).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

TRIAL_KEYS = ("trial_id", "method", "backbone", "seed")

TRIALS_SCHEMA = pa.schema(
    [
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
        ("peak_memory_mb", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("train_time_s", pa.float64()),
        ("workers", pa.int64()),
        ("device", pa.string()),
    ]
)

EPOCHS_SCHEMA = pa.schema(
    [
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


def _write_json(path: Path, obj: Any) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True))
    os.replace(tmp, path)


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
        }
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())

    def add_epoch(self, epoch: int, rows: list[dict[str, Any]]) -> None:
        self.data["rows"][f"epoch:{epoch}"] = rows

    def replace_history(self, rows: list[dict[str, Any]]) -> None:
        """All rows of the trial (train/val by epoch, then test) replace what was recorded."""
        self.data["rows"] = {}
        for row in rows:
            key = "test" if row["split"] == "test" else f"epoch:{row['epoch']}"
            self.data["rows"].setdefault(key, []).append(row)

    def reset(self) -> None:
        """Forget an unfinished attempt before the trial is run again."""
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
        columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=schema)


def write_tables(run_dir: Path, records: list[TrialRecord]) -> tuple[Path, Path]:
    """``results/trials.parquet`` and ``results/epochs.parquet`` from the trial records."""
    out = run_dir / "results"
    out.mkdir(parents=True, exist_ok=True)
    trial_rows, epoch_rows = [], []
    for record in records:
        identity = record.data["identity"]
        summary = record.data["summary"] or {}
        trial_rows.append(
            {
                **summary,
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
    pq.write_table(_table(trial_rows, TRIALS_SCHEMA), trials_path)
    pq.write_table(_table(epoch_rows, EPOCHS_SCHEMA), epochs_path)
    return trials_path, epochs_path


def _row_key_order(key: str) -> tuple[int, int]:
    return (1, 0) if key == "test" else (0, int(key.split(":")[1]))


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    _write_json(run_dir / "manifest.json", manifest)
