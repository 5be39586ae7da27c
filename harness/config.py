"""The experiment file: a strict pydantic schema, its YAML reader and one-line errors.

Unknown keys, methods, backbones, data sets and hyperparameters are refused here, before Ray
starts, with the YAML path of the bad key in the message (``grid.methods[2]: ...``).
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
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
    dataset: Literal["synthetic", "nih", "chexpert", "chestmnist"] = "synthetic"
    root: str | None = None
    # a local path, or a URI (s3://, gs://, ...) staged once per node into cache_dir
    prepared: str | None = None
    # node-local cache of staged data sets (harness.storage); None: ~/.cache/deepchest-harness
    cache_dir: str | None = None
    augment: Literal["auto"] | bool = "auto"
    hflip: bool = False
    image_size: Annotated[int, Field(ge=16, le=1024)] = 64
    num_samples: Annotated[int, Field(ge=30, le=1_000_000)] = 3000
    tasks: Literal["all"] | list[str] = "all"
    seed: Annotated[int, Field(ge=0)] = 0
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.15
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.15
    prevalence_floor: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    noise_tasks: Annotated[int, Field(ge=0, le=64)] = 0
    label_noise: Annotated[float, Field(ge=0, lt=0.5)] = 0.05

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
    methods: Annotated[list[str], Field(min_length=1)] = ["equal", "deepchest"]
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0, 1]
    backbones: Annotated[list[str], Field(min_length=1)] = ["resnet18"]
    # dotted key (train.*, data.*, method_params.<method>.*) -> the values each trial takes,
    # crossed with methods, backbones and seeds (checked by ExperimentConfig._sweep)
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = {}
    # also train one network per task (the single-task references, shown as method "stl"):
    # backbones x seeds x tasks more trials
    single_task: bool = False

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
                raise ValueError(
                    f"[{i}]: unknown method {name!r}; available: {', '.join(available)}"
                )
        return _no_duplicates(names, "method")

    @field_validator("backbones")
    @classmethod
    def _backbones(cls, names: list[str]) -> list[str]:
        from deepchest.models import BACKBONES

        for i, name in enumerate(names):
            if name not in BACKBONES:
                raise ValueError(
                    f"[{i}]: unknown backbone {name!r}; available: {', '.join(sorted(BACKBONES))}"
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
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 4
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0, le=10)] = 1.0e-3
    weight_decay: Annotated[float, Field(ge=0, le=10)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    pretrained: Literal[False] | str = False
    heads: Literal["method", "weighted", "own"] = "method"
    max_failures: Annotated[int, Field(ge=0, le=1000)] = 1


class ResourcesConfig(_Strict):
    workers_per_trial: Annotated[int, Field(ge=1, le=1024)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] = 1
    gpus_per_worker: Literal["auto"] | Annotated[float, Field(ge=0, le=16)] = "auto"
    max_concurrent_trials: Annotated[int, Field(ge=1, le=100_000)] | None = None

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
    address: str | None = None
    # upload the project's packages to the nodes of a cluster joined by address (Ray's
    # runtime_env py_modules), so that nodes need only its dependencies installed
    ship_code: bool = True
    # the most of each resource an autoscaler can reach ({CPU: 64, GPU: 8}), for autoscalers
    # that do not report it to Ray (`ray up`, `ray start --autoscaling-config`); what Ray
    # reports (KubeRay) takes precedence. None: the cluster's size now is all there is
    max_resources: dict[str, Annotated[float, Field(gt=0, le=1e9, allow_inf_nan=False)]] | None = (
        None
    )

    @field_validator("max_resources")
    @classmethod
    def _max_resources(cls, limits: dict[str, float] | None) -> dict[str, float] | None:
        for key in limits or {}:  # Ray's names are case-sensitive: `cpu` would be ignored
            if key != key.upper() and key.upper() in ("CPU", "GPU"):
                raise ValueError(f"{key!r}: Ray calls this resource {key.upper()!r}")
        return limits


class TuningConfig(_Strict):
    # trials per method and study, drawn quasi-randomly (harness.tuning)
    budget: Annotated[int, Field(ge=1, le=10_000)]
    studies: Annotated[int, Field(ge=1, le=100)] = 1
    # study j's seed (its draws and its tuning trials' training seed) is seed + j
    seed: Annotated[int, Field(ge=0)] = 1000
    select: Literal["val_mean_auroc"] = "val_mean_auroc"
    # dotted train.* / data.* key -> {choice: [...]} | {uniform: [a, b]} | {log_uniform: [a, b]}
    space: dict[str, dict[str, Any]] = {}
    # method in grid.methods -> its hyperparameter -> an entry as above, or {dirichlet: alpha}
    # for fixed weighting's weights (checked by ExperimentConfig._tuning, harness.tuning)
    method_space: dict[str, dict[str, dict[str, Any]]] = {}

    @field_validator("seed")
    @classmethod
    def _seed(cls, seed: int) -> int:
        return _check_seed(seed)


class OutputConfig(_Strict):
    dir: str = "runs"
    # where the trials' checkpoints go (harness.checkpoints): a local or shared path, or a URI
    # that pyarrow's FileSystem.from_uri opens (s3://, gs://, abfs://, file://); None: the run
    # directory. Tables, manifest and report always stay in the run directory.
    storage: str | None = None


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
    name: str
    data: DataConfig = DataConfig()
    grid: GridConfig = GridConfig()
    train: TrainConfig = TrainConfig()
    method_params: dict[str, dict[str, Any]] = {}
    resources: ResourcesConfig = ResourcesConfig()
    cluster: ClusterConfig = ClusterConfig()
    output: OutputConfig = OutputConfig()
    tuning: TuningConfig | None = None

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
                    f"method_params.{name}: unknown method {name!r}; available: "
                    f"{', '.join(available)} (or define a variant: {name}: {{{VARIANT_KEY}: "
                    "<registered method>, ...})"
                )
            if base is not None and (not isinstance(base, str) or base not in available):
                raise ValueError(
                    f"method_params.{name}.{VARIANT_KEY}: unknown method {base!r}; "
                    f"available: {', '.join(available)}"
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
            try:
                methods.create(base_name, num_tasks=len(tasks), task_names=tasks, **hyperparameters)
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
                hint = _did_you_mean(rest, list(model.model_fields))
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
        """Settings that are valid but likely not what the user means, one line each: a
        method that reweights only at epoch ends given too few epochs to ever do so."""
        import methods

        info = {m.name: m for m in methods.describe()}
        if self.tuning is not None and "train.epochs" in self.tuning.space:
            return []  # the tuned epochs are drawn per trial
        swept = self.grid.sweep.get("train.epochs")
        epochs = min(swept) if swept else self.train.epochs  # each arm on its own
        setting = f"train.epochs: {epochs}" + (" (a swept setting)" if swept else "")
        lines = []
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
    return list(getattr(model, "model_fields", {}))


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _message(error: dict) -> str:
    msg = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "extra_forbidden":
        loc = tuple(error["loc"])
        if loc in REMOVED_KEYS:
            return f"unknown key ({REMOVED_KEYS[loc]})"
        return f"unknown key{_did_you_mean(str(loc[-1]), _known_keys(loc))}"
    if error["type"] == "finite_number":
        return f"must be a finite number, not {error['input']!r}"
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


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment file; ``overrides`` maps top-level keys to values
    (e.g. ``{"name": "x"}``) applied before validation."""
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
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(raw, str(path))
