"""The experiment file: a strict pydantic schema, its YAML reader and one-line errors.

Unknown keys, methods, backbones, data sets and hyperparameters are refused here, before Ray
starts, with the YAML path of the bad key in the message (``grid.methods[2]: ...``).
"""

from __future__ import annotations

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

# Every data set an experiment file may name. nih and chexpert train from a folder that
# `harness data prepare` wrote (data.prepared); chestmnist reads its .npz (data.root).
DATASETS = ("synthetic", "nih", "chexpert", "chestmnist")
PREPARED_DATASETS = ("nih", "chexpert")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# in method_params.<name>, this key makes <name> a variant of a registered method, so that one
# method can run under several settings in one grid (say mgda and mgda_ub)
VARIANT_KEY = "method"


class ConfigError(ValueError):
    """A bad experiment file. ``lines`` holds one message per problem, each naming its key."""

    def __init__(self, lines: list[str]):
        self.lines = lines
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


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
    prepared: str | None = None
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
        return _no_duplicates(seeds, "seed")


class TrainConfig(_Strict):
    epochs: Annotated[int, Field(ge=1, le=10_000)] = 4
    batch_size: Annotated[int, Field(ge=1, le=65_536)] = 64
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: Annotated[float, Field(gt=0, le=10)] = 1.0e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    pretrained: Literal[False] | str = False
    heads: Literal["weighted", "own"] = "weighted"
    max_failures: Annotated[int, Field(ge=0)] = 1


class ResourcesConfig(_Strict):
    workers_per_trial: Annotated[int, Field(ge=1, le=1024)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0, le=1024)] = 1
    gpus_per_worker: Literal["auto"] | Annotated[float, Field(ge=0, le=16)] = "auto"
    max_concurrent_trials: Annotated[int, Field(ge=1)] | None = None


class ClusterConfig(_Strict):
    address: str | None = None


class OutputConfig(_Strict):
    dir: str = "runs"


class ExperimentConfig(_Strict):
    name: str
    data: DataConfig = DataConfig()
    grid: GridConfig = GridConfig()
    train: TrainConfig = TrainConfig()
    method_params: dict[str, dict[str, Any]] = {}
    resources: ResourcesConfig = ResourcesConfig()
    cluster: ClusterConfig = ClusterConfig()
    output: OutputConfig = OutputConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(
                f"{name!r} must be 1-100 letters, digits, '.', '_' or '-' (it names a folder)"
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
                    f"{self.resources.workers_per_trial} worker(s)) is larger than the "
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
            try:
                methods.create(base_name, num_tasks=len(tasks), task_names=tasks, **hyperparameters)
            except ValueError as exc:
                raise ValueError(f"method_params.{name}: {exc}") from None
        return self

    def weighting_method(self, name: str) -> tuple[str, dict[str, Any]]:
        """The registered method and hyperparameters behind a grid name: a variant's
        ``method`` and the rest of its entry, or the method itself and its own entry."""
        params = dict(self.method_params.get(name, {}))
        return params.pop(VARIANT_KEY, name), params

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def trial_count(self) -> int:
        g = self.grid
        return len(g.methods) * len(g.seeds) * len(g.backbones)


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
    ),
    list("-+0123456789."),
)


def _key_path(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part).startswith(
            ("function-after", "function-before", "literal[", "list[", "int", "str")
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


def _message(error: dict) -> str:
    msg = error["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if error["type"] == "extra_forbidden":
        if tuple(error["loc"]) in REMOVED_KEYS:
            return f"unknown key ({REMOVED_KEYS[tuple(error['loc'])]})"
        return "unknown key"
    return msg


def _format_errors(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        path, msg = _key_path(error["loc"]), _message(error)
        # our validators already name the key (e.g. "data.tasks[2]: ..." or "[2]: ...")
        if msg.startswith("["):
            lines.append(f"{path}{msg}")
        elif re.match(r"^[a-z_]+(\.[a-z_]+)+(\[\d+\])?: ", msg) or not path:
            lines.append(msg)
        else:
            lines.append(f"{path}: {msg}")
    # a union (e.g. `tasks: all | [names]`) reports one error per branch: keep the first each
    return list(dict.fromkeys(lines))


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
        raw = yaml.load(path.read_text(), Loader=_YamlLoader)
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
