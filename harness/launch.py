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
import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness.config import ExperimentConfig
from harness.errors import RunError, RunRefused, handle_sigterm
from harness.preflight import cluster_address, preflight  # harness validate runs it too
from harness.progress import Progress
from harness.results import TrialRecord, write_manifest, write_tables
from harness.rundir import CONFIG_FILE, TRIALS_DIR, RunDirectory
from harness.wording import plural

__all__ = ["RunError", "RunRefused", "RunOutcome", "run_experiment"]

# how long a cluster address may take to accept a TCP connection before the run gives up
CONNECT_TIMEOUT_S = 10.0


def _harness_version() -> str:
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
        return [r for r in self.records if r.status not in ("completed", "diverged")]


def trial_identities(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Grid points in a stable order: method, then backbone, then seed."""
    return [
        {"trial_id": f"{m}-{b}-s{s}", "method": m, "backbone": b, "seed": s}
        for m in cfg.grid.methods
        for b in cfg.grid.backbones
        for s in cfg.grid.seeds
    ]


def trial_spec(cfg: ExperimentConfig, identity: dict[str, Any], gpus: float) -> dict[str, Any]:
    """The plain dict that the training loop takes (see ``trainloop``)."""
    d = cfg.to_dict()
    train = dict(d["train"])
    weighting, params = cfg.weighting_method(identity["method"])
    # Tune runs each trial in its own working directory: relative paths are the user's
    if train["pretrained"]:
        train["pretrained"] = str(Path(train["pretrained"]).resolve())
    if params.get("initial_weights"):
        params["initial_weights"] = str(Path(params["initial_weights"]).resolve())
    data = dict(d["data"], augment=cfg.data.augments())
    for key in ("root", "prepared"):
        if data[key]:
            data[key] = str(Path(data[key]).expanduser().resolve())
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
    }


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


def connect(address: str | None) -> bool:
    """Start a local Ray, or join the cluster at ``address`` / ``RAY_ADDRESS``. Returns True
    when this call started Ray (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
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


def resolve_gpus(cfg: ExperimentConfig, cluster: dict[str, float]) -> float:
    gpus = cfg.resources.gpus_per_worker
    if gpus == "auto":
        return 1.0 if cluster.get("GPU", 0) > 0 else 0.0
    return float(gpus)


def max_concurrent(cfg: ExperimentConfig, cluster: dict[str, float], gpus: float) -> int:
    """How many trials fit at once. Computed here, not left to Tune: with nested
    ``TorchTrainer`` trials, Tune would otherwise start drivers that take every CPU and
    leave none for their Train workers (a deadlock seen with Ray 2.60)."""
    r = cfg.resources
    need_cpu = r.workers_per_trial * r.cpus_per_worker
    need_gpu = r.workers_per_trial * gpus
    have_cpu, have_gpu = cluster.get("CPU", 0), cluster.get("GPU", 0)
    if need_cpu > have_cpu or need_gpu > have_gpu:
        raise RunError(
            f"resources: a trial needs {need_cpu:g} CPU and {need_gpu:g} GPU "
            f"({plural(r.workers_per_trial, 'worker')}) but the cluster has {have_cpu:g} CPU and "
            f"{have_gpu:g} GPU"
        )
    fits = math.floor(have_cpu / need_cpu)
    if need_gpu:
        fits = min(fits, math.floor(have_gpu / need_gpu))
    if r.max_concurrent_trials:
        fits = min(fits, r.max_concurrent_trials)
    return max(1, fits)


class TuneReporter:
    """The loop's reporter inside a Tune function trial."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        from ray import tune

        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)

    def restore(self) -> str | None:
        from ray import tune

        ckpt = tune.get_checkpoint()
        return ckpt.to_directory() if ckpt else None


class TrainReporter:
    """The loop's reporter inside a Ray Train worker (multi-worker trials)."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def restore(self) -> str | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.to_directory() if ckpt else None


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
            # a deterministic name: a retried Tune trial finds this run's checkpoints
            name=spec["trial_id"],
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            # Tune retries the trial (max_failures) and the retry resumes this run's checkpoint
            failure_config=ray.train.FailureConfig(max_failures=0),
        ),
    )
    trainer.fit()


# ---- provenance --------------------------------------------------------------------------


def _git_commit() -> str | None:
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

    out = {"python": platform.python_version(), "harness": _harness_version()}
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


# ---- the run -----------------------------------------------------------------------------


def _manifest(
    cfg: ExperimentConfig, claimed: RunDirectory, cluster: dict[str, float], concurrency: int
) -> dict[str, Any]:
    manifest = {
        "name": cfg.name,
        "harness_version": _harness_version(),
        "started_at": _now(),
        "finished_at": None,
        "command": " ".join(sys.argv),
        "git_commit": _git_commit(),
        "versions": _versions(),
        "hardware": _hardware(),
        "cluster_resources": {k: v for k, v in cluster.items() if "node:" not in k},
        "max_concurrent_trials": concurrency,
        "tasks": cfg.data.task_names(),
        "trials": {},
    }
    stored = claimed.stored_manifest if claimed.mode == "resume" else None
    if stored:  # the run began earlier: keep when, and list each resume
        manifest["started_at"] = stored["started_at"]
        manifest["resumed_at"] = [*stored.get("resumed_at", []), _now()]
    return manifest


def _finish(
    run_dir: Path,
    records: dict[str, TrialRecord],
    manifest: dict[str, Any],
    finished_at: str | None = None,
):
    """Tables, then the report, then ``finished_at``: a run killed on the way stays
    unfinished, and ``--resume`` just writes what is missing."""
    from reports import ReportError, write_report

    write_tables(run_dir, list(records.values()))
    manifest["trials"] = {
        t: {"status": r.status, "error": r.data["error"]} for t, r in records.items()
    }
    write_manifest(run_dir, manifest)
    try:
        report = write_report(run_dir)
    except ReportError as exc:  # the run's own files: not bad input but a failed step
        raise RunError(
            f"the trials ended but the report could not be written ({exc}); after fixing "
            "that, harness run --resume writes it"
        ) from None
    manifest["finished_at"] = finished_at or _now()
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
) -> RunOutcome:
    """Train every grid point of ``cfg`` not yet done in ``output.dir/name`` and write the
    tables and the report there. ``notify(line)`` receives what the run is doing while it
    starts (the CLI prints it at once: starting Ray takes tens of seconds).

    Raises:
        RunRefused: the run directory's state refuses the request (see ``harness.rundir``).
        RunError: Ray is unreachable or too small for one trial, or the directory is in use.
        KeyboardInterrupt: Ctrl-C or SIGTERM (``harness.errors.Terminated``); finished trials
            are kept and ``--resume`` continues, unless no trial had started: then the run
            directory is gone, as if the run had never begun.
    """
    handle_sigterm()
    address = cluster_address(cfg, address)
    preflight(cfg, local=not address)
    if address:  # before the run directory is touched: an unreachable cluster writes nothing
        check_reachable(address)
    run_dir = Path(cfg.output.dir).expanduser().resolve() / cfg.name
    config = cfg.to_dict()
    claimed = RunDirectory.claim(run_dir, config, resume=resume, overwrite=overwrite)
    succeeded = False
    try:
        outcome = _run_claimed(cfg, claimed, config, address, progress, notify)
        succeeded = True
        return outcome
    finally:
        # a run that stops before any trial started leaves no directory behind
        claimed.release(discard=not succeeded)


def _load_records(run_dir: Path, cfg: ExperimentConfig) -> dict[str, TrialRecord]:
    (run_dir / TRIALS_DIR).mkdir(exist_ok=True)
    records = {i["trial_id"]: TrialRecord(run_dir / TRIALS_DIR, i) for i in trial_identities(cfg)}
    for record in records.values():
        if record.status not in ("completed", "diverged"):
            record.reset()
    return records


def _run_claimed(cfg, claimed: RunDirectory, config, address, progress, notify) -> RunOutcome:
    run_dir = claimed.path
    if claimed.mode == "resume":
        records = _load_records(run_dir, cfg)
        if all(r.status != "pending" for r in records.values()):
            # every trial ended earlier (say the run was killed while writing its report)
            _say(notify, f"every trial of {run_dir} has ended; writing the report")
            for record in records.values():
                record.save()
            stored = claimed.stored_manifest or {}
            # the trials ended when the run that trained them did: keep that time if recorded
            manifest = {**stored, "finished_at": None}
            report = _finish(run_dir, records, manifest, stored.get("finished_at"))
            return RunOutcome(run_dir=run_dir, records=list(records.values()), report=report)

    import ray

    # Per-epoch checkpoints with num_to_keep=1 make Tune snapshot its state often, and it
    # warns about that on every epoch; the snapshots are small here.
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
    started_ray = connect(address)
    try:
        cluster = ray.cluster_resources()
        gpus = resolve_gpus(cfg, cluster)
        concurrency = max_concurrent(cfg, cluster, gpus)
        claimed.clear()  # --overwrite: the earlier run goes only now that this one can start
        # the manifest first: from now on the folder is recognisably a run directory
        manifest = _manifest(cfg, claimed, cluster, concurrency)
        write_manifest(run_dir, manifest)
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        records = _load_records(run_dir, cfg)
        for record in records.values():
            record.save()

        identities = trial_identities(cfg)
        todo = [i for i in identities if records[i["trial_id"]].status == "pending"]
        _say(
            notify,
            f"Ray is up ({cluster.get('CPU', 0):g} CPU, {cluster.get('GPU', 0):g} GPU): "
            f"{plural(len(todo), 'trial')} to train, up to {concurrency} at once; "
            f"results in {run_dir}",
        )
        progress = progress or Progress.create(cfg.train.epochs)
        progress.start(identities, {t: r.status for t, r in records.items()})
        try:
            if todo:
                _fit(cfg, run_dir, todo, records, progress, gpus, concurrency)
        finally:
            progress.stop()
    finally:
        if started_ray:
            ray.shutdown()

    report = _finish(run_dir, records, manifest)
    return RunOutcome(run_dir=run_dir, records=list(records.values()), report=report)


def _fit(cfg, run_dir, todo, records, progress, gpus, concurrency) -> None:
    from ray import tune

    from harness.collector import ResultsCollector

    storage = str(run_dir / "ray")
    specs = {i["trial_id"]: trial_spec(cfg, i, gpus) for i in todo}
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
        param_space={"trial_id": tune.grid_search([i["trial_id"] for i in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=concurrency,
            reuse_actors=single,
            trial_name_creator=lambda trial: trial.config["trial_id"],
            trial_dirname_creator=lambda trial: trial.config["trial_id"],
        ),
        run_config=tune.RunConfig(
            # one Tune experiment per attempt, so a resumed run never mixes with an earlier one
            name=f"tune-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}",
            storage_path=storage,
            verbose=0,
            callbacks=[ResultsCollector(records, progress)],
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    # Tune prints its own banner on stdout even when silent; keep it in the run directory so
    # the terminal shows only our progress view.
    log = Path(storage) / "tune_stdout.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out, contextlib.redirect_stdout(out):
        tuner.fit()
