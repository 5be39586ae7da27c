"""Reading a run directory written by the harness into plain pandas/dict objects.

Only pandas, pyarrow, PyYAML and the standard library are used here, so that a report can be
rebuilt on a laptop from a cluster's results without torch or ray installed.

A run whose tables are not written yet (it still runs, or it was interrupted) is read from the
trial records the driver keeps in ``trials/*.json`` (see ``harness.results``): its finished
trials, with :class:`Partial` saying which are still missing.
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
TRIALS_DIR = "trials"  # the driver's record of each trial while the run goes on
REPORT_FILE = "report.html"
# a trial in one of these states has ended in its attempt (a failed one may run again)
FINISHED = ("completed", "diverged", "failed")

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

# which run, data set and input size each row is of (added with the Python API): absent in
# older runs, filled from the manifest's name and the config (a swept ``data.image_size``
# from its column)
RUN_COLUMNS: tuple[str, ...] = ("run", "dataset", "image_size")

STRING_COLUMNS: tuple[str, ...] = (
    "trial_id",
    "method",
    "backbone",
    "status",
    "split",
    "task",
    "run",
    "dataset",
    "workload",
)


class ReportError(Exception):
    """A run directory cannot be read; the message is one line and names the file."""


# the missing trials a partial report names; it counts the rest (a grid of 1000 trials would
# otherwise put some 30 KB of ids at the top of the report)
MISSING_LISTED = 10


@dataclass(frozen=True)
class Partial:
    """A run read from its trial records before its tables were written: ``finished`` of
    ``total`` trials ended (completed, diverged or failed); ``missing`` are the others'
    ids (pending, running, or cut off by an interruption)."""

    finished: int
    total: int
    missing: tuple[str, ...]

    @property
    def sentence(self) -> str:
        """``Partial: 3 of 8 trials finished; still missing: a, b, c, d, e`` (the first
        :data:`MISSING_LISTED`, then ``and N more``)."""
        from reports.format import plural

        shown = ", ".join(self.missing[:MISSING_LISTED])
        if len(self.missing) > MISSING_LISTED:
            shown += f" and {len(self.missing) - MISSING_LISTED} more"
        return (
            f"Partial: {self.finished} of {plural(self.total, 'trial')} finished; "
            f"still missing: {shown}"
        )


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
    # set when the tables were not written yet: read from the trial records (load_run)
    partial: Partial | None = None

    @property
    def report_path(self) -> Path | None:
        """The run's own ``report.html``, None while it has not been written."""
        path = self.run_dir / REPORT_FILE
        return path if path.is_file() else None

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
    return _normalise(frame, path, columns, float_columns, optional_float_columns)


def _normalise(
    frame: pd.DataFrame,
    path: Path,
    columns: tuple[str, ...],
    float_columns: tuple[str, ...],
    optional_float_columns: tuple[str, ...] = (),
) -> pd.DataFrame:
    """Required columns checked, numbers as float64, text as str/None: the same frames
    whether they come from the Parquet tables or from the trial records."""
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


# ---- a run still going, or interrupted: its trial records ---------------------------------

# parsed records by folder and file name, with the (mtime, size, inode) they were read at: a
# partial report refreshed after each trial parses only the records that changed since. The
# folders read last only (a notebook that loads many runs does not keep them all)
_RECORDS: dict[Path, dict[str, tuple[tuple[int, int, int], dict[str, Any]]]] = {}
_RECORDS_KEPT = 4


def _record_files(root: Path) -> list[Path]:
    folder = root / TRIALS_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _reads_records(root: Path, manifest: dict[str, Any], records: list[Path]) -> bool:
    """Whether the run's tables are missing or older than its trial records: a run that still
    goes on, was interrupted, or is resumed (a resume keeps the tables of its earlier attempt
    until it writes new ones). A finished run always reads its tables."""
    if not records:
        return False
    tables = [root / TRIALS_FILE, root / EPOCHS_FILE]
    if not all(path.is_file() for path in tables):
        return True
    if manifest.get("finished_at"):
        return False
    try:
        written = min(path.stat().st_mtime_ns for path in tables)
        return max(path.stat().st_mtime_ns for path in records) > written
    except OSError:  # a file replaced under us: the records are being written
        return True


def _read_records(files: list[Path]) -> list[dict[str, Any]]:
    """Every trial record, each checked to be one; unchanged files come from the cache."""
    if not files:
        return []
    folder = files[0].parent.resolve()
    cached, fresh, out = _RECORDS.get(folder, {}), {}, []
    for path in files:
        try:
            info = path.stat()
            stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
            hit = cached.get(path.name)
            data = hit[1] if hit and hit[0] == stamp else json.loads(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ReportError(f"corrupt file {path}: {_one_line(exc)}") from exc
        identity = data.get("identity") if isinstance(data, dict) else None
        if not (
            isinstance(identity, dict)
            and isinstance(identity.get("trial_id"), str)
            and isinstance(data.get("rows"), dict)
            and all(isinstance(rows, list) for rows in data["rows"].values())
        ):
            raise ReportError(f"corrupt file {path}: not a trial record (identity, rows)")
        fresh[path.name] = (stamp, data)
        out.append(data)
    _RECORDS.pop(folder, None)  # re-inserted last: the most recently read
    _RECORDS[folder] = fresh
    while len(_RECORDS) > _RECORDS_KEPT:
        del _RECORDS[next(iter(_RECORDS))]
    return out


def _row_order(key: str) -> tuple[int, int]:
    """Train and val rows by epoch, then the test rows (``harness.results``' row keys)."""
    return (1, 0) if key == "test" else (0, int(key.partition(":")[2] or 0))


def _record_tables(
    records: list[dict[str, Any]], folder: Path
) -> tuple[pd.DataFrame, pd.DataFrame, Partial | None]:
    """The trials and epochs tables of the trials that finished, as ``harness.results.
    write_tables`` builds them from the same records, and what is still missing. A single-task
    reference (``stl``) of a backbone and seed waits until every finding's network finished."""
    missing = [r["identity"]["trial_id"] for r in records if r.get("status") not in FINISHED]
    waiting = {
        (r["identity"].get("backbone"), r["identity"].get("seed"))
        for r in records
        if r.get("status") not in FINISHED and r["identity"].get("single_task")
    }
    trial_rows: list[dict[str, Any]] = []
    epoch_rows: list[dict[str, Any]] = []
    for record in records:
        identity = {k: v for k, v in record["identity"].items() if k != "tuned_from"}
        held = identity.get("single_task") and (
            (identity.get("backbone"), identity.get("seed")) in waiting
        )
        if record.get("status") not in FINISHED or held:
            continue
        summary = record.get("summary") if isinstance(record.get("summary"), dict) else {}
        attempts = [a for a in record.get("attempts") or [] if isinstance(a, dict)]
        ran = [a for a in attempts if a.get("hostname")]
        where = {k: ran[-1].get(k) for k in ("hostname", "node_ip", "node_id")} if ran else {}
        rows = record["rows"]
        trial_rows.append(
            {
                **where,
                **summary,
                "attempts": len(attempts),
                **identity,
                "status": record.get("status"),
                "error": record.get("error"),
                "epochs_completed": summary.get(
                    "epochs_completed", len([k for k in rows if k.startswith("epoch:")])
                ),
            }
        )
        for key in sorted(rows, key=_row_order):
            epoch_rows += [{**row, **identity} for row in rows[key] if isinstance(row, dict)]
    trials = pd.DataFrame(trial_rows)
    epochs = pd.DataFrame(epoch_rows)
    for frame, columns in ((trials, TRIAL_COLUMNS), (epochs, EPOCH_COLUMNS)):
        for column in columns:  # none finished yet, or none reported an epoch
            if column not in frame.columns:
                frame[column] = pd.Series(dtype="float64" if column != "seed" else "int64")
    trials = _normalise(
        trials, folder, TRIAL_COLUMNS, TRIAL_FLOAT_COLUMNS, OPTIONAL_TRIAL_FLOAT_COLUMNS
    )
    epochs = _normalise(
        epochs, folder, EPOCH_COLUMNS, EPOCH_FLOAT_COLUMNS, OPTIONAL_EPOCH_FLOAT_COLUMNS
    )
    finished = len(records) - len(missing)
    partial = Partial(finished, len(records), tuple(missing)) if missing else None
    return trials, epochs, partial


def _run_columns(frame: pd.DataFrame, name: str, config: dict[str, Any]) -> pd.DataFrame:
    """``run``, ``dataset`` and ``image_size`` in every row: as written, else (an older run, or
    the trial records) the run's name and the config's data set and size, a swept size from
    its column."""
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    size = frame["data.image_size"] if "data.image_size" in frame.columns else None
    defaults = {"run": name, "dataset": data.get("dataset"), "image_size": data.get("image_size")}
    for column, default in defaults.items():
        value = size if column == "image_size" and size is not None else default
        if column not in frame.columns:
            frame[column] = value
        elif frame[column].isna().any():
            frame[column] = frame[column].where(frame[column].notna(), value)
    frame["image_size"] = pd.to_numeric(frame["image_size"], errors="coerce")
    for column in ("run", "dataset"):
        frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def load_run(run_dir: str | os.PathLike[str]) -> RunResults:
    """Read a run directory; raise :class:`ReportError` naming the file when one is unusable.
    A run whose tables are not written yet (:func:`_reads_records`) is read from its trial
    records: its finished trials, with ``partial`` naming the others."""
    root = Path(run_dir)
    if not root.is_dir():
        raise ReportError(f"run directory not found: {root}")
    manifest = _read_manifest(root / MANIFEST_FILE)
    config = _read_config(root / CONFIG_FILE)
    partial = None
    files = _record_files(root)
    if _reads_records(root, manifest, files):
        trials, epochs, partial = _record_tables(_read_records(files), root / TRIALS_DIR)
    else:
        trials = _read_table(
            root / TRIALS_FILE, TRIAL_COLUMNS, TRIAL_FLOAT_COLUMNS, OPTIONAL_TRIAL_FLOAT_COLUMNS
        )
        epochs = _read_table(
            root / EPOCHS_FILE, EPOCH_COLUMNS, EPOCH_FLOAT_COLUMNS, OPTIONAL_EPOCH_FLOAT_COLUMNS
        )
    name = str(manifest.get("name") or root.name)
    trials = _run_columns(trials, name, config)
    epochs = _run_columns(epochs, name, config)
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
        partial=partial,
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
