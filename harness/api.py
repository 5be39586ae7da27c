"""The Python API: run an experiment and read a run directory from a notebook or a script.

>>> import harness
>>> results = harness.run("experiments/quickstart.yaml", overrides={"train.epochs": 1})
>>> results.trials[["method", "seed", "test_mean_auroc"]]
>>> same = harness.load(results.run_dir)

``run`` trains the grid exactly as ``harness run`` does (the same run directory, tables and
report) and returns the run's :class:`reports.RunResults`; ``load`` reads any run directory,
one that still runs or was interrupted included (then ``partial`` says what is missing).
Importing :mod:`harness` stays light: torch, Ray and pandas load on the first call.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.config import ExperimentConfig
    from reports.load import RunResults

__all__ = ["load", "run", "experiment_config"]


def _yaml_value(key: str, value: Any) -> str:
    """A Python value as the YAML text of a command-line override (``[equal, deepchest]``),
    so that ``harness.config`` reads both alike; plain data only."""
    import yaml

    from harness.config import ConfigError

    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=math.inf, allow_unicode=True)
    except yaml.YAMLError:
        raise ConfigError(
            [
                f"overrides: {key}: a {type(value).__name__} value; give plain data (numbers, "
                "strings, booleans, None, lists and dicts of them)"
            ]
        ) from None
    return text.removesuffix("\n").removesuffix("\n...").strip()


def override_texts(overrides: Mapping[str, Any] | None) -> list[str]:
    """``{"train.epochs": 1, "grid.methods": ["equal"]}`` -> ``["train.epochs=1",
    "grid.methods=[equal]"]``: the dotted overrides of ``harness run CONFIG key=value``."""
    from harness.config import ConfigError

    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise ConfigError(
            [
                f"overrides: a dict of dotted keys to values, e.g. {{'train.epochs': 1}}, "
                f"not {type(overrides).__name__}"
            ]
        )
    texts = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ConfigError(
                [f"overrides: {key!r} is not a dotted key such as 'train.epochs' (no '=')"]
            )
        texts.append(f"{key}={_yaml_value(key, value)}")
    return texts


def experiment_config(
    config: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """The validated experiment: ``config`` is the path of an experiment file or a dict in its
    schema; ``overrides`` (dotted keys) are set in it before validation, as
    ``harness run CONFIG key=value`` does. Raises ``harness.config.ConfigError`` (one line
    per problem, naming the key, and the override when one caused it)."""
    from harness import config as schema

    override_texts(overrides)  # the keys and values checked
    # the values as given, not their YAML text read back (which turned the string "1e3" into
    # a float)
    typed = {
        k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in (overrides or {}).items()
    }
    if not isinstance(config, Mapping):
        return schema.load_config(Path(config), typed)
    raw = dict(config)
    parsed = schema.parse_overrides(typed)
    if not parsed:
        return schema.parse_config(raw, "config")
    applied = schema.apply_overrides(raw, parsed)  # its errors name their override already
    try:
        return schema.parse_config(applied, "config")
    except schema.ConfigError as exc:  # name the override that caused each line
        raise schema.ConfigError(schema._name_overrides(exc.lines, raw, parsed, "config")) from None


def run(
    config: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> RunResults:
    """Train the experiment's grid like ``harness run`` and return its results.

    ``config``: an experiment file's path, or a dict in the same schema. ``overrides``: dotted
    keys to values, ``{"train.epochs": 1, "grid.seeds": [0]}`` (``harness run CONFIG
    train.epochs=1 grid.seeds=[0]``). ``address``, ``resume``, ``overwrite``: as the options of
    ``harness run``. Progress goes to stderr, one line per event off a terminal.

    Failed trials do not raise: they are in ``trials`` with their ``status`` and ``error``,
    and a ``RuntimeWarning`` lists them. Raises ``harness.config.ConfigError`` for a bad
    experiment, ``harness.errors.RunRefused`` for a request the run directory refuses,
    ``harness.errors.RunError`` when the run cannot start or its report cannot be written,
    and ``KeyboardInterrupt`` on Ctrl-C (finished trials are kept; ``resume=True``
    continues).
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cfg = experiment_config(config, overrides)
    for line in cfg.warnings:
        print(f"harness: warning: {line}", file=sys.stderr)
    from harness.launch import run_experiment

    def note(message: str) -> None:
        print(f"harness: {message}", file=sys.stderr, flush=True)

    # the run turns SIGTERM into an interruption (as the CLI does); a notebook's kernel gets
    # its own handler back afterwards
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        outcome = run_experiment(
            cfg,
            address=address,
            resume=resume,
            overwrite=overwrite,
            notify=note,
            overrides=override_texts(overrides),  # the manifest records them, as the CLI's
        )
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)
    if outcome.failed:
        listed = "; ".join(
            f"{r.data['identity']['trial_id']}: {r.data['error']}" for r in outcome.failed
        )
        warnings.warn(
            f"{len(outcome.failed)} of {len(outcome.records)} trials failed ({listed})",
            RuntimeWarning,
            stacklevel=2,
        )
    return outcome.report.results.runs[0]  # what the report was built from, tables as written


def load(run_dir: str | os.PathLike[str]) -> RunResults:
    """Read a run directory: ``trials`` and ``epochs`` (pandas DataFrames, as the report sees
    them), ``manifest``, ``config``, ``report_path``, and ``partial`` for a run that still goes
    on or was interrupted (read from its trial records: the finished trials only). Raises
    ``reports.ReportError`` (one line naming the file) for a missing or unreadable one."""
    from reports.load import load_run

    return load_run(run_dir)
