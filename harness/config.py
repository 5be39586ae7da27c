"""The experiment file: a strict pydantic schema, its YAML reader and one-line errors.

Unknown keys, methods, backbones, data sets and hyperparameters are refused here, before Ray
starts, with the YAML path of the bad key in the message (``grid.methods[2]: ...``).
Command-line overrides (``train.epochs=1``) are set in the file's mapping before validation
(:func:`load_config`), and an error they cause names them. Every field's description lives
here (``Field(description=...)``): :func:`json_schema` is the file's JSON Schema
(``harness schema``, ``experiments/schema.json``).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deepchest.findings import FINDINGS
from methods.base import did_you_mean
from reports.format import plural

# Every data set an experiment file may name. nih and chexpert train from a folder that
# `harness data prepare` wrote (data.prepared); chestmnist reads its .npz (data.root).
DATASETS = ("synthetic", "nih", "chexpert", "chestmnist")
PREPARED_DATASETS = ("nih", "chexpert")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# in method_params.<name>, this key makes <name> a variant of a registered method, so that one
# method can run under several settings in one grid (say mgda and mgda_ub)
VARIANT_KEY = "method"
# method hyperparameters that name a file: the file is read by pre-flight (harness.preflight)
# on the machine that can see it, not by the schema, so that a cluster-side path validates
PATH_HYPERPARAMETERS = ("initial_weights",)
# seeds go to numpy.random.seed and torch.manual_seed (and into int64 table columns): numpy
# takes 0 .. 2**32 - 1
MAX_SEED = 2**32 - 1
# Ray counts resources in steps of 0.0001 (ray._raylet.RESOURCE_UNIT_SCALING = 10000; docs:
# "the precision of the fractional resource requirement is 0.0001"), refuses a smaller non-zero
# share when the trial is scheduled and rounds finer shares down
RAY_RESOURCE_STEP = 0.0001
# deeper YAML is no experiment file (this schema nests 4 levels); PyYAML would recurse until
# RecursionError, and aliases could expand a small file into millions of values
MAX_YAML_DEPTH = 32
# the method name of the single-task references (grid.single_task): one network per task,
# trained on that task alone (equal weighting of one loss)
SINGLE_TASK = "stl"
# data keys that name the data source: pre-flight opens one per run, the report compares
# trials on one data set
UNSWEPT_DATA_KEYS = ("dataset", "root", "prepared", "cache_dir")
MAX_YAML_VALUES = 100_000


class ConfigError(ValueError):
    """A bad experiment file. ``lines`` holds one message per problem, each naming its key."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    # allow_inf_nan=False: every float key refuses nan and inf ("must be a finite number")
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


def _check_seed(seed: int) -> int:
    if seed > MAX_SEED:
        raise ValueError(
            f"{seed} is too large: a seed is an integer from 0 to {MAX_SEED} (2**32 - 1), "
            "what NumPy's and torch's seeding accept"
        )
    return seed


def _check_share(value: float, what: str) -> float:
    """A CPU or GPU share that Ray can schedule: 0, or at least its step of 0.0001."""
    if 0 < value < RAY_RESOURCE_STEP:
        raise ValueError(
            f"{value!r} is below {RAY_RESOURCE_STEP}, the smallest share Ray schedules: it "
            f"counts {what} in steps of {RAY_RESOURCE_STEP} and refuses a smaller one when the "
            "trial starts"
        )
    return value


def _no_duplicates(values: list, what: str) -> list:
    seen = set()
    for i, value in enumerate(values):
        if value in seen:
            raise ValueError(f"[{i}]: duplicate {what} {value!r}")
        seen.add(value)
    return values


class DataConfig(_Strict):
    """The data set every trial trains on."""

    dataset: Literal["synthetic", "nih", "chexpert", "chestmnist"] = Field(
        "synthetic",
        description="`synthetic`, `nih`, `chexpert` or `chestmnist` (README: Real data sets)",
    )
    root: str | None = Field(
        None,
        description="`chestmnist`: its `.npz` file or folder (required); `nih`, `chexpert`: the "
        "raw data set, for the record (training reads `data.prepared`)",
    )
    # a local path, or a URI (s3://, gs://, ...) staged once per node into cache_dir
    prepared: str | None = Field(
        None,
        description="`nih`, `chexpert`: the folder `harness data prepare` wrote (required): a "
        "local or shared path, or a URI in object storage (`s3://bucket/nih-256`, `gs://`, "
        "`abfs://`; credentials and endpoint as for `output.storage`), which each node copies "
        "once into `data.cache_dir` and checks against the manifest's sha256s before training "
        "from it",
    )
    # node-local cache of staged data sets (harness.storage); None: ~/.cache/deepchest-harness
    cache_dir: str | None = Field(
        None,
        description="node-local folder for data sets staged from object storage and for the "
        "records of verified copies in read-only folders; absolute or under `~`, resolved on "
        "each node (`null`: `$XDG_CACHE_HOME/deepchest-harness`, else "
        "`~/.cache/deepchest-harness`)",
    )
    augment: Literal["auto"] | bool = Field(
        "auto",
        description="`true`: training batches get a random resized crop (area 0.8-1), rotation "
        "(±7°), brightness and contrast (±0.1) on the training device; `false`: none; `auto`: "
        "on for the real data sets, off for `synthetic`. Evaluation never augments",
    )
    hflip: bool = Field(
        False,
        description="also flip training images left-right with p = 0.5 (off by default: the "
        "heart is on the left)",
    )
    image_size: Annotated[int, Field(ge=16, le=1024)] = Field(
        64,
        description="side of the square model input in pixels (16-1024); prepared or "
        "ChestMNIST images of another size are resized on the training device",
    )
    num_samples: Annotated[int, Field(ge=30, le=1_000_000)] = Field(
        3000, description="synthetic: number of images generated"
    )
    tasks: Literal["all"] | list[str] = Field(
        "all",
        description="`all` or a list of finding names: the 14 NIH findings (`nih`, "
        "`chestmnist`, `synthetic`, plus `noise_1..K` there) or CheXpert's 14 observations "
        "(`chexpert`)",
    )
    seed: Annotated[int, Field(ge=0)] = Field(
        0,
        description="seed of the data set (fixed across trials, so every trial sees the same "
        "images); 0 .. 2**32 - 1",
    )
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        0.15, description="synthetic: the validation split's fraction; the rest trains"
    )
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = Field(
        0.15, description="synthetic: the test split's fraction; the rest trains"
    )
    prevalence_floor: Annotated[float, Field(ge=0, le=0.5)] = Field(
        0.05,
        description="synthetic: each finding's prevalence is at least this (rare findings stay "
        "learnable in tiny runs); `0` = the real NIH prevalences",
    )
    noise_tasks: Annotated[int, Field(ge=0, le=64)] = Field(
        0,
        description="synthetic: K extra tasks whose labels are independent of the image; they "
        "hurt the real tasks under equal weighting",
    )
    label_noise: Annotated[float, Field(ge=0, lt=0.5)] = Field(
        0.05,
        description="synthetic: label noise after the image is drawn: this fraction of "
        "positives become negative, and negatives flip at the rate that keeps the prevalence",
    )

    @field_validator("seed")
    @classmethod
    def _seed(cls, seed: int) -> int:
        return _check_seed(seed)

    @field_validator("prepared")
    @classmethod
    def _prepared(cls, prepared: str | None) -> str | None:
        # a file:// URI is a local path: memory-mapped where it is, never staged
        if prepared is not None and prepared.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return unquote(urlparse(prepared).path)
        return prepared

    @field_validator("cache_dir")
    @classmethod
    def _cache_dir(cls, cache_dir: str | None) -> str | None:
        # each node resolves it, in a trial's working folder: only ~ and absolute paths agree
        if cache_dir is not None and not (cache_dir.startswith("~") or cache_dir.startswith("/")):
            raise ValueError(
                f"{cache_dir!r} is relative; give an absolute path (or one under ~), the same "
                "on every node"
            )
        return cache_dir

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, tasks: str | list[str]) -> str | list[str]:
        if isinstance(tasks, list):
            if not tasks:
                raise ValueError("must name at least one task, or be 'all'")
            _no_duplicates(tasks, "task")
        return tasks

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if self.dataset in PREPARED_DATASETS and self.prepared is None:
            raise ValueError(
                f"data.prepared: data set {self.dataset!r} trains from a prepared folder; make "
                f"it once with `harness data prepare --dataset {self.dataset} --root "
                f"{self.root or 'DIR'} --out OUT` and set data.prepared: OUT"
            )
        if self.dataset == "chestmnist" and self.root is None:
            raise ValueError(
                "data.root: data set 'chestmnist' needs the path of its .npz file (or folder)"
            )
        if self.prepared is not None and self.dataset not in PREPARED_DATASETS:
            raise ValueError(
                f"data.prepared: only {', '.join(PREPARED_DATASETS)} are prepared; data set "
                f"{self.dataset!r} is read directly"
            )
        if isinstance(self.tasks, list):
            valid = self.available_tasks()
            for i, task in enumerate(self.tasks):
                if task not in valid:
                    raise ValueError(
                        f"data.tasks[{i}]: unknown task {task!r}; available: {', '.join(valid)}"
                    )
        return self

    def available_tasks(self) -> list[str]:
        if self.dataset == "synthetic":
            return list(FINDINGS) + [f"noise_{k + 1}" for k in range(self.noise_tasks)]
        from deepchest.data.readers import TASK_NAMES

        return list(TASK_NAMES[self.dataset])

    def augments(self) -> bool:
        """``augment: auto`` augments the real data sets and leaves the synthetic one alone."""
        return self.dataset != "synthetic" if self.augment == "auto" else self.augment

    def task_names(self) -> list[str]:
        return self.available_tasks() if self.tasks == "all" else list(self.tasks)


class GridConfig(_Strict):
    """The trials: methods x seeds x backbones (x swept settings)."""

    methods: Annotated[list[str], Field(min_length=1)] = Field(
        ["equal", "deepchest"],
        description="methods to compare (`harness methods`), or variants that `method_params` "
        "defines",
    )
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = Field(
        [0, 1],
        description="trial seeds: model initialisation and data order; 0 .. 2**32 - 1 "
        "(NumPy's and torch's seeding range)",
    )
    backbones: Annotated[list[str], Field(min_length=1)] = Field(
        ["resnet18"],
        description="`simple_cnn`, `resnet18`, `resnet34`, `resnet50`, `densenet121`, "
        "`efficientnet_b0`, `mobilenet_v3_small`, `convnext_tiny`",
    )
    # dotted key (train.*, data.*, method_params.<method>.*) -> the values each trial takes,
    # crossed with methods, backbones and seeds (checked by ExperimentConfig._sweep)
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(
        {},
        description="dotted keys mapped to the values each trial takes, crossed with methods, "
        "backbones and seeds: any `train.<key>`, any `data.<key>` but the data source "
        "(`dataset`, `root`, `prepared`, `cache_dir`), or "
        "`method_params.<method>.<hyperparameter>` of a method in the grid (varies only that "
        "method's trials), e.g. `{train.lr: [1.0e-4, 1.0e-3]}`. Each value is checked as if "
        "written in its place; values are single numbers, strings or booleans",
    )
    # also train one network per task (the single-task references, shown as method "stl"):
    # backbones x seeds x tasks more trials
    single_task: bool = Field(
        False,
        description="also train the single-task references: one network per finding, on that "
        "finding alone (equal weighting of one loss), for every backbone and seed (method "
        "`stl` in the report); not combined with `grid.sweep`",
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, names: list[str], info: ValidationInfo) -> list[str]:
        import methods

        available = methods.available()
        # the variants that method_params defines (parse_config passes their names, so this
        # error comes together with any other in the file); ExperimentConfig checks them
        variants = (info.context or {}).get("variants", set())
        for i, name in enumerate(names):
            if name not in available and name not in variants:
                hint = did_you_mean(name, [*available, *variants])
                raise ValueError(
                    f"[{i}]: unknown method {name!r}{hint}; available: {', '.join(available)}"
                )
        return _no_duplicates(names, "method")

    @field_validator("backbones")
    @classmethod
    def _backbones(cls, names: list[str]) -> list[str]:
        from deepchest.backbones import BACKBONE_NAMES  # deepchest.models' names, no torch

        for i, name in enumerate(names):
            if name not in BACKBONE_NAMES:
                raise ValueError(
                    f"[{i}]: unknown backbone {name!r}{did_you_mean(name, BACKBONE_NAMES)}; "
                    f"available: {', '.join(sorted(BACKBONE_NAMES))}"
                )
        return _no_duplicates(names, "backbone")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        for i, seed in enumerate(seeds):
            try:
                _check_seed(seed)
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        return _no_duplicates(seeds, "seed")


class TrainConfig(_Strict):
    """How each trial trains."""

    epochs: Annotated[int, Field(ge=1, le=10_000)] = Field(4, description="epochs per trial")
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = Field(
        64,
        description="images per step per worker (the last incomplete batch of an epoch is dropped)",
    )
    optimizer: Literal["adam", "adamw", "sgd"] = Field(
        "adam", description="`adam`, `adamw` or `sgd`"
    )
    lr: Annotated[float, Field(gt=0, le=10)] = Field(1.0e-3, description="learning rate")
    weight_decay: Annotated[float, Field(ge=0, le=10)] = Field(
        0.0, description="weight decay (0-10)"
    )
    momentum: Annotated[float, Field(ge=0, lt=1)] = Field(0.9, description="SGD momentum")
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto",
        description="mixed precision on a GPU: `auto` (bf16 where the GPU has it, else fp16 "
        "with loss scaling), `bf16`, `fp16` (with loss scaling), `off`; always off on CPU",
    )
    pretrained: Literal[False] | str = Field(
        False,
        description="`false`, or the path of a local torchvision state dict for the backbone "
        "(3-channel first convolutions are summed to one grey channel); nothing is ever "
        "downloaded. Checked before Ray starts",
    )
    heads: Literal["method", "weighted", "own"] = Field(
        "method",
        description="gradient-level methods (and GradNorm): task heads get `w_t * grad L_t` "
        "(`weighted`) or their own loss's gradient (`own`); `method`: what each method's "
        "reference code does (`harness methods` shows it); loss-level methods ignore it",
    )
    max_failures: Annotated[int, Field(ge=0, le=1000)] = Field(
        1,
        description="retries of a trial that crashed (it continues from its last epoch "
        "checkpoint in the store, RNG states included); 0-1000",
    )


class ResourcesConfig(_Strict):
    """What each trial reserves on the Ray cluster."""

    workers_per_trial: Annotated[int, Field(ge=1, le=1024)] = Field(
        1,
        description="more than 1: the trial runs under Ray Train's `TorchTrainer` with DDP "
        "(gloo on CPU, NCCL on GPU); gradient-level methods all-reduce their Jacobian",
    )
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] = Field(
        1,
        description="CPUs reserved per worker (also torch's thread count on CPU); at least "
        "0.0001, the step in which Ray counts resources",
    )
    gpus_per_worker: Literal["auto"] | Annotated[float, Field(ge=0, le=16)] = Field(
        "auto",
        description="`auto` = 1 when the cluster has a GPU or its autoscaler can add one, else "
        "0 (trials then run on CPU); or a number: 0, a fraction of one GPU (at least 0.0001) "
        "or a whole number of GPUs",
    )
    max_concurrent_trials: Annotated[int, Field(ge=1, le=100_000)] | None = Field(
        None,
        description="cap on trials at once; by default single-worker trials start as the "
        "cluster's free resources allow and multi-worker trials as many as the cluster can hold",
    )

    @field_validator("cpus_per_worker")
    @classmethod
    def _cpus(cls, cpus: float) -> float:
        return _check_share(cpus, "CPUs")

    @field_validator("gpus_per_worker")
    @classmethod
    def _gpus(cls, gpus: float | str) -> float | str:
        if gpus == "auto":
            return gpus
        if gpus > 1 and gpus != int(gpus):
            raise ValueError(
                f"{gpus!r}: more than one GPU per worker must be a whole number (Ray shares "
                "out fractions of one GPU only)"
            )
        return _check_share(gpus, "GPUs")


class ClusterConfig(_Strict):
    """The Ray cluster the run joins."""

    address: str | None = Field(
        None, description="Ray address to join; `null` = `RAY_ADDRESS` if set, else a local Ray"
    )
    # upload the project's packages to the nodes of a cluster joined by address (Ray's
    # runtime_env py_modules), so that nodes need only its dependencies installed
    ship_code: bool = Field(
        True,
        description="joining a cluster by address: upload the project's packages to the nodes "
        "(Ray `runtime_env` `py_modules`); `false` when every node has the project installed",
    )
    # the most of each resource an autoscaler can reach ({CPU: 64, GPU: 8}), for autoscalers
    # that do not report it to Ray (`ray up`, `ray start --autoscaling-config`); what Ray
    # reports (KubeRay) takes precedence. None: the cluster's size now is all there is
    max_resources: dict[str, Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]] | None = (
        Field(
            None,
            description="the most of each resource the cluster's autoscaler can reach, e.g. "
            "`{CPU: 64, GPU: 8}`, for autoscalers that do not report it to Ray (`ray up`, "
            "`ray start --autoscaling-config`); KubeRay's own report takes precedence. `null`: "
            "what the cluster has now is all there is",
        )
    )

    @field_validator("max_resources")
    @classmethod
    def _max_resources(cls, limits: dict[str, float] | None) -> dict[str, float] | None:
        for key in limits or {}:  # Ray's names are case-sensitive: `cpu` would be ignored
            if key != key.upper() and key.upper() in ("CPU", "GPU"):
                raise ValueError(f"{key!r}: Ray calls this resource {key.upper()!r}")
        return limits


class TuningConfig(_Strict):
    """An equal tuning budget for every method (README: A fair comparison)."""

    # trials per method and study, drawn quasi-randomly (harness.tuning)
    budget: Annotated[int, Field(ge=1, le=10_000)] = Field(
        description="tuning trials per method and study (1-10,000)"
    )
    studies: Annotated[int, Field(ge=1, le=100)] = Field(
        1,
        description="independent repetitions of the search, each with its own tuning seed; "
        "each is compared on its own",
    )
    # study j's seed (its draws and its tuning trials' training seed) is seed + j
    seed: Annotated[int, Field(ge=0)] = Field(
        1000,
        description="study `j` draws its points with, and trains its tuning trials on, seed "
        "`seed + j`; must not be one of `grid.seeds`",
    )
    select: Literal["val_mean_auroc"] = Field(
        "val_mean_auroc",
        description="the selection score: mean validation AUROC at the trial's best epoch (test "
        "metrics are never read)",
    )
    # dotted train.* / data.* key -> {choice: [...]} | {uniform: [a, b]} | {log_uniform: [a, b]}
    space: dict[str, dict[str, Any]] = Field(
        {},
        description="shared search space: dotted `train.*` / `data.*` keys (as in `grid.sweep`) "
        "mapped to `{log_uniform: [a, b]}` (0 < a < b), `{uniform: [a, b]}` or "
        "`{choice: [v, ...]}`; every method gets the same points on these keys",
    )
    # method in grid.methods -> its hyperparameter -> an entry as above, or {dirichlet: alpha}
    # for fixed weighting's weights (checked by ExperimentConfig._tuning, harness.tuning)
    method_space: dict[str, dict[str, dict[str, Any]]] = Field(
        {},
        description="a method's own search space: `<method>: {<hyperparameter>: <entry>}`, e.g. "
        "`gradnorm: {alpha: {uniform: [0.5, 2.5]}}`; for fixed weighting also "
        "`fixed: {weights: {dirichlet: 1.0}}` (Xin et al. 2022's static-weight sweep)",
    )

    @field_validator("seed")
    @classmethod
    def _seed(cls, seed: int) -> int:
        return _check_seed(seed)


class OutputConfig(_Strict):
    """Where the run's files go."""

    dir: str = Field("runs", description="parent of the run directories")
    # where the trials' checkpoints go (harness.checkpoints): a local or shared path, or a URI
    # that pyarrow's FileSystem.from_uri opens (s3://, gs://, abfs://, file://); None: the run
    # directory. Tables, manifest and report always stay in the run directory.
    storage: str | None = Field(
        None,
        description="where the trials' checkpoints go: a local or shared path, or a URI that "
        "pyarrow's `FileSystem.from_uri` opens (`s3://bucket/prefix`, `gs://`, `abfs://`, "
        "`file://`); the store is `<storage>/<name>-<run id>/checkpoints/` (`null`: the run "
        "directory). Tables, manifest and report stay in the run directory",
    )


class MlflowTracking(_Strict):
    """MLflow tracking: one MLflow run per trial (Ray's ``MLflowLoggerCallback``)."""

    tracking_uri: Annotated[str, Field(min_length=1)] = Field(
        description="where MLflow keeps the runs: a tracking server (`http://host:5000`) or a "
        "local database (`sqlite:///path/mlflow.db`); MLflow 3 refuses a file store "
        "(`file://...`, `./mlruns`) unless `MLFLOW_ALLOW_FILE_STORE=true`. Needs the `mlflow` "
        "extra"
    )
    experiment: Annotated[str, Field(min_length=1)] | None = Field(
        None,
        description="the MLflow experiment (made if missing); `null`: the run's `name`",
    )


class WandbTracking(_Strict):
    """Weights & Biases tracking: one W&B run per trial (Ray's ``WandbLoggerCallback``)."""

    project: Annotated[str, Field(min_length=1)] = Field(
        description="the W&B project; the run's `name` is each trial's group. Needs the `wandb` "
        "extra"
    )
    mode: Literal["online", "offline", "disabled"] = Field(
        "online",
        description="`online` (needs `wandb login` or `WANDB_API_KEY`), `offline` (kept in "
        "`<run dir>/wandb/offline-run-*`, uploaded later with `wandb sync`) or `disabled`",
    )


class TrackingConfig(_Strict):
    """Experiment trackers the trials also log to (opt-in; Ray Tune's TensorBoard files are
    always written)."""

    mlflow: MlflowTracking | None = Field(
        None, description="log every trial to MLflow; `null`: no MLflow"
    )
    wandb: WandbTracking | None = Field(
        None, description="log every trial to Weights & Biases; `null`: no W&B"
    )


def _check_plain_value(value: Any, path: str) -> None:
    """A hyperparameter is free-form YAML: refuse what no method can use (nan, inf, integers
    beyond 64 bits, which float() cannot take)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path}: must be a finite number, not {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        raise ValueError(f"{path}: {value} is too large (beyond a 64-bit integer)")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain_value(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_plain_value(item, f"{path}[{i}]")


class ExperimentConfig(_Strict):
    """A DeepChest harness experiment file (`harness run FILE`; README: Experiment file
    reference)."""

    name: str = Field(
        description="run name; the run directory is `output.dir/name` (letters, digits, `.`, "
        "`_`, `-`)"
    )
    data: DataConfig = Field(DataConfig(), description="the data set every trial trains on")
    grid: GridConfig = Field(
        GridConfig(), description="the trials: methods x seeds x backbones (x swept settings)"
    )
    train: TrainConfig = Field(TrainConfig(), description="how each trial trains")
    method_params: dict[str, dict[str, Any]] = Field(
        {},
        description="`<method>: {<hyperparameter>: value}`: hyperparameters of a method, e.g. "
        "`deepchest: {signal: val_loss, max_weight: 2.0}` (checked against `harness methods`); "
        "or `<variant>: {method: <registered method>, ...}`: a method under settings and a name "
        "of its own, e.g. `mgda_ub: {method: mgda, level: representation}` with "
        "`grid.methods: [mgda, mgda_ub]`",
    )
    resources: ResourcesConfig = Field(
        ResourcesConfig(), description="what each trial reserves on the Ray cluster"
    )
    cluster: ClusterConfig = Field(ClusterConfig(), description="the Ray cluster the run joins")
    output: OutputConfig = Field(OutputConfig(), description="where the run's files go")
    tuning: TuningConfig | None = Field(
        None,
        description="an equal tuning budget for every method (README: A fair comparison); "
        "`null`: each method runs one configuration",
    )
    tracking: TrackingConfig = Field(
        TrackingConfig(),
        description="experiment trackers every trial also logs to: its config (method, "
        "backbone, seed, swept values, method hyperparameters) and per-epoch metrics; none by "
        "default",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a "
                "letter or digit (it names a folder)"
            )
        return name

    @model_validator(mode="after")
    def _batch_fits(self) -> ExperimentConfig:
        if self.data.dataset == "synthetic":
            from deepchest.data.synthetic import split_sizes

            d = self.data
            train = split_sizes(d.num_samples, d.val_fraction, d.test_fraction)[0]
            batch = self.train.batch_size * self.resources.workers_per_trial
            if train < batch:
                raise ValueError(
                    f"train.batch_size: one batch ({self.train.batch_size} x "
                    f"{plural(self.resources.workers_per_trial, 'worker')}) is larger than the "
                    f"synthetic training split ({train} of data.num_samples {d.num_samples})"
                )
        return self

    @model_validator(mode="after")
    def _method_params(self) -> ExperimentConfig:
        import methods

        tasks = self.data.task_names()
        available = methods.available()
        for name, params in self.method_params.items():
            base = params.get(VARIANT_KEY)
            if name in available and base is not None:
                raise ValueError(
                    f"method_params.{name}.{VARIANT_KEY}: {name!r} is a registered method; "
                    "give the variant a name of its own"
                )
            if name not in available and base is None:
                raise ValueError(
                    f"method_params.{name}: unknown method {name!r}"
                    f"{did_you_mean(name, available)}; available: "
                    f"{', '.join(available)} (or define a variant: {name}: {{{VARIANT_KEY}: "
                    "<registered method>, ...})"
                )
            if base is not None and (not isinstance(base, str) or base not in available):
                raise ValueError(
                    f"method_params.{name}.{VARIANT_KEY}: unknown method {base!r}"
                    f"{did_you_mean(base, available)}; available: {', '.join(available)}"
                )
            if not _NAME.match(name):
                raise ValueError(
                    f"method_params.{name}: a variant's name must be 1-100 letters, digits, "
                    "'.', '_' or '-' (it names the trials)"
                )
            base_name, hyperparameters = self.weighting_method(name)
            for key, value in hyperparameters.items():
                _check_plain_value(value, f"method_params.{name}.{key}")
            # a file a hyperparameter names is read by pre-flight, where it can be seen
            hyperparameters = {
                k: None if k in PATH_HYPERPARAMETERS and isinstance(v, str) else v
                for k, v in hyperparameters.items()
            }
            try:  # the constructor's checks, without building it (torch is not loaded)
                methods.check(base_name, num_tasks=len(tasks), task_names=tasks, **hyperparameters)
            except ValueError as exc:
                raise ValueError(f"method_params.{name}: {exc}") from None
        return self

    @model_validator(mode="after")
    def _single_task(self) -> ExperimentConfig:
        if not self.grid.single_task:
            return self
        if SINGLE_TASK in self.grid.methods:
            raise ValueError(
                f"grid.methods: {SINGLE_TASK!r} names the single-task references of "
                "grid.single_task; give the method another name"
            )
        if self.grid.sweep:
            raise ValueError(
                "grid.single_task: not combined with grid.sweep (the references would need "
                "every setting too); train them in a run of their own"
            )
        return self

    @model_validator(mode="after")
    def _tuning(self) -> ExperimentConfig:
        from harness.tuning import bounds, is_dirichlet, space_problem, study_seed

        t = self.tuning
        if t is None:
            return self
        if self.grid.single_task:
            raise ValueError(
                "tuning: not combined with grid.single_task; train the references in a run of "
                "their own"
            )
        if len(self.grid.seeds) < 3:
            raise ValueError(
                f"grid.seeds: tuning needs at least 3 final seeds (has {len(self.grid.seeds)}); "
                "selection never sees them, and fewer cannot show a difference"
            )
        tuning_seeds = {study_seed(t.seed, j) for j in range(t.studies)}
        if clash := sorted(tuning_seeds & set(self.grid.seeds)):
            seeds = (
                f"study seed {t.seed} is"
                if t.studies == 1
                else f"study seeds {t.seed} .. {t.seed + t.studies - 1} include"
            )
            raise ValueError(
                f"tuning.seed: {seeds} final seed {clash[0]} of grid.seeds; the final seeds "
                "must stay out of tuning"
            )
        for key in t.space:
            if not key.startswith(("train.", "data.")):
                raise ValueError(
                    f"tuning.space.{key}: shared keys are train.<key> or data.<key>; a method's "
                    "own go under tuning.method_space.<method>"
                )
        entries = {f"tuning.space.{k}": (k, e) for k, e in t.space.items()}
        for method, space in t.method_space.items():
            if method not in self.grid.methods:
                raise ValueError(
                    f"tuning.method_space.{method}: {method!r} is not among grid.methods "
                    f"({', '.join(self.grid.methods)})"
                )
            for name, entry in space.items():
                key = f"method_params.{method}.{name}"
                entries[f"tuning.method_space.{method}.{name}"] = (key, entry)
        if not entries:
            raise ValueError("tuning: space and method_space are both empty; nothing to tune")
        for where, (key, entry) in entries.items():
            problem = self._sweep_key_problem(key) or space_problem(entry)
            if problem:
                raise ValueError(f"{where}: {problem}")
            if key in self.grid.sweep:
                raise ValueError(f"{where}: {key} is also in grid.sweep; tune it or sweep it")
            vector = is_dirichlet(entry)
            if vector and not self._is_fixed_weights(key):
                raise ValueError(
                    f"{where}: dirichlet draws fixed weighting's weights only "
                    "(tuning.method_space.<fixed method>.weights)"
                )
            for value in bounds(entry, len(self.data.task_names())):
                if problem := self._value_problem(key, value, vector=vector):
                    raise ValueError(_with_value(where, value, problem))
        return self

    def _is_fixed_weights(self, key: str) -> bool:
        """``key`` is ``method_params.<m>.weights`` of a grid method that is ``fixed``."""
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "method_params" or parts[2] != "weights":
            return False
        return parts[1] in self.grid.methods and self.weighting_method(parts[1])[0] == "fixed"

    def _value_problem(self, key: str, value: Any, vector: bool = False) -> str | None:
        """Why ``value`` cannot be set at the dotted ``key`` (a sweep's or a tuning space's),
        or None: one scalar (a number, a string, a boolean), or with ``vector`` a list (a
        Dirichlet draw of weights), that the schema accepts there."""
        if not vector and not isinstance(value, bool | int | float | str):
            return "must be a number, a string or a boolean (one value per trial)"
        try:
            self.with_values({key: value})
        except ConfigError as exc:
            return exc.lines[0].partition(": ")[2] or exc.lines[0]
        return None

    def tuning_spaces(self, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(shared keys, ``method``'s own keys as ``method_params.<m>.<k>``) to draw from."""
        t = self.tuning
        if t is None:
            return {}, {}
        own = {f"method_params.{method}.{k}": e for k, e in t.method_space.get(method, {}).items()}
        return dict(t.space), own

    @model_validator(mode="after")
    def _sweep(self) -> ExperimentConfig:
        for key, values in self.grid.sweep.items():
            where = f"grid.sweep.{key}"
            problem = self._sweep_key_problem(key)
            if problem:
                raise ValueError(f"{where}: {problem}")
            labels: dict[str, int] = {}
            for i, value in enumerate(values):
                _check_plain_value(value, f"{where}[{i}]")
                label = sweep_label(value)
                if label in labels:
                    raise ValueError(
                        f"{where}[{i}]: {value!r} repeats [{labels[label]}] (both name the "
                        f"trials {key}={label})"
                    )
                labels[label] = i
                if problem := self._value_problem(key, value):
                    raise ValueError(_with_value(f"{where}[{i}]", value, problem))
        return self

    def _sweep_key_problem(self, key: str) -> str | None:
        """Why ``key`` cannot be swept, or None."""
        section, _, rest = key.partition(".")
        if section in ("train", "data") and rest:
            model = TrainConfig if section == "train" else DataConfig
            if rest not in model.model_fields:
                hint = did_you_mean(rest, list(model.model_fields))
                return f"{section} has no key {rest!r}{hint}"
            if section == "data" and rest in UNSWEPT_DATA_KEYS:
                return "the data source is one per run (make one run per data set)"
            return None
        if section == "method_params":
            method, _, name = rest.partition(".")
            if not name:
                return "name a hyperparameter: method_params.<method>.<hyperparameter>"
            if method not in self.grid.methods:
                return f"{method!r} is not among grid.methods ({', '.join(self.grid.methods)})"
            import methods

            base, _ = self.weighting_method(method)
            known = next(m.hyperparameters for m in methods.describe() if m.name == base)
            if name not in known:
                listed = ", ".join(known) or "none"
                return f"{base} has no hyperparameter {name!r} (it has: {listed})"
            return None
        return "sweep keys are train.<key>, data.<key> or method_params.<method>.<key>"

    def with_values(self, values: dict[str, Any]) -> ExperimentConfig:
        """This experiment with dotted keys set (``{"train.lr": 3e-4}``), validated again,
        without its sweep and tuning (one trial's settings). Raises ``ConfigError`` for a
        value the schema refuses."""
        raw = self.model_dump(mode="python")
        raw["grid"]["sweep"], raw["tuning"] = {}, None  # one trial's settings
        for key, value in values.items():
            *path, last = key.split(".")
            node = raw
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
        return parse_config(raw)

    def weighting_method(self, name: str) -> tuple[str, dict[str, Any]]:
        """The registered method and hyperparameters behind a grid name: a variant's
        ``method`` and the rest of its entry, or the method itself and its own entry."""
        params = dict(self.method_params.get(name, {}))
        return params.pop(VARIANT_KEY, name), params

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def sweep_points(self, method: str) -> list[dict[str, Any]]:
        """The swept settings a trial of ``method`` takes: every combination of the
        ``grid.sweep`` values, in the file's key order (``[{}]`` without a sweep). A
        ``method_params.<m>.*`` key varies only the trials of ``<m>``."""
        keys = [
            k
            for k in self.grid.sweep
            if not k.startswith("method_params.") or k.split(".")[1] == method
        ]
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(self.grid.sweep[k] for k in keys))
        ]

    @property
    def warnings(self) -> list[str]:
        """Settings that are valid but likely not what the user means, one line each: settings
        of a registered method that the grid does not run (an override of the wrong name, a
        method left out of the grid; a variant's entry is a definition, unused when the grid
        leaves it out), and a method that reweights only at epoch ends given too few epochs
        to ever do so."""
        import methods

        lines = [
            f"method_params.{name}: {name} is not in grid.methods, so these settings are unused"
            for name, params in self.method_params.items()
            if name not in self.grid.methods and VARIANT_KEY not in params
        ]
        info = {m.name: m for m in methods.describe()}
        if self.tuning is not None and "train.epochs" in self.tuning.space:
            return lines  # the tuned epochs are drawn per trial
        swept = self.grid.sweep.get("train.epochs")
        epochs = min(swept) if swept else self.train.epochs  # each arm on its own
        setting = f"train.epochs: {epochs}" + (" (a swept setting)" if swept else "")
        for name in self.grid.methods:
            base, params = self.weighting_method(name)
            first = info[base].first_reweighted_epoch if base in info else 1
            if epochs < first:
                start = "its initial weights" if params.get("initial_weights") else "equal weights"
                lines.append(
                    f"{name} first reweights in epoch {first} (it updates at epoch ends); with "
                    f"{setting} it trains on {start} throughout: give train.epochs >= {first} "
                    "to compare it"
                )
        return lines

    @property
    def trial_count(self) -> int:
        g = self.grid
        per_method = len(g.seeds) * len(g.backbones)
        single = len(self.data.task_names()) if g.single_task else 0
        count = sum(per_method * len(self.sweep_points(m)) for m in g.methods)
        if self.tuning is not None:  # each point of the grid: budget x studies, then its finals
            count *= self.tuning.studies
            count += self.tuning.budget * (count // len(g.seeds))
        return count + per_method * single


SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The experiment file's JSON Schema (draft 2020-12), from the pydantic models: every key
    with its description and default, unknown keys refused. Editors check and complete a file
    with it; the harness's own checks (methods, backbones, data, combinations) go further."""
    schema = ExperimentConfig.model_json_schema()
    schema.pop("title", None)  # the class name
    return {"$schema": SCHEMA_DIALECT, "title": "DeepChest harness experiment file", **schema}


def json_schema_text() -> str:
    """:func:`json_schema` as ``harness schema`` prints it and ``experiments/schema.json``
    holds it."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def sweep_label(value: Any) -> str:
    """How a swept value appears in trial ids (``train.lr=0.0003``): short, file-name safe."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = repr(value)  # shortest round-trip form: 0.0003, 1e-05; distinct floats differ
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and refuses
    nesting deeper than ``MAX_YAML_DEPTH`` while composing (before Python's recursion limit)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_YAML_DEPTH} levels",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
    ),
    list("-+0123456789."),
)


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse a key given twice in one mapping (YAML would keep the last value silently) and a
    document whose aliases expand to more than ``MAX_YAML_VALUES`` values."""
    seen = 0
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            mark = node.start_mark
            raise ConfigError(
                [
                    f"{source}:{mark.line + 1}:{mark.column + 1}: expands to more than "
                    f"{MAX_YAML_VALUES} values (aliases?); not an experiment file"
                ]
            )
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Node] = {}
            for key, value in node.value:
                if key.tag == "tag:yaml.org,2002:merge":
                    stack.append((value, path))
                    continue
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                here = f"{path}.{name}" if path else str(name)
                if isinstance(key, yaml.ScalarNode) and (key.tag, name) in first:
                    mark, before = key.start_mark, first[(key.tag, name)].start_mark
                    raise ConfigError(
                        [
                            f"{here}: duplicate key ({source}:{mark.line + 1}:{mark.column + 1}; "
                            f"first at {before.line + 1}:{before.column + 1}); give each key once"
                        ]
                    )
                first[(key.tag, name)] = key
                stack.append((value, here))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))


def _read_yaml(text: str, source: str) -> Any:
    loader = _YamlLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(
            ("function-after", "function-before", "literal[", "list[", "int", "str", "constrained-")
        ):
            continue  # pydantic's names for union branches and validators, not keys
        else:
            path += f".{part}" if path else str(part)
    return path


# keys of earlier versions, with why they went (an old config then says what to do)
REMOVED_KEYS: dict[tuple[str, ...], str] = {
    ("train", "loader_workers"): "removed: images come from the prepared memory-mapped array, "
    "gathered in the training process; delete the key",
}


def _known_keys(loc: tuple) -> list[str]:
    """The keys the schema allows beside the one at ``loc`` (for "did you mean")."""
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
        # an optional section (tuning: TuningConfig | None): its model
        model = next((a for a in typing.get_args(model) if hasattr(a, "model_fields")), model)
    return list(getattr(model, "model_fields", {}))


def _message(error: dict) -> str:
    msg = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "extra_forbidden":
        loc = tuple(error["loc"])
        if loc in REMOVED_KEYS:
            return f"unknown key ({REMOVED_KEYS[loc]})"
        return f"unknown key{did_you_mean(str(loc[-1]), _known_keys(loc))}"
    if error["type"] == "finite_number":
        return f"must be a finite number, not {error['input']!r}"
    if error["type"] == "missing":  # pydantic: "Field required"
        return "missing (required, no default)"
    if error["type"] == "int_type" and isinstance(error.get("input"), float):
        return f"must be a whole number, not {error['input']!r}"
    if error["type"] in ("too_short", "too_long"):  # "List should have at least 1 item ..."
        return re.sub(r"^\w+ should have (.*) after validation", r"must have \1", msg)
    return _SCHEMA_WORDS.sub("must be ", msg)


_SCHEMA_WORDS = re.compile(r"^Input should be ")  # pydantic's wording of a refused value


def _given(error: dict) -> str:
    """``, not 'abc'``: the value a schema check refused (:func:`_shown`), added to pydantic's
    own messages only (our validators' messages say what was wrong themselves)."""
    named = error["type"] == "finite_number" or (
        error["type"] == "int_type" and isinstance(error.get("input"), float)
    )  # _message names the value already
    if named or not _SCHEMA_WORDS.match(error["msg"]):
        return ""
    return f", not {_shown(error.get('input'))}"


def _shown(value: Any) -> str:
    """A refused value as an error shows it: its repr cut to 60 characters, or ``a list``."""
    if isinstance(value, list | dict):
        return f"a {type(value).__name__}"
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _with_value(where: str, value: Any, problem: str) -> str:
    """``where: problem, not <value>``, naming ``value`` unless the problem already does."""
    if _shown(value) in problem:
        return f"{where}: {problem}"
    return f"{where}: {problem}, not {_shown(value)}"


def _union(messages: list[str]) -> str:
    """One message for the branches of a union (`gpus_per_worker: auto | number`)."""
    parts = []
    for msg in messages:
        for prefix in ("Input should be ", "must be "):
            msg = msg.removeprefix(prefix)
        parts.append(msg)
    return "must be " + " or ".join(dict.fromkeys(parts))


def _format_errors(exc: ValidationError) -> list[str]:
    # a union (`tasks: all | [names]`) reports one error per branch: one line per key
    by_line: dict[str, list[str]] = {}
    given: dict[str, str] = {}  # the refused value, once per line
    for error in exc.errors():
        path, msg = _key_path(error["loc"]), _message(error)
        given.setdefault(f"{path}: ", _given(error))
        # our validators already name the key (e.g. "data.tasks[2]: ..." or "[2]: ...")
        if msg.startswith("["):
            by_line.setdefault(f"{path}{msg}", [])
        elif re.match(r"^[a-z_]+(\.[a-z_]+)+(\[\d+\])?: ", msg) or not path:
            by_line.setdefault(msg, [])
        else:
            by_line.setdefault(f"{path}: ", []).append(msg)
    return [
        line + (msgs[0] if len(msgs) == 1 else _union(msgs)) + given.get(line, "") if msgs else line
        for line, msgs in by_line.items()
    ]


def parse_config(raw: Any, source: str = "config") -> ExperimentConfig:
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping of keys, not {raw!r}"])
    try:
        params = raw.get("method_params")
        variants = {
            name
            for name, entry in (params.items() if isinstance(params, dict) else ())
            if isinstance(entry, dict) and VARIANT_KEY in entry
        }
        return ExperimentConfig.model_validate(raw, context={"variants": variants})
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None


# mappings whose keys are dotted themselves: in an override, all that follows is one key
# (grid.sweep.train.lr=[1e-4,1e-3] sets the sweep's key "train.lr")
DOTTED_KEY_MAPPINGS = ("grid.sweep", "tuning.space")


@dataclass(frozen=True)
class Override:
    """One ``key.path=value`` of the command line: ``text`` as given, ``path`` its keys,
    ``value`` read as YAML (by the harness's reader: ``1e-3`` is a float)."""

    text: str
    path: tuple[str, ...]
    value: Any

    @property
    def key(self) -> str:
        return ".".join(self.path)


def parse_override(text: str) -> Override:
    """``train.epochs=1`` -> ``Override(path=("train", "epochs"), value=1)``. Raises
    ``ConfigError`` (one line naming the override) for text without ``=``, an empty key or
    part of a key, or a value that is not YAML."""
    key, eq, value = text.partition("=")
    if not eq:
        raise ConfigError([f"override {text!r}: no '=': {_OVERRIDE_USAGE}"])
    path = _override_path(key.strip(), text)
    try:
        parsed = _read_yaml(value, "value")
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"override {text}: the value is not valid YAML ({problem})"]) from None
    except ConfigError as exc:
        raise ConfigError([f"override {text}: {exc.lines[0]}"]) from None
    return Override(text, path, parsed)


_OVERRIDE_USAGE = "give KEY=VALUE with a dotted key, e.g. train.epochs=1 or grid.seeds=[0,1]"


def _override_path(key: str, text: str) -> tuple[str, ...]:
    """The keys of a dotted ``key`` (of the override ``text``)."""
    if not key:
        raise ConfigError([f"override {text!r}: the key is empty: {_OVERRIDE_USAGE}"])
    parts = key.split(".")
    for mapping in DOTTED_KEY_MAPPINGS:
        depth = mapping.count(".") + 1
        if parts[:depth] == mapping.split(".") and len(parts) > depth + 1:
            parts = [*parts[:depth], ".".join(parts[depth:])]
    if any(not part for part in parts):
        raise ConfigError([f"override {text!r}: {key!r} has an empty part: {_OVERRIDE_USAGE}"])
    return tuple(parts)


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any]) -> list[Override]:
    """Command-line texts, or (from Python) a mapping of dotted keys to values."""
    if isinstance(overrides, Mapping):
        return [
            Override(f"{key}={value}", _override_path(key, f"{key}={value}"), value)
            for key, value in overrides.items()
        ]
    return [parse_override(text) for text in overrides]


def apply_overrides(raw: dict[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """A copy of the raw experiment mapping with each override set in turn (a later one wins),
    missing mappings on the way created (``method_params.upgrad.update_every=10``)."""
    raw = copy.deepcopy(raw)  # YAML aliases share objects: set each place on its own
    for override in overrides:
        node = raw
        for i, part in enumerate(override.path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(override.path[: i + 1])
                whole = f"; give it whole ({where}=[...])" if isinstance(child, list) else ""
                raise ConfigError(
                    [f"override {override.text}: {where} is {_shown(child)}, not a mapping{whole}"]
                )
            node = child
        node[override.path[-1]] = override.value
    return raw


def _override_of(line: str, overrides: Sequence[Override]) -> Override | None:
    """The override an error line is about: the last one whose key is the line's key, inside
    it or around it (``method_params.upgrad`` for ``method_params.upgrad.update_evry``)."""
    path = re.sub(r"\[\d+\]", "", line.partition(": ")[0])
    for override in reversed(overrides):
        key = override.key
        if path == key or path.startswith(key + ".") or key.startswith(path + "."):
            return override
    return None


def load_config(
    path: str | Path,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    name: str | None = None,
) -> ExperimentConfig:
    """Read and validate an experiment file. ``overrides`` are ``key.path=value`` strings as on
    the command line (or a mapping ``{"train.epochs": 1}``), applied in turn to the file's
    mapping before validation; ``name`` (``--name``) then replaces ``name``. An error an
    override causes names it: ``override train.epochs=0: train.epochs: must be greater than or
    equal to 1, not 0``."""
    parsed = parse_overrides(overrides)
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"{path}: no such experiment file"])
    try:
        raw = _read_yaml(path.read_text(), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{where}: not valid YAML ({problem})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not a text file"]) from None
    if raw is None:
        raise ConfigError([f"{path}: the file is empty"])
    if not isinstance(raw, dict):
        return parse_config(raw, str(path))
    named = {"name": name} if name is not None else {}  # --name: after the overrides
    given = {**apply_overrides(raw, parsed), **named}
    try:
        return parse_config(given, str(path))
    except ConfigError as exc:
        if not parsed:
            raise
        raise ConfigError(_name_overrides(exc.lines, {**raw, **named}, parsed, str(path))) from None


def _name_overrides(
    lines: list[str], raw: dict[str, Any], overrides: Sequence[Override], source: str
) -> list[str]:
    """Each error line with the override it is about (``override train.epochs=0: ...``); a
    line about another key that the file alone does not give (``data.dataset=nih`` wants
    ``data.prepared``) with every override (``with overrides ...: ...``)."""
    own: list[str] | None = None  # the file's own errors, found only when needed
    named = []
    for line in lines:
        override = _override_of(line, overrides)
        if override is not None:
            named.append(f"override {override.text}: {line}")
            continue
        if own is None:
            try:
                parse_config(raw, source)
                own = []
            except ConfigError as exc:
                own = exc.lines
        if line in own:
            named.append(line)
        else:
            given = " ".join(o.text for o in overrides)
            # "override" or "overrides" (plural() would put the count in front)
            label = plural(len(overrides), "override").split(" ", 1)[1]
            named.append(f"with {label} {given}: {line}")
    return named
