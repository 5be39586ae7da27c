"""Pre-flight: what an experiment file needs beyond its schema, checked before Ray starts.

``harness validate`` and ``harness run`` both call :func:`preflight` after the schema
(``harness.config``) has passed. It opens what the trials would open, cheaply, and refuses in
one line per problem (a :class:`~harness.config.ConfigError`, so exit 2 like any other bad
experiment file):

* the data source: a ChestMNIST ``.npz`` (or folder), a prepared folder (its manifest readable,
  its files matching it, its data set the one named), the ``data.tasks`` it holds; a prepared
  folder in object storage (``data.prepared: s3://...``): its manifest only (a finished
  prepare of the named data set with those tasks), checked also for a run on a cluster;
* the split sizes read from that source (a manifest, an ``.npz`` header, the synthetic
  fractions): a training split smaller than one batch (``train.batch_size`` x
  ``workers_per_trial``, the last incomplete batch is dropped), an empty validation split (the
  best epoch is picked on the val metrics) and an empty test split are refused;
* ``train.pretrained``: a file that ``torch.load(weights_only=True)`` reads as a mapping of
  tensors and that loads into every backbone of the grid as the training loop loads it (tried
  on the meta device: no memory, no time);
* ``output.storage``: a URI or path that ``pyarrow.fs.FileSystem.from_uri`` opens and whose
  metadata it can read (credentials, endpoint, bucket), also for a run on a cluster (the
  driver reads and prunes the checkpoint store too);
* files named by method hyperparameters (``config.PATH_HYPERPARAMETERS``, e.g. DeepChest's
  ``initial_weights``): present and accepted by the method;
* ``tracking``: the MLflow or W&B client installed (the ``mlflow`` / ``wandb`` extras), and an
  MLflow store that the installed MLflow opens (a SQL store needs SQLAlchemy; MLflow 3 refuses
  a file store unless ``MLFLOW_ALLOW_FILE_STORE=true``).

A run that joins a Ray cluster (an address given, ``cluster.address`` or ``RAY_ADDRESS``) reads
its paths on the cluster's nodes, not here: those checks are skipped and named in
:attr:`Preflight.unchecked`, which ``harness validate`` prints.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.config import PATH_HYPERPARAMETERS, PREPARED_DATASETS, ConfigError, ExperimentConfig
from harness.storage import is_remote, remote_source
from reports.format import plural

__all__ = ["Preflight", "cluster_address", "preflight", "pretrained_problems"]

CLUSTER_SIDE = "cluster-side path"


@dataclass(frozen=True)
class Preflight:
    """What pre-flight found: ``sizes`` the images per split (None when the data source is on
    the cluster), ``unchecked`` the keys it could not check here, each with the reason."""

    sizes: dict[str, int] | None
    unchecked: list[str] = field(default_factory=list)


def cluster_address(cfg: ExperimentConfig, address: str | None = None) -> str | None:
    """The Ray cluster a run joins: ``address`` (``--address``), else ``cluster.address``, else
    ``RAY_ADDRESS``; None for a local Ray (also for ``local``, Ray's name for one)."""
    found = address or cfg.cluster.address or os.environ.get("RAY_ADDRESS") or None
    return None if found == "local" else found


def preflight(cfg: ExperimentConfig, local: bool = True) -> Preflight:
    """Check what the trials will open (module docstring). ``local``: the run starts its own
    Ray here, so paths are this machine's; otherwise the path checks are skipped and listed.
    Raises ``ConfigError`` with one line per problem."""
    lines: list[str] = []
    unchecked: list[str] = []
    sizes = _data(cfg, local, lines, unchecked)
    if cfg.train.pretrained:
        if local:
            lines += _pretrained(cfg)
        else:
            unchecked.append(f"train.pretrained ({CLUSTER_SIDE})")
    lines += _hyperparameter_files(cfg, local, unchecked)
    lines += _storage(cfg)
    lines += tracking_problems(cfg)
    if lines:
        raise ConfigError(lines)
    return Preflight(sizes, unchecked)


# ---- data --------------------------------------------------------------------------------


def _data(
    cfg: ExperimentConfig, local: bool, lines: list[str], unchecked: list[str]
) -> dict[str, int] | None:
    from deepchest.data import DatasetError, check_source

    data = cfg.data
    key = "data.prepared" if data.dataset in PREPARED_DATASETS else "data.root"
    remote = bool(data.prepared) and is_remote(data.prepared)
    if data.dataset != "synthetic" and not local and not remote:
        unchecked.append(f"{key} ({CLUSTER_SIDE}; so are its split sizes)")
        return None
    try:
        if remote:  # object storage: its manifest says it all, without a download
            sizes = remote_source(data.model_dump(mode="json"))
        else:
            sizes = check_source(data.model_dump(mode="json"))
    except DatasetError as exc:
        lines.append(str(exc))
        return None
    if data.dataset == "synthetic":
        where = f"the synthetic data set (data.num_samples {data.num_samples})"
    else:
        where = f"{key} {data.prepared if key == 'data.prepared' else data.root}"
    workers = cfg.resources.workers_per_trial
    batch = cfg.train.batch_size * workers
    if sizes["train"] < batch:
        lines.append(
            f"train.batch_size: one batch ({cfg.train.batch_size} x "
            f"{plural(workers, 'worker')}) is larger than the training split of {where} "
            f"({sizes['train']} images)"
        )
    lines += _method_batches(cfg, sizes, batch, where)
    why = {
        "val": "the best epoch is picked on the val metrics",
        "test": "the test metrics are computed on it",
    }
    for split in ("val", "test"):
        if sizes[split] == 0:
            if data.dataset == "synthetic":
                fraction = getattr(data, f"{split}_fraction")
                lines.append(
                    f"data.{split}_fraction: {fraction} of data.num_samples {data.num_samples} "
                    f"leaves the {split} split empty; {why[split]}"
                )
            else:
                lines.append(f"{where}: the {split} split is empty; {why[split]}")
    return sizes


def _method_batches(
    cfg: ExperimentConfig, sizes: dict[str, int], batch: int, where: str
) -> list[str]:
    """What some methods draw beyond one training batch per step: two (SDMGrad, MoDo) or a
    validation batch (Auto-Lambda); the trial refuses to start without them."""
    import methods

    info = {i.name: i for i in methods.describe()}
    lines = []
    for name in cfg.grid.methods:
        method = info[cfg.weighting_method(name)[0]]
        if (
            method.batches_per_step > 1
            and batch <= sizes["train"] < batch * method.batches_per_step
        ):
            lines.append(
                f"grid.methods: {name} takes {method.batches_per_step} batches per step "
                f"({method.batches_per_step} x {batch} images), more than the training split "
                f"of {where} ({sizes['train']} images)"
            )
        if method.needs_validation_batch and 0 < sizes["val"] < batch:
            lines.append(
                f"grid.methods: {name} draws a validation batch each step ({batch} images), "
                f"more than the validation split of {where} ({sizes['val']} images)"
            )
    return lines


# ---- files the trials load ---------------------------------------------------------------


def _pretrained(cfg: ExperimentConfig) -> list[str]:
    assert isinstance(cfg.train.pretrained, str)
    return pretrained_problems(cfg.train.pretrained, cfg.grid.backbones)


def pretrained_problems(path: str, backbones: list[str]) -> list[str]:
    """Why the state dict at ``path`` would not load into each of ``backbones`` as
    ``MultiTaskNet`` loads it (the same reader, the same builder, on the meta device: no memory,
    no time), one line each naming ``train.pretrained``; empty when it loads. The training
    loop asks too, for a path only the cluster's nodes could check."""
    import torch

    from deepchest.models import BACKBONES, PretrainedWeightsError, load_pretrained_state

    if not Path(path).is_file():
        return [f"train.pretrained: {path} is not a file"]
    try:
        state = load_pretrained_state(path)
    except PretrainedWeightsError as exc:
        return [f"train.pretrained: {str(exc).splitlines()[0]}"]
    if not state:
        return [f"train.pretrained: {path}: holds no tensors"]
    meta = {key: value.to("meta") for key, value in state.items()}
    lines = []
    for backbone in backbones:
        try:
            with torch.device("meta"):
                BACKBONES[backbone](1, meta)
        except RuntimeError as exc:  # load_state_dict: missing, unexpected, mis-shaped keys
            lines.append(
                f"train.pretrained: {path} does not fit backbone {backbone!r} "
                f"({_load_problem(exc)})"
            )
    return lines


def _load_problem(exc: RuntimeError) -> str:
    """``load_state_dict``'s many-line error in a few words."""
    parts, mismatched = [], []
    for line in str(exc).splitlines()[1:]:
        line = line.strip()
        if m := re.match(r"(Missing|Unexpected) key\(s\) in state_dict: (.*)", line):
            keys = re.findall(r'"([^"]+)"', m.group(2))
            parts.append(f"{plural(len(keys), m.group(1).lower() + ' key')}, first {keys[0]!r}")
        elif m := re.match(r"size mismatch for ([^:]+):", line):
            mismatched.append(m.group(1))
    if mismatched:
        parts.append(f"{plural(len(mismatched), 'key')} of another shape, first {mismatched[0]!r}")
    return "; ".join(parts) or str(exc).strip().splitlines()[0]


def _hyperparameter_files(cfg: ExperimentConfig, local: bool, unchecked: list[str]) -> list[str]:
    """Files named by method hyperparameters: present and accepted by their method (the
    schema builds each method without them)."""
    import methods

    tasks = cfg.data.task_names()
    lines = []
    for name in cfg.method_params:
        base, hyperparameters = cfg.weighting_method(name)
        for key in PATH_HYPERPARAMETERS:
            value = hyperparameters.get(key)
            if not isinstance(value, str):
                continue
            where = f"method_params.{name}.{key}"
            if not local:
                unchecked.append(f"{where} ({CLUSTER_SIDE})")
            elif not Path(value).is_file():
                lines.append(f"{where}: {value} is not a file")
            else:
                try:
                    methods.create(base, num_tasks=len(tasks), task_names=tasks, **hyperparameters)
                except ValueError as exc:
                    lines.append(f"{where}: {str(exc).splitlines()[0]}")
    return lines


def _storage(cfg: ExperimentConfig) -> list[str]:
    """``output.storage`` opens (one line from pyarrow when it does not)."""
    if not cfg.output.storage:
        return []
    from harness.checkpoints import storage_problem

    problem = storage_problem(cfg.output.storage)
    return [problem] if problem else []


# ---- tracking ----------------------------------------------------------------------------

# the extra of this package that installs each tracker's client (pyproject.toml)
TRACKING_EXTRA = "pip install 'deepchest-harness[{}]'"
# MLflow stores behind SQLAlchemy (the mlflow extra installs it for sqlite)
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def tracking_problems(cfg: ExperimentConfig) -> list[str]:
    """``tracking``: each tracker's client is installed on this machine (the driver runs Ray's
    logger callbacks), and an MLflow store the installed MLflow will open."""
    lines = []
    mlflow, wandb = cfg.tracking.mlflow, cfg.tracking.wandb
    if mlflow is not None:
        scheme = mlflow.tracking_uri.partition(":")[0].split("+")[0].lower()
        if not _installed("mlflow"):
            lines.append(
                f"tracking.mlflow: needs the mlflow package: {TRACKING_EXTRA.format('mlflow')}"
            )
        elif scheme in _SQL_SCHEMES and not (_installed("sqlalchemy") and _installed("alembic")):
            lines.append(
                f"tracking.mlflow.tracking_uri: a {scheme} store needs sqlalchemy and alembic: "
                f"{TRACKING_EXTRA.format('mlflow')}"
            )
        elif scheme == "file" or (
            ":" not in mlflow.tracking_uri and scheme not in _MLFLOW_NAMED_STORES
        ):  # a plain path or file:// (not "databricks", a store MLflow knows by name)
            lines += _mlflow_file_store(mlflow.tracking_uri)
    if wandb is not None and not _installed("wandb"):
        lines.append(f"tracking.wandb: needs the wandb package: {TRACKING_EXTRA.format('wandb')}")
    return lines


#: tracking URIs MLflow resolves by name (Databricks workspaces), not paths
_MLFLOW_NAMED_STORES = frozenset({"databricks", "databricks-uc", "uc"})


def _mlflow_file_store(uri: str) -> list[str]:
    """MLflow 3 refuses a file store (``file://``, a plain path) unless
    ``MLFLOW_ALLOW_FILE_STORE=true``: say so now, not once the run has started."""
    import mlflow.environment_variables as mlflow_env

    allowed = getattr(mlflow_env, "MLFLOW_ALLOW_FILE_STORE", None)
    if allowed is None or allowed.get():
        return []
    return [
        f"tracking.mlflow.tracking_uri: {uri!r} is a file store, which this MLflow refuses "
        "unless MLFLOW_ALLOW_FILE_STORE=true; use a database (sqlite:///path/mlflow.db) or a "
        "tracking server (http://host:5000)"
    ]
