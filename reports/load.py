"""Reading a run directory written by the harness into plain pandas/dict objects.

Only pandas, pyarrow, PyYAML and the standard library are used here, so that a report can be
rebuilt on a laptop from a cluster's results without torch or ray installed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
TRIALS_FILE = "results/trials.parquet"
EPOCHS_FILE = "results/epochs.parquet"

TRIAL_COLUMNS: tuple[str, ...] = (
    "trial_id",
    "method",
    "backbone",
    "seed",
    "status",
    "error",
    "epochs_completed",
    "best_epoch",
    "val_mean_auroc",
    "test_mean_auroc",
    "test_mean_accuracy",
    "images_per_second",
    "step_time_ms",
    "data_time_ms",
    "forward_time_ms",
    "backward_time_ms",
    "optimizer_time_ms",
    "peak_memory_mb",
    "wall_time_s",
    "device",
)
TRIAL_FLOAT_COLUMNS: tuple[str, ...] = (
    "val_mean_auroc",
    "test_mean_auroc",
    "test_mean_accuracy",
    "images_per_second",
    "step_time_ms",
    "data_time_ms",
    "forward_time_ms",
    "backward_time_ms",
    "optimizer_time_ms",
    "peak_memory_mb",
    "wall_time_s",
)

EPOCH_COLUMNS: tuple[str, ...] = (
    "trial_id",
    "method",
    "backbone",
    "seed",
    "epoch",
    "split",
    "task",
    "loss",
    "accuracy",
    "auroc",
    "weight",
    "weight_normalized",
    "n_labeled",
    "train_time_s",
)
EPOCH_FLOAT_COLUMNS: tuple[str, ...] = (
    "loss",
    "accuracy",
    "auroc",
    "weight",
    "weight_normalized",
    "train_time_s",
)

STRING_COLUMNS: tuple[str, ...] = ("trial_id", "method", "backbone", "status", "split", "task")


class ReportError(Exception):
    """A run directory cannot be read; the message is one line and names the file."""


@dataclass
class RunResults:
    """Everything a report is built from, as read from one run directory."""

    run_dir: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The run's name from the manifest, else the directory's name."""
        name = self.manifest.get("name")
        return str(name) if name else self.run_dir.name

    @property
    def tasks(self) -> list[str]:
        """Task names in display order: the manifest's order, then any others in the data."""
        ordered = [str(t) for t in self.manifest.get("tasks") or []]
        seen = set(ordered)
        if "task" in self.epochs.columns:
            for task in self.epochs["task"].dropna().astype(str).unique():
                if task not in seen:
                    ordered.append(task)
                    seen.add(task)
        return ordered


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ReportError(f"missing file: {path}")


def _read_manifest(path: Path) -> dict[str, Any]:
    _require_file(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"corrupt file {path}: {_one_line(exc)}") from exc
    if not isinstance(manifest, dict):
        raise ReportError(f"corrupt file {path}: expected a JSON object at top level")
    tasks = manifest.get("tasks")
    if tasks is not None and not isinstance(tasks, list):
        raise ReportError(f"corrupt file {path}: 'tasks' must be a list of task names")
    trials = manifest.get("trials")
    if trials is not None and not isinstance(trials, dict):
        raise ReportError(f"corrupt file {path}: 'trials' must be an object keyed by trial id")
    return manifest


def _read_config(path: Path) -> dict[str, Any]:
    _require_file(path)
    import yaml  # PyYAML: light, pure data; imported here so the rest never needs it

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReportError(f"corrupt file {path}: {_one_line(exc)}") from exc
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ReportError(f"corrupt file {path}: expected a mapping at top level")
    return config


def _read_table(
    path: Path, columns: tuple[str, ...], float_columns: tuple[str, ...]
) -> pd.DataFrame:
    _require_file(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises a zoo of types for a damaged file
        raise ReportError(f"corrupt file {path}: {_one_line(exc)}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ReportError(f"corrupt file {path}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    try:
        for column in float_columns:
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
    except (TypeError, ValueError) as exc:
        raise ReportError(f"corrupt file {path}: {_one_line(exc)}") from exc
    for column in STRING_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].astype("string").astype(object)
            frame.loc[frame[column].isna(), column] = None
    return frame.reset_index(drop=True)


def load_run(run_dir: str | os.PathLike[str]) -> RunResults:
    """Read a run directory; raise :class:`ReportError` naming the file when one is unusable."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"run directory not found: {root}")
    manifest = _read_manifest(root / MANIFEST_FILE)
    config = _read_config(root / CONFIG_FILE)
    trials = _read_table(root / TRIALS_FILE, TRIAL_COLUMNS, TRIAL_FLOAT_COLUMNS)
    epochs = _read_table(root / EPOCHS_FILE, EPOCH_COLUMNS, EPOCH_FLOAT_COLUMNS)
    return RunResults(run_dir=root, trials=trials, epochs=epochs, manifest=manifest, config=config)
