"""What Tune records of each trial (its config: TensorBoard's HParams, ``params.json``) and the
opt-in trackers of the experiment file (``tracking.mlflow``, ``tracking.wandb``): one real tiny
``harness run`` on the session's Ray, read back with TensorBoard's protos, MLflow's client and
W&B's offline files; and the one-line refusals before Ray starts."""

from __future__ import annotations

import glob
import importlib.util
import json
import struct
from pathlib import Path

import pytest

import harness.preflight
from harness.cli import main
from tests.conftest import tiny_config, write_config

pytestmark = pytest.mark.timeout(300)

# the tiny grid with one swept value: trial ids end with it
TRIALS = {
    "equal-simple_cnn-s0-train.lr=0.002": "equal",
    "deepchest-simple_cnn-s0-train.lr=0.002": "deepchest",
}
EXPERIMENT = "harness-test-tracking"
HAS = {name: importlib.util.find_spec(name) is not None for name in ("mlflow", "wandb")}


def swept_config(tmp: Path, **sections) -> dict:
    return tiny_config(
        tmp,
        grid={"sweep": {"train.lr": [0.002]}},
        method_params={"deepchest": {"max_weight": 2.0}},
        **sections,
    )


@pytest.fixture(scope="module")
def tracked_run(ray_session, tmp_path_factory) -> tuple[Path, Path]:
    """One tiny run (2 trials, 2 epochs) with every tracker that is installed; returns the
    run directory and the MLflow database."""
    tmp = tmp_path_factory.mktemp("tracking")
    db = tmp / "mlflow.db"
    tracking = {}
    if HAS["mlflow"]:
        tracking["mlflow"] = {"tracking_uri": f"sqlite:///{db}", "experiment": EXPERIMENT}
    if HAS["wandb"]:
        tracking["wandb"] = {"project": "harness-test", "mode": "offline"}
    path = write_config(tmp, swept_config(tmp, tracking=tracking))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        assert main(["run", str(path)]) == 0
    return tmp / "runs" / "tiny", db


def tune_trial_dirs(run_dir: Path) -> dict[str, Path]:
    """Tune writes each trial under the run's storage path: ``ray/tune-<time>/<trial id>``."""
    dirs = [Path(p) for p in glob.glob(str(run_dir / "ray" / "tune-*" / "*-simple_cnn-*"))]
    return {d.name: d for d in dirs}


def tensorboard_hparams(trial_dir: Path) -> dict:
    """The HParams plugin's session-start record in the trial's TensorBoard event file
    (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2, plugin_hparams_pb2

    (path,) = trial_dir.glob("events.out.tfevents.*")
    data, at, found = path.read_bytes(), 0, {}
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            if value.tag == "_hparams_/session_start_info":
                plugin = plugin_hparams_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content
                )
                for key, v in plugin.session_start_info.hparams.items():
                    found[key] = getattr(v, v.WhichOneof("kind"))
    return found


def test_tune_trial_config_carries_method_backbone_seed_and_swept_values(tracked_run):
    run_dir, _ = tracked_run
    dirs = tune_trial_dirs(run_dir)
    assert set(dirs) == set(TRIALS)
    for trial_id, method in TRIALS.items():
        params = json.loads((dirs[trial_id] / "params.json").read_text())
        expected = {
            "trial_id": trial_id,
            "method": method,
            "backbone": "simple_cnn",
            "seed": 0,
            "train.lr": 0.002,
        }
        assert {k: params[k] for k in expected} == expected
        own = {k: v for k, v in params.items() if k.startswith("method_params.")}
        if method == "deepchest":  # the file's value, and the defaults beside it
            assert own["method_params.deepchest.max_weight"] == 2.0
            assert own["method_params.deepchest.increase"] == 1.1
            assert own["method_params.deepchest.signal"] == "train_accuracy"
        else:  # equal has no hyperparameters, and no other method's show up
            assert own == {}
        # TensorBoard's HParams view groups by what Tune wrote as the trial's hyperparameters
        hparams = tensorboard_hparams(dirs[trial_id])
        assert {k: hparams[k] for k in expected} == expected
        assert {k: v for k, v in hparams.items() if k.startswith("method_params.")} == own


@pytest.mark.skipif(not HAS["mlflow"], reason="needs the mlflow extra (mlflow-skinny)")
def test_mlflow_holds_one_run_per_trial_with_params_and_epoch_metrics(tracked_run):
    from mlflow import MlflowClient

    _, db = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == set(TRIALS)
    for trial_id, method in TRIALS.items():
        run = runs[trial_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["harness_run"] == "tiny"
        params = run.data.params  # MLflow keeps params as strings
        assert params["method"] == method and params["backbone"] == "simple_cnn"
        assert params["seed"] == "0" and params["train.lr"] == "0.002"
        if method == "deepchest":
            assert params["method_params.deepchest.max_weight"] == "2.0"
        # one value per epoch (training iterations 1 and 2), then the final report's test AUROC
        history = client.get_metric_history(run.info.run_id, "val_mean_auroc")
        assert [m.step for m in history] == [1, 2]
        assert all(0 <= m.value <= 1 for m in history)
        epochs = client.get_metric_history(run.info.run_id, "epoch")
        assert [m.value for m in epochs][:2] == [1, 2]
        assert 0 <= run.data.metrics["test_mean_auroc"] <= 1
        assert "rows_json" not in run.data.metrics


@pytest.mark.skipif(not HAS["wandb"], reason="needs the wandb extra")
def test_wandb_offline_run_per_trial_in_the_run_directory(tracked_run):
    run_dir, _ = tracked_run
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == len(TRIALS)
    seen = set()
    for run in runs:
        (log,) = run.glob("run-*.wandb")  # W&B's own record of the run, uploaded by wandb sync
        data = log.read_bytes()
        trial_id = next(t for t in TRIALS if t.encode() in data)  # the run's name
        seen.add(trial_id)
        method = TRIALS[trial_id]
        for key, value in (
            ("method", method),
            ("backbone", "simple_cnn"),
            ("train.lr", 0.002),
            ("seed", 0),
        ):  # a config item of the run (W&B's protobuf ConfigItem: key, value as JSON), not
            # just the strings, which the run's name holds too
            from wandb.proto import wandb_internal_pb2

            item = wandb_internal_pb2.ConfigItem(key=key, value_json=json.dumps(value))
            assert item.SerializeToString() in data, key
        assert b"val_mean_auroc" in data and b"train_mean_loss" in data  # per-epoch history
        assert b"rows_json" not in data  # the harness's own JSON stays out
    assert seen == set(TRIALS)


@pytest.mark.parametrize("tracker", ["mlflow", "wandb"])
def test_missing_tracker_package_is_refused_in_one_line(tracker, tmp_path, capsys, monkeypatch):
    tracking = {
        "mlflow": {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        "wandb": {"project": "p", "mode": "offline"},
    }[tracker]
    path = write_config(tmp_path, swept_config(tmp_path, tracking={tracker: tracking}))
    monkeypatch.setattr(harness.preflight, "_installed", lambda module: module != tracker)
    line = (
        f"harness: error: tracking.{tracker}: needs the {tracker} package: "
        f"pip install 'deepchest-harness[{tracker}]'\n"
    )
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == line
    # harness run refuses it the same way, before Ray starts or anything is written
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.endswith(line)
    assert not (tmp_path / "runs").exists()


def test_mlflow_store_that_mlflow_would_refuse_is_refused_before_the_run(
    tmp_path, capsys, monkeypatch
):
    # a SQL store needs SQLAlchemy (and alembic): the mlflow extra installs them
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    path = write_config(tmp_path, swept_config(tmp_path, tracking={"mlflow": {"tracking_uri": db}}))
    monkeypatch.setattr(harness.preflight, "_installed", lambda module: module != "sqlalchemy")
    assert main(["validate", str(path)]) == 2
    assert capsys.readouterr().err == (
        "harness: error: tracking.mlflow.tracking_uri: a sqlite store needs sqlalchemy and "
        "alembic: pip install 'deepchest-harness[mlflow]'\n"
    )
    if not HAS["mlflow"]:
        return
    monkeypatch.undo()
    # MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true: said before Ray starts
    import mlflow.environment_variables as mlflow_env

    uri = (tmp_path / "mlruns").as_uri()
    path = write_config(
        tmp_path, swept_config(tmp_path, tracking={"mlflow": {"tracking_uri": uri}}), "f.yaml"
    )
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    if hasattr(mlflow_env, "MLFLOW_ALLOW_FILE_STORE"):
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"harness: error: tracking.mlflow.tracking_uri: '{uri}' is a file")
        assert err.count("\n") == 1 and "sqlite:///" in err
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert main(["validate", str(path)]) == 0


def test_tracking_section_is_checked_like_any_other(tmp_path, capsys):
    cfg = swept_config(tmp_path, tracking={"wandb": {"project": "p", "mode": "sometimes"}})
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error: tracking.wandb.mode: ") and err.count("\n") == 1
    assert "online" in err and "offline" in err and "disabled" in err


def test_trial_config_of_variants_single_task_and_tuning_trials_is_plain_scalars(tmp_path):
    """Every kind of trial gets its own keys only, each a scalar the trackers accept."""
    from harness.config import parse_config
    from harness.launch import trial_hparams, trial_identities, trial_spec

    def configs(**sections) -> dict[str, dict]:
        cfg = parse_config(tiny_config(tmp_path, **sections))
        return {
            i["trial_id"]: trial_hparams(i, trial_spec(cfg, i, gpus=0))
            for i in trial_identities(cfg)
        }

    def plain(config: dict) -> bool:
        return all(isinstance(v, bool | int | float | str) for v in config.values())

    variant = configs(
        grid={"methods": ["mgda", "mgda_ub"], "single_task": True, "seeds": [3]},
        method_params={"mgda_ub": {"method": "mgda", "level": "representation"}},
        data={"tasks": ["Atelectasis", "Effusion"]},
    )
    ub = variant["mgda_ub-simple_cnn-s3"]
    assert ub["method"] == "mgda_ub" and ub["seed"] == 3
    assert ub["method_params.mgda_ub.level"] == "representation"  # the variant's own setting
    assert ub["method_params.mgda_ub.update_every"] == 1  # and the method's defaults
    assert "method_params.mgda_ub.method" not in ub
    assert variant["mgda-simple_cnn-s3"]["method_params.mgda.level"] == "parameters"
    stl = variant["stl-simple_cnn-s3-task=Effusion"]
    assert stl["method"] == "stl" and stl["single_task"] == "Effusion"
    assert not any(k.startswith("method_params.") for k in stl)
    assert all(plain(c) for c in variant.values())

    tuned = configs(
        grid={"methods": ["fixed"], "seeds": [0, 1, 2]},
        tuning={"budget": 2, "method_space": {"fixed": {"weights": {"dirichlet": 1.0}}}},
        data={"tasks": ["Atelectasis", "Effusion"]},
    )
    first = tuned["fixed-simple_cnn-study0-t0"]
    assert first["phase"] == "tuning" and first["study"] == 0 and first["seed"] == 1000
    weights = json.loads(first["method_params.fixed.weights"])  # a list, written as JSON
    assert len(weights) == 2 and sum(weights) == pytest.approx(2)
    final = tuned["fixed-simple_cnn-study0-s0"]
    assert final["phase"] == "final" and "tuned_from" not in final
    assert all(plain(c) for c in tuned.values())


def test_no_tracker_by_default(tmp_path):
    from harness.config import parse_config
    from harness.launch import tracking_callbacks

    cfg = parse_config(tiny_config(tmp_path))
    assert cfg.tracking.mlflow is None and cfg.tracking.wandb is None
    assert tracking_callbacks(cfg, tmp_path) == []


@pytest.mark.skipif(not HAS["wandb"], reason="needs the wandb extra")
def test_wandb_online_without_an_api_key_stops_the_run_in_one_line(
    ray_session, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    cfg = swept_config(tmp_path, tracking={"wandb": {"project": "p", "mode": "online"}})
    assert main(["run", str(write_config(tmp_path, cfg))]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (
        "harness: error: tracking.wandb: no W&B API key: run `wandb login` or set "
        "WANDB_API_KEY (or use mode: offline)"
    )


def test_a_tracker_that_fails_mid_run_warns_once_and_the_run_goes_on(capsys):
    """An error while logging (a server's 5xx, a locked SQLite store) must not reach Tune,
    which would end the grid: one warning line, then that tracker is silent."""
    from harness.launch import _GuardedTracker

    class Flaky:
        calls = 0

        def log_trial_result(self, iteration, trial, result):
            Flaky.calls += 1
            raise RuntimeError("503 Service Unavailable\nbody")

        def log_trial_start(self, trial):
            Flaky.calls += 1

        def log_trial_end(self, trial, failed=False):
            Flaky.calls += 1

    class Tracker(_GuardedTracker, Flaky):
        key = "tracking.mlflow"

    tracker = Tracker()
    tracker.log_trial_start("t")
    for _ in range(3):
        tracker.log_trial_result(1, "t", {"val_mean_auroc": 0.5})
    tracker.log_trial_end("t")
    assert Flaky.calls == 2  # the start and the failing result; nothing after the failure
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "harness: warning: tracking.mlflow stopped logging (503 Service Unavailable); "
        "the run goes on without it"
    ]


def test_named_mlflow_stores_are_not_taken_for_files(tmp_path, monkeypatch):
    """``databricks`` (and ``databricks://profile``) name a workspace, not a path; a plain
    relative path is a file store."""
    from harness.config import parse_config
    from harness.preflight import tracking_problems

    monkeypatch.setattr(harness.preflight, "_installed", lambda module: True)
    seen = []
    monkeypatch.setattr(harness.preflight, "_mlflow_file_store", lambda uri: seen.append(uri) or [])
    for uri in ("databricks", "databricks://profile", "sqlite:///x.db", "mlruns", "file:///m"):
        cfg = parse_config(swept_config(tmp_path, tracking={"mlflow": {"tracking_uri": uri}}))
        tracking_problems(cfg)
    assert seen == ["mlruns", "file:///m"]
