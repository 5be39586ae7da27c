"""Spread a method x seed x backbone grid over a Ray cluster with Ray Tune.

One Tune trial per grid point. A single-worker trial runs the training loop directly inside
its Tune function trial (actors are reused across trials: starting a nested ``TorchTrainer``
costs ~25 s per trial). A multi-worker trial builds a ``TorchTrainer`` inside its Tune trial
and runs the same loop under DDP; ``TuneReportCallback`` passes rank 0's reports up to Tune.

The driver's ``ResultsCollector`` callback keeps every reported row in the run directory (so
the Parquet tables never depend on Ray's internal result files) and drives the progress view.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import resources, tuning
from harness.checkpoints import CheckpointStore, delete_store, store_uri
from harness.config import SINGLE_TASK, ExperimentConfig, sweep_label
from harness.errors import RunError, RunRefused, handle_sigterm
from harness.nodes import NODE_KEYS, cluster_nodes, merge_nodes
from harness.preflight import cluster_address, preflight  # harness validate runs it too
from harness.progress import Progress
from harness.results import (
    ENDED,
    TrialRecord,
    current_run_attempt,
    end_run_attempt,
    interrupt_open_attempts,
    new_run_attempt,
    now_iso,
    past_run_attempts,
    record_run_attempt_end,
    write_manifest,
    write_tables,
)
from harness.rundir import CONFIG_FILE, TRIALS_DIR, RunDirectory
from harness.storage import first_line, is_remote, local_path, redact
from harness.tuning import draw_points, study_seed
from harness.worker_setup import CODE_PACKAGES
from reports.format import plural

__all__ = ["RunError", "RunRefused", "RunOutcome", "run_experiment"]

# how long a cluster address may take to accept a TCP connection before the run gives up
CONNECT_TIMEOUT_S = 10.0


def harness_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deepchest-harness")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


@dataclass
class RunOutcome:
    run_dir: Path
    records: list[TrialRecord]
    report: Any  # reports.WrittenReport: the HTML's path, the summary files and table

    @property
    def failed(self) -> list[TrialRecord]:
        return [r for r in self.records if r.status not in ENDED]


def trial_identities(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Grid points in a stable order: method, then backbone, then swept setting, then seed.
    A swept setting's values are identity keys by their dotted names (``"train.lr"``) and
    end the trial id (``equal-resnet18-s0-train.lr=0.0003``). With ``grid.single_task``, then
    one trial per backbone, task and seed (method ``stl``, identity key ``single_task``)."""
    single = [
        {
            "trial_id": f"{SINGLE_TASK}-{b}-s{s}-task={sweep_label(task)}",
            "method": SINGLE_TASK,
            "backbone": b,
            "seed": s,
            "single_task": task,
        }
        for b in cfg.grid.backbones
        for task in (cfg.data.task_names() if cfg.grid.single_task else [])
        for s in cfg.grid.seeds
    ]
    if cfg.tuning is not None:
        return single + tuning_identities(cfg)
    return [
        {
            "trial_id": f"{m}-{b}-s{s}" + setting_suffix(point),
            "method": m,
            "backbone": b,
            "seed": s,
            **point,
        }
        for m in cfg.grid.methods
        for b in cfg.grid.backbones
        for point in cfg.sweep_points(m)
        for s in cfg.grid.seeds
    ] + single


def setting_suffix(point: dict[str, Any]) -> str:
    """How swept or tuned settings end a trial id: ``-train.lr=0.0003-data.hflip=true``."""
    return "".join(f"-{key}={sweep_label(value)}" for key, value in point.items())


def tuning_identities(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """With ``tuning``: per method, backbone, swept setting and study, ``budget`` tuning
    trials at the study's quasi-random points (``harness.tuning.draw_points``; seed: the
    study's), then the final trials on ``grid.seeds``, whose tuned values are filled in by
    :func:`select_finals` once the study's tuning trials have ended. Trial ids:
    ``<method>-<backbone>[-<setting>]-study<j>-t<i>`` and ``...-study<j>-s<seed>``."""
    t = cfg.tuning
    assert t is not None
    tasks = len(cfg.data.task_names())  # a Dirichlet draw of weights has one per task
    out = []
    for m in cfg.grid.methods:
        shared, own = cfg.tuning_spaces(m)
        for b in cfg.grid.backbones:
            for point in cfg.sweep_points(m):
                stem = f"{m}-{b}" + setting_suffix(point)
                base = {"method": m, "backbone": b, **point}
                for j in range(t.studies):
                    seed = study_seed(t.seed, j)
                    drawn = draw_points(shared, own, t.budget, seed, tasks)
                    out += [
                        {
                            "trial_id": f"{stem}-study{j}-t{i}",
                            **base,
                            "seed": seed,
                            "phase": "tuning",
                            "study": j,
                            **values,
                        }
                        for i, values in enumerate(drawn)
                    ]
                    out += [
                        {
                            "trial_id": f"{stem}-study{j}-s{s}",
                            **base,
                            "seed": s,
                            "phase": "final",
                            "study": j,
                            "tuned_from": f"{stem}-study{j}-t",
                        }
                        for s in cfg.grid.seeds
                    ]
    return out


def _study_choice(
    cfg: ExperimentConfig, records: dict[str, TrialRecord], prefix: str
) -> dict[str, Any] | None | bool:
    """The identity of the best tuning trial of the study ``prefix`` by validation score
    (completed trials only: a failed or diverged one has no score), None when none has a
    score, False while the study is still tuning."""
    assert cfg.tuning is not None
    tried = [records[f"{prefix}{i}"] for i in range(cfg.tuning.budget)]
    if any(r.status not in ENDED and r.status != "failed" for r in tried):
        return False
    scores = [
        (r.data["summary"] or {}).get(cfg.tuning.select) if r.status == "completed" else None
        for r in tried
    ]
    if not any(v is not None and math.isfinite(v) for v in scores):
        return None
    return tried[tuning.select(scores)].data["identity"]


def select_finals(cfg: ExperimentConfig, records: dict[str, TrialRecord]) -> list[str]:
    """Give each final trial whose study's tuning trials have all ended the tuned values of
    the best of them by validation score (``tuning.select``: the summary's mean val AUROC;
    never a test metric): its identity gains those values and ``selected``. Returns the ids of
    the final trials that may run now."""
    assert cfg.tuning is not None
    choices: dict[str, dict[str, Any] | None | bool] = {}  # one choice per study
    ready = []
    for trial_id, record in records.items():
        identity = record.data["identity"]
        if identity.get("phase") != "final":
            continue
        if "selected" in identity:
            ready.append(trial_id)
            continue
        prefix = identity["tuned_from"]
        if prefix not in choices:
            choices[prefix] = _study_choice(cfg, records, prefix)
        best = choices[prefix]
        if best is False:
            continue  # the study is still tuning
        if best is None:
            record.set(
                status="failed",
                error=f"tuning: no tuning trial of its study completed with a "
                f"{cfg.tuning.select} (see {prefix}0 .. {prefix}{cfg.tuning.budget - 1}); "
                "nothing to choose",
            )
            record.save()
            continue
        assert isinstance(best, dict)
        tuned = {k: v for k, v in swept_values(best).items() if k not in identity}
        identity.update(tuned, selected=best["trial_id"])
        record.save()
        ready.append(trial_id)
    return ready


def decided_studies(records: dict[str, TrialRecord]) -> set[str]:
    """The tuning-trial id prefixes of the studies whose choice is made (kept by --resume):
    their tuning trials are not run again, even those that failed."""
    return {
        r.data["identity"]["tuned_from"]
        for r in records.values()
        if "selected" in r.data["identity"]
    }


def swept_values(identity: dict[str, Any]) -> dict[str, Any]:
    """The swept settings of a trial: its identity's dotted keys."""
    return {k: v for k, v in identity.items() if "." in k}


def trial_spec(
    cfg: ExperimentConfig,
    identity: dict[str, Any],
    gpus: float,
    checkpoints: str | None = None,
) -> dict[str, Any]:
    """The plain dict that the training loop takes (see ``trainloop``); ``checkpoints``: the
    run's checkpoint root (``checkpoints.store_uri``), None to save nothing."""
    if swept := swept_values(identity):
        cfg = cfg.with_values(swept)
    d = cfg.to_dict()
    train = dict(d["train"])
    if task := identity.get("single_task"):  # a single-task reference: one loss, one head
        d["data"]["tasks"] = [task]
        weighting, params = "equal", {}
    else:
        weighting, params = cfg.weighting_method(identity["method"])
    # Tune runs each trial in its own working directory: relative paths are the user's
    if train["pretrained"]:
        train["pretrained"] = str(Path(train["pretrained"]).resolve())
    if params.get("initial_weights"):
        params["initial_weights"] = str(Path(params["initial_weights"]).resolve())
    data = dict(d["data"], augment=cfg.data.augments())
    for key in ("root", "prepared"):
        if data[key] and not is_remote(data[key]):
            data[key] = local_path(data[key])
    return {
        **identity,
        "data": data,
        "train": train,
        "weighting_method": weighting,
        "method_params": params,
        "device": "cuda" if gpus > 0 else "cpu",
        "threads": max(1, int(cfg.resources.cpus_per_worker)),
        "workers": cfg.resources.workers_per_trial,
        "gpus_per_worker": gpus,
        "cpus_per_worker": cfg.resources.cpus_per_worker,
        "checkpoints": checkpoints,
    }


def trial_hparams(identity: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The config Tune gets for a trial (``params.json``, TensorBoard's HParams, MLflow's
    params, W&B's config): its ``trial_id``, ``method``, ``backbone`` and ``seed``, its other
    identity keys (swept or tuned values by their dotted names, ``train.lr``; ``phase``,
    ``study``, ``selected`` with tuning; ``single_task``) and its method's hyperparameters,
    defaults included, flattened as ``method_params.<method>.<name>``. Plain scalars only: a
    list is written as JSON, None left out. The trainable reads only ``trial_id``."""
    import methods

    defaults = {m.name: m.hyperparameters for m in methods.describe()}
    hparams = {k: v for k, v in identity.items() if k != "tuned_from"}
    own = {**defaults.get(spec["weighting_method"], {}), **spec["method_params"]}
    hparams.update({f"method_params.{identity['method']}.{k}": v for k, v in own.items()})
    return {k: _plain(v) for k, v in hparams.items() if v is not None}


def _plain(value: Any) -> bool | int | float | str:
    if isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):  # a NumPy scalar
        return value.item()
    return json.dumps(value)


# ---- Ray ---------------------------------------------------------------------------------


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail within ``timeout`` seconds when nothing listens at ``host:port``: ``ray.init``
    itself retries an unreachable GCS for minutes, logging a warning per try."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" or a name Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        reason = (
            f"no answer in {timeout:g} s"
            if isinstance(exc, TimeoutError)
            else exc.strerror or str(exc)
        )
        raise RunError(
            f"could not connect to the Ray cluster at {address}: {reason} (nothing was "
            "started or written)"
        ) from None


# set by Ray's job supervisor for a driver started by `ray job submit` (the job's config)
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def code_runtime_env(address: str | None, ship_code: bool) -> dict[str, Any]:
    """The Ray ``runtime_env`` of the run's job: every worker runs the driver's code.

    ``worker_process_setup_hook`` (:mod:`harness.worker_setup`) imports the project's
    packages when a worker starts, before Ray puts the driver's working directory first on
    its ``sys.path``, where a ``methods/`` folder of the user's would shadow ours. Where they
    come from: joining a cluster by ``address`` with ``ship_code``, the packages uploaded to
    every node (``py_modules``), so nodes need only the dependencies; by ``address`` without
    it, each node's installation; a local Ray, the folder the driver imported them from (put
    on ``PYTHONPATH`` unless it is a site-packages folder, which is on the path anyway).
    Under ``ray job submit``, a ``py_modules`` or setup hook that the job's own runtime_env
    sets is left alone (Ray would refuse to merge both; without our hook the shadowing is
    possible again)."""
    import importlib
    import site

    job = json.loads(os.environ.get(JOB_CONFIG_ENV) or "{}").get("runtime_env") or {}
    env: dict[str, Any] = {}
    if not job.get("worker_process_setup_hook"):
        env["worker_process_setup_hook"] = "harness.worker_setup.import_project"
    if not address:
        root = Path(__file__).resolve().parent.parent
        sites = {Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]}
        if root not in sites:
            path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
            env["env_vars"] = {"PYTHONPATH": path}
    elif ship_code and not job.get("py_modules"):
        env["py_modules"] = [importlib.import_module(name) for name in CODE_PACKAGES]
    return env


def connect(address: str | None, ship_code: bool = True) -> bool:
    """Join the Ray cluster at ``address`` (``auto``: the one ``ray start`` started on this
    machine), or, without one (or with ``local``), start a new local Ray instance: not the
    cluster that ``ray start`` last recorded on this machine (``ray_current_cluster``), which
    ``ray.init()`` would join, or fail on when it is gone. Every worker runs the driver's code
    (:func:`code_runtime_env`). Returns True when this call started Ray (and so should shut
    it down); False when this process had already initialised Ray (a notebook's own
    ``ray.init``: its runtime_env is then the notebook's)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    try:
        ray.init(
            address=address or "local",
            logging_level="WARNING",
            log_to_driver=False,
            runtime_env=code_runtime_env(address, ship_code),
            **({} if address else {"include_dashboard": False}),
        )
    except Exception as exc:  # ConnectionError, AuthenticationError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        hint = ""
        if "auth" in first.lower() or "token" in first.lower():
            hint = " (token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH)"
        raise RunError(f"could not connect to {where}: {first}{hint}") from None
    finally:
        # ray.init installs a SIGTERM handler that exits mid-run and then aborts in Ray's
        # core worker; ours turns SIGTERM into an interruption like Ctrl-C
        handle_sigterm()
    return True


class TuneReporter:
    """The loop's reporter inside a Tune function trial: metrics only (the loop keeps its
    checkpoints in the run's ``CheckpointStore``, where a retry finds them by trial id)."""

    def report(self, metrics: dict[str, Any]) -> None:
        from ray import tune

        tune.report(metrics)


class TrainReporter:
    """The loop's reporter inside a Ray Train worker (multi-worker trials): metrics only."""

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)


def _train_worker(spec: dict[str, Any]) -> None:
    import ray.train.torch

    from harness.trainloop import TorchCollective, train_trial

    device = ray.train.torch.get_device()
    train_trial({**spec, "device": str(device)}, TrainReporter(), TorchCollective())


def _tune_trial(config: dict[str, Any], specs: dict[str, dict[str, Any]], storage: str) -> None:
    spec = specs[config["trial_id"]]
    if spec["workers"] == 1:
        from harness.trainloop import train_trial

        train_trial(spec, TuneReporter())
        return
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    gpus = spec["gpus_per_worker"]
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=spec,
        torch_config=TorchConfig(backend="nccl" if gpus > 0 else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=spec["workers"],
            use_gpu=gpus > 0,
            resources_per_worker={
                "CPU": spec["cpus_per_worker"],
                **({"GPU": gpus} if gpus else {}),
            },
        ),
        run_config=ray.train.RunConfig(
            # Train keeps only its run state here; the trial's checkpoints are the harness's
            name=spec["trial_id"],
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            # Tune retries the trial (max_failures); the retry restores from the harness's store
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()


def _pending_cap() -> int:
    """Tune's cap on pending trials for a grid search (``_get_max_pending_trials``): 200, or
    1.1 per CPU of the cluster when that is more; at least one per GPU. Pending only: the
    trials already running do not count against it."""
    import ray

    cluster = ray.cluster_resources()
    return max(200, int(cluster.get("CPU", 1.0) * 1.1), int(cluster.get("GPU", 0)))


def _trial_configs(configs: list[dict[str, Any]]):
    """A Tune searcher that hands out ``configs`` (``trial_hparams``), one trial each, in
    order. Unlike a ``grid_search`` over trial ids, each trial's whole config is its searched
    point, so Tune records it as the trial's parameters (TensorBoard's HParams read only
    those), and each trial carries only its own keys (no other method's hyperparameters)."""
    from ray.tune.search import Searcher

    class TrialConfigs(Searcher):
        def __init__(self, configs: list[dict[str, Any]]) -> None:
            super().__init__()
            self.configs = list(configs)

        def suggest(self, trial_id: str) -> dict[str, Any] | str:
            return self.configs.pop(0) if self.configs else Searcher.FINISHED

        def on_trial_complete(self, trial_id, result=None, error=False) -> None:
            pass

        # Tune snapshots its searcher with the experiment state
        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_text(json.dumps(self.configs))

        def restore(self, checkpoint_path: str) -> None:
            self.configs = json.loads(Path(checkpoint_path).read_text())

    return TrialConfigs(configs)


# in the run's Ray storage folder: what Tune prints and logs (failed trials' tracebacks)
TUNE_LOG = "tune_stdout.log"


@contextlib.contextmanager
def _logged_to(stream, name: str):
    """For the duration, every record of logger ``name`` (and its children) goes to
    ``stream``; only warnings and notes without a traceback go on to the terminal as before
    (Tune's "insufficient resources" warning does, a failed trial's traceback does not)."""
    logger = logging.getLogger(name)
    to_file = logging.StreamHandler(stream)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    onwards = _Onwards(logger.parent)
    propagate = logger.propagate
    logger.addHandler(to_file)
    logger.addHandler(onwards)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(to_file)
        logger.removeHandler(onwards)
        logger.propagate = propagate
        to_file.close()


class _Onwards(logging.Handler):
    """Hands a record below ERROR without a traceback on to ``parent`` (whose handlers print
    it), as propagation would."""

    def __init__(self, parent: logging.Logger | None) -> None:
        super().__init__()
        self.parent = parent

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.ERROR and not record.exc_info and self.parent is not None:
            self.parent.handle(record)


# result keys that carry the harness's own JSON (the collector's), not metrics to track
JSON_RESULTS = ("rows_json", "node_json", "summary_json")


class _GuardedTracker:
    """Mixin for Ray's logger callbacks: an error while logging (a tracking server's 5xx, a
    locked SQLite store) is one warning line, after which this tracker logs nothing more; the
    grid goes on (Tune would otherwise re-raise it and end the run)."""

    key = "tracking"
    broken = False

    def _guarded(self, hook, *args):
        if self.broken:
            return None
        try:
            return hook(*args)
        except Exception as exc:
            self.broken = True
            print(
                f"harness: warning: {self.key} stopped logging ({first_line(exc)}); "
                "the run goes on without it",
                file=sys.stderr,
            )
            return None

    def log_trial_start(self, trial):
        return self._guarded(super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result):
        return self._guarded(super().log_trial_result, iteration, trial, result)

    def log_trial_end(self, trial, failed=False):
        return self._guarded(super().log_trial_end, trial, failed)


def tracking_callbacks(cfg: ExperimentConfig, run_dir: Path) -> list[Any]:
    """Ray's own MLflow and W&B logger callbacks for the experiment file's ``tracking`` (none
    by default): one run per trial, with the trial's config (``trial_hparams``) as its params
    and every epoch's metrics. They run on the driver (pre-flight checked the packages); a
    tracker that cannot start (no W&B API key, an MLflow server that refuses) stops the run
    before any trial, in one line. W&B keeps its local files in ``run_dir/wandb/`` (not in
    Tune's trial folders, which Tune copies before W&B has finished writing)."""
    out: list[Any] = []
    if (mlflow := cfg.tracking.mlflow) is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        class MLflowTracking(_GuardedTracker, MLflowLoggerCallback):
            key = "tracking.mlflow"

            def setup(self, *args, **kwargs):
                with _tracker_errors("tracking.mlflow"):
                    super().setup(*args, **kwargs)

            def log_trial_result(self, iteration, trial, result):
                # the trial's config is its params already: not also a metric every epoch
                metrics = {k: v for k, v in result.items() if k != "config"}
                super().log_trial_result(iteration, trial, metrics)

        out.append(
            MLflowTracking(
                tracking_uri=mlflow.tracking_uri,
                experiment_name=mlflow.experiment or cfg.name,
                tags={"harness_run": cfg.name},
            )
        )
    if (wandb := cfg.tracking.wandb) is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        class WandbTracking(_GuardedTracker, WandbLoggerCallback):
            key = "tracking.wandb"

            def setup(self, *args, **kwargs):
                # Ray asks for an API key unless WANDB_MODE says offline or disabled; the
                # file's mode (passed on to wandb.init) says so only while Ray checks
                mode = self.kwargs["mode"]
                saved = os.environ.get("WANDB_MODE")
                if mode != "online":
                    os.environ["WANDB_MODE"] = mode
                try:
                    with _tracker_errors("tracking.wandb"):
                        super().setup(*args, **kwargs)
                finally:
                    if saved is None:
                        os.environ.pop("WANDB_MODE", None)
                    else:
                        os.environ["WANDB_MODE"] = saved

        out.append(
            WandbTracking(
                project=wandb.project,
                group=cfg.name,
                excludes=list(JSON_RESULTS),
                mode=wandb.mode,
                dir=str(run_dir),
            )
        )
    return out


@contextlib.contextmanager
def _tracker_errors(key: str):
    try:
        yield
    except Exception as exc:
        line = first_line(exc)
        if key == "tracking.wandb" and "API key" in line:
            line = "no W&B API key: run `wandb login` or set WANDB_API_KEY (or use mode: offline)"
        raise RunError(f"{key}: {line}") from None


# ---- provenance --------------------------------------------------------------------------


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "harness": harness_version()}
    for pkg in ("torch", "torchvision", "ray", "numpy", "pandas", "pyarrow", "plotly"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _hardware() -> dict[str, Any]:
    import psutil
    import torch

    hw = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hw


# ---- the run -----------------------------------------------------------------------------


def _manifest(
    cfg: ExperimentConfig,
    claimed: RunDirectory,
    cluster: dict[str, float],
    concurrency: int | None,
    gpus: float,
    limits: dict[str, float],
    notes: list[str],
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    now = now_iso()  # this attempt's start, and the run's unless it is a resume
    manifest = {
        "name": cfg.name,
        "harness_version": harness_version(),
        "started_at": now,
        "finished_at": None,
        "command": " ".join(sys.argv),
        # this attempt's key=value overrides of the file, as given (config.yaml: the result)
        "overrides": list(overrides or []),
        "git_commit": git_commit(),
        "versions": _versions(),
        "hardware": _hardware(),
        "cluster_resources": {k: v for k, v in cluster.items() if "node:" not in k},
        "max_concurrent_trials": concurrency,
        "gpus_per_worker": gpus,
        "autoscaler_limits": limits,
        "notes": notes,
        "tasks": cfg.data.task_names(),
        "trials": {},
    }
    stored = claimed.stored_manifest if claimed.mode == "resume" else None
    # the checkpoint store's name (checkpoints.store_uri): made once, kept by every resume
    manifest["run_id"] = (stored or {}).get("run_id") or uuid.uuid4().hex[:12]
    storage = cfg.output.storage or str(claimed.path)
    manifest["checkpoints"] = store_uri(storage, cfg.name, manifest["run_id"])
    if stored:  # the run began earlier: keep when
        manifest["started_at"] = stored["started_at"]
    # every node of the cluster as this attempt starts (hardware is the driver's alone)
    manifest["nodes"] = cluster_nodes(manifest["hardware"].get("gpus"))
    trials = claimed.path / TRIALS_DIR
    to_run = [i for i in trial_identities(cfg) if TrialRecord(trials, i).status not in ENDED]
    manifest["attempts"] = [
        *past_run_attempts(stored),
        new_run_attempt(manifest["command"], claimed.mode == "resume", len(to_run), now),
    ]
    return manifest


def run_columns(cfg: ExperimentConfig) -> dict[str, Any]:
    """What every row of the run's tables says of the run (``results.write_tables``)."""
    return {"run": cfg.name, "dataset": cfg.data.dataset, "image_size": cfg.data.image_size}


def _finish(
    run_dir: Path,
    records: dict[str, TrialRecord],
    manifest: dict[str, Any],
    finished_at: str | None = None,
    columns: dict[str, Any] | None = None,
):
    """Tables, then the report, then ``finished_at``: a run killed on the way stays
    unfinished, and ``--resume`` just writes what is missing. ``columns``: ``run_columns``."""
    from reports import ReportError, write_report

    if current_run_attempt(manifest) is None:  # a resume that only writes tables and report
        earlier = {**manifest, "finished_at": finished_at or manifest.get("finished_at")}
        manifest["attempts"] = [
            *past_run_attempts(earlier),
            new_run_attempt(" ".join(sys.argv), True, 0),
        ]
    write_tables(run_dir, list(records.values()), **(columns or {}))
    manifest["trials"] = {
        t: {"status": r.status, "error": r.data["error"], "attempts": r.attempts}
        for t, r in records.items()
    }
    # nodes that joined after the start (an autoscaler) are known from this attempt's trials
    since = current_run_attempt(manifest)["started_at"]
    seen = [
        {k: a.get(k) for k in NODE_KEYS}
        for r in records.values()
        for a in r.attempts
        if a.get("hostname") and (a.get("started_at") or "") >= since
    ]
    manifest["nodes"] = merge_nodes(manifest.get("nodes") or [], seen)
    write_manifest(run_dir, manifest)
    try:
        report = write_report(run_dir)
    except ReportError as exc:  # the run's own files: not bad input but a failed step
        raise RunError(
            f"the trials ended but the report could not be written ({exc}); after fixing "
            "that, harness run --resume writes it"
        ) from None
    manifest["finished_at"] = finished_at or now_iso()
    end_run_attempt(manifest, "finished")
    write_manifest(run_dir, manifest)
    return report


def _say(notify, message: str) -> None:
    if notify is not None:
        notify(message)


def run_experiment(
    cfg: ExperimentConfig,
    *,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    notify=None,
    overrides: list[str] | None = None,
) -> RunOutcome:
    """Train every grid point of ``cfg`` not yet done in ``output.dir/name`` and write the
    tables and the report there. ``notify(line)`` receives what the run is doing while it
    starts (the CLI prints it at once: starting Ray takes tens of seconds). ``overrides``: the
    command line's ``key=value`` overrides ``cfg`` was loaded with, for the manifest.

    Raises:
        RunRefused: the run directory's state refuses the request (see ``harness.rundir``).
        RunError: Ray is unreachable or too small for one trial, or the directory is in use.
        KeyboardInterrupt: Ctrl-C or SIGTERM (``harness.errors.Terminated``); finished trials
            are kept and ``--resume`` continues, unless no trial had started: then the run
            directory is gone, as if the run had never begun.
    """
    handle_sigterm()
    storage = cfg.output.storage
    relative = [
        (key, value)
        for key, value in (("output.dir", cfg.output.dir), ("output.storage", storage))
        if value and "://" not in value and not Path(value).expanduser().is_absolute()
    ]
    if os.environ.get(JOB_CONFIG_ENV) and relative:
        key, value = relative[0]
        raise RunRefused(
            f"{key}: {value!r} is relative, and under `ray job submit` the driver runs in the "
            "job's temporary working directory, which goes with the job: give an absolute "
            "path (or a storage URI)"
        )
    address = cluster_address(cfg, address)
    preflight(cfg, local=not address)
    if address:  # before the run directory is touched: an unreachable cluster writes nothing
        check_reachable(address)
    run_dir = Path(cfg.output.dir).expanduser().resolve() / cfg.name
    config = cfg.to_dict()
    claimed = RunDirectory.claim(run_dir, config, resume=resume, overwrite=overwrite)
    succeeded = False
    try:
        outcome = _run_claimed(cfg, claimed, config, address, progress, notify, overrides)
        succeeded = True
        return outcome
    except BaseException as exc:  # the manifest's attempts record how this one ended
        interrupted = isinstance(exc, KeyboardInterrupt)
        record_run_attempt_end(claimed.path, "interrupted" if interrupted else "failed")
        if interrupted:  # and so do the trials' own, for those it stopped
            interrupt_open_attempts(claimed.path / TRIALS_DIR)
        raise
    finally:
        # a run that stops before any trial started leaves no directory behind
        claimed.release(discard=not succeeded)


def _load_records(run_dir: Path, cfg: ExperimentConfig) -> dict[str, TrialRecord]:
    (run_dir / TRIALS_DIR).mkdir(exist_ok=True)
    records = {i["trial_id"]: TrialRecord(run_dir / TRIALS_DIR, i) for i in trial_identities(cfg)}
    decided = decided_studies(records)
    for trial_id, record in records.items():
        # a failed tuning trial of a study already decided stays as it ended: the choice is
        # made and kept, so running it again would cost without changing anything
        kept = record.status == "failed" and any(trial_id.startswith(p) for p in decided)
        if record.status not in ENDED and not kept:
            record.reset()
    return records


def _run_claimed(
    cfg, claimed: RunDirectory, config, address, progress, notify, overrides=None
) -> RunOutcome:
    run_dir = claimed.path
    if claimed.mode == "resume":
        records = _load_records(run_dir, cfg)
        if all(r.status != "pending" for r in records.values()):
            # every trial ended earlier (say the run was killed while writing its report)
            _say(notify, f"every trial of {run_dir} has ended; writing the report")
            for record in records.values():
                record.save()
            stored = claimed.stored_manifest or {}
            if stored.get("checkpoints"):
                _keep_only_best_weights(stored["checkpoints"], _ended(records))
            # the trials ended when the run that trained them did: keep that time if recorded
            manifest = {**stored, "finished_at": None}
            report = _finish(
                run_dir, records, manifest, stored.get("finished_at"), run_columns(cfg)
            )
            return RunOutcome(run_dir=run_dir, records=list(records.values()), report=report)

    import ray

    # Tune snapshots its experiment state after results and warns when that is frequent; the
    # snapshots are small here (the checkpoints are the harness's, not Tune's).
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's own Ctrl-C handler ends fit() quietly, as if the run had finished; without it
    # KeyboardInterrupt reaches the CLI and the run stays resumable.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    _say(
        notify,
        f"connecting to the Ray cluster at {address} ..."
        if address
        else f"starting a local Ray instance ({os.cpu_count()} CPUs) ...",
    )
    started_ray = connect(address, ship_code=cfg.cluster.ship_code)
    try:
        cluster = ray.cluster_resources()
        limits = resources.autoscaler_limits(cfg.cluster.max_resources)
        planned = resources.plan(cfg, cluster, limits)
        gpus, concurrency = planned.gpus, planned.max_concurrent
        claimed.clear()  # --overwrite: the earlier run goes only now that this one can start
        if claimed.mode == "overwrite":  # and so do its checkpoints, wherever they were
            old = (claimed.stored_manifest or {}).get("checkpoints")
            try:
                delete_store(old)
            except (OSError, ValueError) as exc:  # unreachable now: the new run needs none
                _say(notify, f"the replaced run's checkpoints at {redact(old)} stay: {exc}")
        # the manifest first: from now on the folder is recognisably a run directory
        manifest = _manifest(
            cfg, claimed, cluster, concurrency, gpus, limits, planned.notes, overrides
        )
        write_manifest(run_dir, manifest)
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        records = _load_records(run_dir, cfg)
        for record in records.values():
            record.save()
        checkpoints = manifest["checkpoints"]
        if claimed.mode == "resume":
            _keep_only_best_weights(checkpoints, _ended(records))

        identities = trial_identities(cfg)
        todo = [i for i in identities if records[i["trial_id"]].status == "pending"]
        _say(
            notify,
            f"Ray is up ({cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU): "
            f"{plural(len(todo), 'trial')} to train, "
            + (f"up to {concurrency} at once" if concurrency else "as many at once as fit")
            + f"; results in {run_dir}",
        )
        for note in planned.notes:  # waiting for the autoscaler, or running on CPU
            _say(notify, note)
        progress = progress or Progress.create(cfg.train.epochs)
        progress.start(identities, {t: r.status for t, r in records.items()})
        try:
            first = [i for i in todo if i.get("phase") != "final"]  # the tuning trials first
            if first:
                _fit(cfg, run_dir, first, records, progress, gpus, concurrency, checkpoints)
            if cfg.tuning is not None:
                ready = select_finals(cfg, records)
                finals = [
                    records[t].data["identity"] for t in ready if records[t].status == "pending"
                ]
                if finals:
                    _say(
                        notify,
                        f"tuning done (each configuration chosen on validation only): "
                        f"{plural(len(finals), 'final trial')} to train",
                    )
                    _fit(cfg, run_dir, finals, records, progress, gpus, concurrency, checkpoints)
        finally:
            progress.stop()
    finally:
        if started_ray:
            ray.shutdown()

    report = _finish(run_dir, records, manifest, columns=run_columns(cfg))
    return RunOutcome(run_dir=run_dir, records=list(records.values()), report=report)


def _keep_only_best_weights(checkpoints: str, ended: dict[str, int | None]) -> None:
    """Trials that ended (``{trial id: best epoch}``) keep only their best weights in the
    store; a driver killed between recording a trial's final report and this prune left its
    epoch state there, which a resumed driver prunes."""
    try:
        store = CheckpointStore(checkpoints)
        for trial_id, best_epoch in ended.items():
            store.finish(trial_id, best_epoch)
    except Exception as exc:  # an unreachable store, expired credentials, ...
        # pruning only saves space: the run goes on, and says what it could not do
        print(
            f"harness: warning: could not prune the ended trials' checkpoints in "
            f"{redact(checkpoints)} ({first_line(exc)})",
            file=sys.stderr,
        )


def _ended(records: dict[str, TrialRecord]) -> dict[str, int | None]:
    return {
        trial_id: (record.data["summary"] or {}).get("best_epoch")
        for trial_id, record in records.items()
        if record.status in ENDED
    }


def refresh_partial_report(run_dir: Path, progress: Progress | None = None) -> None:
    """Rewrite ``run_dir/report.html`` and its summary files from what the trials recorded so
    far (``reports.load_run`` reads ``trials/*.json`` while the run's tables are not written:
    the report says it is partial and names the trials still missing). A failure never stops
    the run: it is one warning line."""
    import reports

    try:
        reports.write_report(run_dir)
    except Exception as exc:  # a report is a view of the run, never a reason to stop it
        line = f"harness: warning: could not refresh the partial report ({first_line(exc)})"
        if progress is not None:  # above a live table, not through it
            progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr)


#: the partial report runs in Tune's event loop, which waits for it: after a refresh that took
#: d seconds the next one comes no sooner than REFRESH_GAP * d later (Tune busy <= ~10%)
REFRESH_GAP = 10.0
#: refreshes quicker than this are not throttled
THROTTLE_ABOVE_S = 2.0


def _partial_report_callback(run_dir: Path, progress: Progress):
    """A Tune callback that refreshes the partial report when a trial ends (completed,
    diverged or failed), once ``ResultsCollector`` has saved its record, at most one refresh
    per ``REFRESH_GAP`` times the last one's duration (a large grid's report takes seconds,
    during which Tune starts no trial)."""
    from ray import tune

    class PartialReport(tune.Callback):
        # no closure over this function's locals: Tune pickles the class with its methods
        def __init__(self, run_dir: Path, progress: Progress) -> None:
            self.run_dir: Path | None = run_dir
            self.progress: Progress | None = progress
            self.next_at = 0.0  # time.monotonic() before which no refresh starts

        # Tune pickles its callbacks into its experiment state: this driver's state stays here
        def __getstate__(self):
            return {}

        def __setstate__(self, state):
            self.run_dir, self.progress, self.next_at = None, None, 0.0

        def _refresh(self) -> None:
            if self.run_dir is None or time.monotonic() < self.next_at:
                return
            started = time.monotonic()
            refresh_partial_report(self.run_dir, self.progress)
            done = time.monotonic()
            if done - started > THROTTLE_ABOVE_S:  # a small grid's report: after every trial
                self.next_at = done + REFRESH_GAP * (done - started)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._refresh()

        def on_trial_error(self, iteration, trials, trial, **info):
            self._refresh()

    return PartialReport(run_dir, progress)


def _fit(cfg, run_dir, todo, records, progress, gpus, concurrency, checkpoints=None) -> None:
    """Run the ``todo`` trials under Tune; ``checkpoints`` is the run's checkpoint root
    (``checkpoints.store_uri``). Tune keeps no checkpoints: a retried trial restores itself
    from that store by trial id."""
    from ray import tune

    from harness.collector import ResultsCollector

    def prune(trial_id: str, best_epoch: int | None) -> None:
        if checkpoints:  # best-effort, and never an error inside Tune's event loop
            _keep_only_best_weights(checkpoints, {trial_id: best_epoch})

    storage = str(run_dir / "ray")
    specs = {i["trial_id"]: trial_spec(cfg, i, gpus, checkpoints) for i in todo}
    single = cfg.resources.workers_per_trial == 1
    if single:
        resources = {"cpu": cfg.resources.cpus_per_worker, "gpu": gpus}
    else:
        # The trial only drives a TorchTrainer whose workers reserve the real CPUs/GPUs. Tune
        # refuses an empty request, and any CPU share would leave the workers short (a
        # deadlock when the cluster has exactly the workers' CPUs), so it reserves 1 MiB of
        # memory and no CPU.
        resources = {"cpu": 0, "memory": 2**20}
    trainable = tune.with_resources(
        tune.with_parameters(_tune_trial, specs=specs, storage=storage), resources
    )
    tuner = tune.Tuner(
        trainable,
        # each trial's whole config (trial id, method, backbone, seed, swept values, method
        # hyperparameters), in grid order. With a cap of the run's own, Tune wraps the
        # searcher in a ConcurrencyLimiter (running + pending <= cap); without one it keeps
        # as many trials pending as TUNE_MAX_PENDING_TRIALS_PG says, which for a searcher
        # defaults to 1: set there to Tune's rule for a grid (_pending_cap), which caps only
        # the pending trials, never the running ones
        tune_config=tune.TuneConfig(
            search_alg=_trial_configs([trial_hparams(i, specs[i["trial_id"]]) for i in todo]),
            num_samples=len(todo),
            max_concurrent_trials=concurrency,
            reuse_actors=single,
            trial_name_creator=lambda trial: trial.config["trial_id"],
            trial_dirname_creator=lambda trial: trial.config["trial_id"],
        ),
        run_config=tune.RunConfig(
            # one Tune experiment per attempt, so a resumed run never mixes with an earlier one
            name=f"tune-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S-%f}",
            storage_path=storage,
            verbose=0,
            # in this order: a trial's record is saved before the report reads it
            callbacks=[
                ResultsCollector(records, progress, on_ended=prune),
                _partial_report_callback(run_dir, progress),
                *tracking_callbacks(cfg, run_dir),  # MLflow, W&B: only when the file asks
            ],
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
        ),
    )
    # Tune prints its own banner on stdout even when silent, and logs each failed trial's
    # traceback (some 40 lines) on stderr: keep both in the run directory, so the terminal
    # shows only our progress view and one line per failed trial
    log = Path(storage) / TUNE_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    # the pending-trial cap is read from the environment when the fit starts; set only for
    # it (and only when the user has not set it), so a notebook keeps its environment
    own_cap = "TUNE_MAX_PENDING_TRIALS_PG" not in os.environ
    if own_cap:
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(_pending_cap())
    try:
        with open(log, "a") as out, contextlib.redirect_stdout(out), _logged_to(out, "ray.tune"):
            tuner.fit()
    finally:
        if own_cap:
            os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
