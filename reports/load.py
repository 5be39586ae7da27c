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

NAN = float("nan")
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

# Columns added after the first release: a run directory written before them still loads,
# with NaN in their place (the report then says the figure was not recorded).
OPTIONAL_TRIAL_FLOAT_COLUMNS: tuple[str, ...] = (
    "test_mean_auprc",
    "test_macro_f1",
    "test_macro_f1_tuned",
    "test_exact_match",
    "test_trivial_exact_match",
    "train_time_s",
    "n_train",
    "n_val",
    "n_test",
)
OPTIONAL_EPOCH_FLOAT_COLUMNS: tuple[str, ...] = (
    "auprc",
    "f1",
    "n_positive",
    "threshold",
    "f1_tuned",
)

# Where each trial ran (added with the cluster provenance): absent in older runs, filled with
# None (strings) or NaN (counts); an older run's ``device`` "cuda:<model>" is split in two.
OPTIONAL_TRIAL_STRING_COLUMNS: tuple[str, ...] = (
    "hostname",
    "node_ip",
    "node_id",
    "gpu_name",
    "worker_hosts",
)
OPTIONAL_TRIAL_COUNT_COLUMNS: tuple[str, ...] = ("attempts", "cpu_threads")

STRING_COLUMNS: tuple[str, ...] = (
    "trial_id",
    "method",
    "backbone",
    "status",
    "split",
    "task",
    "run",
    "workload",
)


class ReportError(Exception):
    """A run directory cannot be read; the message is one line and names the file."""


@dataclass
class RunResults:
    """Everything a report is built from, as read from one run directory. With ``tuning``,
    ``trials`` and ``epochs`` hold the final trials only (what the report compares) and
    ``tuning_trials`` and ``tuning_epochs`` the tuning trials (the report's Tuning section)."""

    run_dir: Path
    trials: pd.DataFrame
    epochs: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    tuning_trials: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuning_epochs: pd.DataFrame = field(default_factory=pd.DataFrame)

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
    path: Path,
    columns: tuple[str, ...],
    float_columns: tuple[str, ...],
    optional_float_columns: tuple[str, ...] = (),
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
    for column in optional_float_columns:
        if column not in frame.columns:
            frame[column] = float("nan")
    try:
        for column in (*float_columns, *optional_float_columns):
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
    except (TypeError, ValueError) as exc:
        raise ReportError(f"corrupt file {path}: {_one_line(exc)}") from exc
    for column in STRING_COLUMNS:
        if column in frame.columns:
            frame[column] = frame[column].astype("string").astype(object)
            frame.loc[frame[column].isna(), column] = None
    return frame.reset_index(drop=True)


def _placement_columns(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The where-it-ran columns, present in every loaded table whatever the run's age."""
    for column in OPTIONAL_TRIAL_STRING_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    try:
        for column in OPTIONAL_TRIAL_COUNT_COLUMNS:
            if column not in frame.columns:
                frame[column] = float("nan")
            frame[column] = pd.to_numeric(frame[column], errors="raise").astype("float64")
    except (TypeError, ValueError) as exc:
        raise ReportError(f"corrupt file {path}: {_one_line(exc)}") from exc
    device = frame["device"].astype(object)
    old = device.map(lambda d: isinstance(d, str) and d.startswith("cuda:"))
    if old.any():  # before gpu_name: "cuda:<model>"
        frame.loc[old & frame["gpu_name"].isna(), "gpu_name"] = device[old].str[5:]
        frame.loc[old, "device"] = "cuda"
    return frame


def load_run(run_dir: str | os.PathLike[str]) -> RunResults:
    """Read a run directory; raise :class:`ReportError` naming the file when one is unusable."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"run directory not found: {root}")
    manifest = _read_manifest(root / MANIFEST_FILE)
    config = _read_config(root / CONFIG_FILE)
    trials = _read_table(
        root / TRIALS_FILE, TRIAL_COLUMNS, TRIAL_FLOAT_COLUMNS, OPTIONAL_TRIAL_FLOAT_COLUMNS
    )
    epochs = _read_table(
        root / EPOCHS_FILE, EPOCH_COLUMNS, EPOCH_FLOAT_COLUMNS, OPTIONAL_EPOCH_FLOAT_COLUMNS
    )
    trials = _placement_columns(trials, root / TRIALS_FILE)
    trials, epochs = _combine_single_task(trials, epochs)
    swept = _swept_keys(config)
    trials, epochs = _arm_labels(trials, swept), _arm_labels(epochs, swept)
    tuning = pd.DataFrame(columns=trials.columns)
    tuning_epochs = pd.DataFrame(columns=epochs.columns)
    if "study" in trials.columns:  # epochs carry their trial's study: a workload per study
        epochs = epochs.assign(study=epochs["trial_id"].map(trials.set_index("trial_id")["study"]))
    if "phase" in trials.columns and (trials["phase"] == "tuning").any():
        # selection saw only these trials' val scores; the comparison is of the final ones
        is_tuning = trials["phase"] == "tuning"
        tuning = trials[is_tuning].reset_index(drop=True)
        trials = trials[~is_tuning].reset_index(drop=True)
        in_tuning = epochs["trial_id"].isin(set(tuning["trial_id"]))
        tuning_epochs = epochs[in_tuning].reset_index(drop=True)
        epochs = epochs[~in_tuning].reset_index(drop=True)
    return RunResults(
        run_dir=root,
        trials=trials,
        epochs=epochs,
        manifest=manifest,
        config=config,
        tuning_trials=tuning,
        tuning_epochs=tuning_epochs,
    )


SINGLE_TASK = "stl"  # the method name of the single-task references (grid.single_task)
# how a single-task reference's T trials (one per task) make one trial of all tasks: a mean
# over tasks of a per-task figure, a sum of a cost, the largest memory
_STL_MEAN = (
    "val_mean_auroc",
    "test_mean_auroc",
    "test_mean_accuracy",
    "test_mean_auprc",
    "test_macro_f1",
    "test_macro_f1_tuned",
)
_STL_SUM = (
    "wall_time_s",
    "train_time_s",
    "step_time_ms",
    "data_time_ms",
    "forward_time_ms",
    "backward_time_ms",
    "optimizer_time_ms",
)


def _combine_single_task(
    trials: pd.DataFrame, epochs: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The single-task references (``stl`` trials with ``single_task`` set, one network per
    task) become one trial per (backbone, seed) holding every task, so that the report treats
    them as one method: per-task figures come from each task's own network, the summary's mean
    over tasks is the mean of the networks' figures, costs add up (``wall_time_s`` is the
    compute of all T networks; images/s is the rate at which all T networks get through the
    images: 1 / sum(1 / rate)), and the status is the worst of the T. ``n_networks`` counts them."""
    if "single_task" not in trials.columns:
        return trials, epochs
    single = (trials["method"] == SINGLE_TASK) & trials["single_task"].notna()
    if not single.any():
        return trials, epochs
    members = trials[single]
    combined, renamed = [], {}
    for (backbone, seed), group in members.groupby(["backbone", "seed"], sort=False):
        trial_id = f"{SINGLE_TASK}-{backbone}-s{seed}"
        row = group.iloc[0].to_dict()
        statuses = list(group["status"])
        worst = next(
            (s for s in ("failed", "diverged", "running", "pending") if s in statuses), statuses[0]
        )
        row.update(trial_id=trial_id, status=worst, single_task=None, n_networks=len(group))
        row["error"] = next((e for e in group["error"] if isinstance(e, str) and e), None)
        for column in _STL_MEAN:
            if column in group:
                row[column] = group[column].mean()
        for column in _STL_SUM:
            if column in group:
                row[column] = group[column].sum(min_count=1)
        row["peak_memory_mb"] = group["peak_memory_mb"].max()
        row["attempts"] = group["attempts"].max()  # retried when any network was
        rates = group["images_per_second"]
        row["images_per_second"] = 1.0 / (1.0 / rates).sum() if rates.notna().all() else NAN
        row["best_epoch"] = NAN  # each network has its own
        row["test_exact_match"] = row["test_trivial_exact_match"] = NAN  # needs all tasks at once
        combined.append(row)
        renamed.update(dict.fromkeys(group["trial_id"], trial_id))
    trials = pd.concat([trials[~single], pd.DataFrame(combined)], ignore_index=True)
    epochs = epochs.assign(trial_id=epochs["trial_id"].replace(renamed))
    return trials, epochs


def _swept_keys(config: dict[str, Any]) -> list[str]:
    grid = config.get("grid") if isinstance(config.get("grid"), dict) else {}
    sweep = grid.get("sweep") if isinstance(grid.get("sweep"), dict) else {}
    return [str(k) for k in sweep]


def _setting(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # as in the trial ids (harness.config.sweep_label)
    return str(value)


def _arm_labels(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Trials that differ in a swept setting (``grid.sweep``) are different arms of the
    comparison, never pooled: their ``method`` becomes ``equal (train.lr=0.0003)``; the
    registered method stays in ``weighting``. A run without a sweep is left as it is."""
    present = [k for k in keys if k in frame.columns]
    frame = frame.copy()
    frame["weighting"] = frame["method"]
    if not present:
        return frame

    def label(row: pd.Series) -> str:
        parts = [f"{k}={_setting(row[k])}" for k in present if not pd.isna(row[k])]
        return f"{row['method']} ({', '.join(parts)})" if parts else row["method"]

    frame["method"] = frame.apply(label, axis=1).astype(object)
    return frame


@dataclass
class Comparison:
    """One or more run directories merged into one comparison.

    Both tables gain ``run`` (the run's name) and ``workload``: what a method is trained on,
    the backbone alone when every run used the same data and training settings, else
    ``backbone · data`` (plus ``[run name]`` where data set and size agree but not the rest). A
    (method, workload) pair is a *config*; its trials differ by seed.
    """

    runs: list[RunResults]
    trials: pd.DataFrame
    epochs: pd.DataFrame
    workload_is_backbone: bool
    run_names: list[str] = field(default_factory=list)  # as in the ``run`` column

    def __post_init__(self) -> None:
        if not self.run_names:
            self.run_names = [run.name for run in self.runs]

    @property
    def name(self) -> str:
        return " + ".join(self.run_names)

    @property
    def tasks(self) -> list[str]:
        """Findings in the first run's order, then any others the later runs add."""
        ordered: list[str] = []
        for run in self.runs:
            ordered += [t for t in run.tasks if t not in ordered]
        return ordered


def data_label(config: dict[str, Any]) -> str:
    """``"nih @ 224 px"``: the data set and input size a run trained on, from its config."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    dataset = data.get("dataset") or "unknown data"
    size = data.get("image_size")
    return f"{dataset} @ {size} px" if size else str(dataset)


PATH_KEYS = ("root", "prepared")  # where the data sits may differ between machines
RETRY_KEYS = ("max_failures",)  # how often a crash is retried changes no result


def _workload_key(run: RunResults) -> str:
    """What makes two runs' numbers comparable: the data settings (paths aside), the findings
    and the training budget and optimiser (``train``, retries aside)."""

    def section(name: str, ignored: tuple[str, ...]) -> dict:
        value = run.config.get(name)
        return (
            {k: v for k, v in value.items() if k not in ignored} if isinstance(value, dict) else {}
        )

    key = {
        "data": section("data", PATH_KEYS),
        "train": section("train", RETRY_KEYS),
        "tasks": run.tasks,
    }
    return json.dumps(key, sort_keys=True, default=str)


def merge_runs(runs: list[RunResults]) -> Comparison:
    """Stack the runs' tables. Runs whose data settings (paths aside), findings and training
    settings agree share workloads named by backbone alone; otherwise each workload also names
    its data, and runs that differ beyond data set and size are told apart by run name. Two
    runs that hold the same method, workload and seed are refused (the paired comparisons pair
    trials by seed, so such a merge has no single answer)."""
    if not runs:
        raise ReportError("no run directory given")
    names: list[str] = []
    for run in runs:
        name = run.name
        while name in names:
            name += "'"
        names.append(name)
    keys = [_workload_key(run) for run in runs]
    same_data = len(set(keys)) == 1
    labels = [data_label(run.config) for run in runs]
    keys_by_label: dict[str, set[str]] = {}
    for key, label in zip(keys, labels, strict=True):
        keys_by_label.setdefault(label, set()).add(key)
    # same data set and size but other settings: the run's name tells them apart
    labels = [
        f"{label} [{name}]" if len(keys_by_label[label]) > 1 else label
        for label, name in zip(labels, names, strict=True)
    ]
    trials, epochs = [], []
    for run, name, data in zip(runs, names, labels, strict=True):
        for frame, out in ((run.trials, trials), (run.epochs, epochs)):
            frame = frame.copy()
            frame["run"] = name
            backbone = frame["backbone"].astype(object)
            frame["workload"] = backbone if same_data else backbone + f" · {data}"
            if "study" in frame.columns and frame["study"].nunique() > 1:
                # each study is an independent repetition of the tuning: compared on its own
                study = frame["study"].map(lambda j: f" · study {int(j) + 1}")
                frame["workload"] = frame["workload"] + study
            if len(runs) > 1:
                frame["trial_id"] = name + "/" + frame["trial_id"].astype(str)
            out.append(frame)
    merged_trials = pd.concat(trials, ignore_index=True)
    merged_epochs = pd.concat(epochs, ignore_index=True)
    key = ["method", "workload", "seed"]
    twice = merged_trials[merged_trials.duplicated(key, keep=False)]
    if len(runs) > 1 and not twice.empty:
        row = twice.iloc[0]
        where = ", ".join(sorted(set(twice[(twice[key] == row[key]).all(axis=1)]["run"])))
        raise ReportError(
            f"method {row['method']!r}, workload {row['workload']!r}, seed {row['seed']} is in "
            f"more than one run ({where}); merge runs of different methods, backbones or data"
        )
    return Comparison(
        runs=runs,
        trials=merged_trials,
        epochs=merged_epochs,
        workload_is_backbone=same_data,
        run_names=names,
    )


def load_runs(run_dirs: list[str | os.PathLike[str]]) -> Comparison:
    """Read and merge run directories (see :func:`merge_runs`)."""
    return merge_runs([load_run(path) for path in run_dirs])
