"""The driver killed (kill -9) at three points of a tiny grid, then ``harness run --resume``:
no finished trial is trained again, unfinished ones continue from their checkpoint, and the
tables equal those of an uninterrupted run (same trial ids, same metrics: CPU runs are
bit-identical). Also: ``output.storage`` holds every checkpoint, ``harness validate`` refuses a
storage URI it cannot open.

Each killed driver runs as ``python -m harness.cli run`` in its own process with its own local
Ray, isolated by ``RAY_TMPDIR``: a kill -9 leaves that Ray running (its processes outlive the
driver), so the test ends every process that carries its ``RAY_TMPDIR``, by pid.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd
import psutil
import pytest

from harness.cli import main
from tests.conftest import tiny_config, write_config
from tests.drivers import Driver, records, until
from tests.test_checkpoints import METRICS

pytestmark = pytest.mark.timeout(900)

METHODS = ["rlw", "deepchest"]
SEEDS = [0, 1]
TRIAL_METRICS = ["trial_id", *METRICS]  # what a resumed run must reproduce exactly


def grid_config(tmp_path: Path, storage: str | None = None) -> dict:
    """4 trials of 3 epochs (rlw draws from the RNG; DeepChest with augmentation)."""
    return tiny_config(
        tmp_path,
        name="crash",
        grid={"methods": METHODS, "seeds": SEEDS},
        train={"epochs": 3},
        data={"augment": True},
        output={"dir": str(tmp_path / "runs"), "storage": storage},
    )


def tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The tables without what the clock or the machine decides."""
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")[TRIAL_METRICS]
    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet").drop(columns="train_time_s")
    trials = trials.sort_values("trial_id").reset_index(drop=True)
    epochs = epochs.sort_values(["trial_id", "epoch", "split", "task"]).reset_index(drop=True)
    return trials, epochs


@pytest.fixture(scope="module")
def uninterrupted(ray_session, tmp_path_factory):
    """The tables of the same grid run straight through (in this process's Ray)."""
    tmp = tmp_path_factory.mktemp("straight")
    assert main(["run", str(write_config(tmp, grid_config(tmp)))]) == 0
    return tables(tmp / "runs" / "crash")


def _epoch_reported(run_dir: Path) -> bool:
    return any(r.get("rows") for r in records(run_dir).values())


def _half_done(run_dir: Path) -> bool:
    ended = [r for r in records(run_dir).values() if r["status"] == "completed"]
    return len(ended) >= len(METHODS) * len(SEEDS) // 2


def _writing_tables(run_dir: Path) -> bool:
    return (run_dir / "results").is_dir()


@pytest.mark.parametrize(
    "point",
    [
        _epoch_reported,
        # 45-70 s each on 2 cores: `pytest -m slow` (the default suite keeps the first)
        pytest.param(_half_done, marks=pytest.mark.slow),
        pytest.param(_writing_tables, marks=pytest.mark.slow),
    ],
    ids=["after-first-epoch", "half-the-trials-done", "while-tables-are-written"],
)
def test_driver_kill9_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted, point):
    storage = "file://" + str(tmp_path / "store")
    config = write_config(tmp_path, grid_config(tmp_path, storage))
    run_dir = tmp_path / "runs" / "crash"
    first = Driver(config, log=tmp_path / "first.log")
    until(lambda: point(run_dir), first, point.__name__)
    first.kill9()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert not manifest.get("finished_at")  # the kill landed before the run's end
    before = records(run_dir)
    ended = {t for t, r in before.items() if r["status"] == "completed"}
    store = tmp_path / "store" / f"crash-{manifest['run_id']}" / "checkpoints"
    saved = {t for t in before if t not in ended and list((store / t).glob("epoch-*.pt"))}
    if point is _epoch_reported:
        assert saved  # a trial had a checkpoint to continue from

    second = Driver(config, "--resume", log=tmp_path / "second.log")
    assert second.wait() == 0, second.log.read_text()[-3000:]
    log = second.log.read_text()
    todo = len(METHODS) * len(SEEDS) - len(ended)
    if todo:
        assert f"{todo} trial{'s' if todo != 1 else ''} to train" in log
    else:
        assert "every trial of" in log and "writing the report" in log
    after = records(run_dir)
    for trial_id in ended:  # not trained again: the very same record (its clock included)
        assert after[trial_id]["summary"] == before[trial_id]["summary"]
    for trial_id in saved:  # continued: this attempt's first report is a later epoch
        results = sorted((run_dir / "ray").glob(f"tune-*/{trial_id}/result.json"))
        first_report = json.loads(results[-1].read_text().splitlines()[0])
        assert first_report["epoch"] > 1, trial_id

    trials, epochs = tables(run_dir)
    straight_trials, straight_epochs = uninterrupted
    pd.testing.assert_frame_equal(trials, straight_trials)
    pd.testing.assert_frame_equal(epochs, straight_epochs)
    assert json.loads((run_dir / "manifest.json").read_text())["finished_at"]
    # every finished trial keeps only its best weights, in the store; none in the run directory
    for trial_id, best in zip(trials.trial_id, trials.best_epoch, strict=True):
        assert sorted(p.name for p in (store / trial_id).iterdir()) == [f"best-{best:04d}.pt"]
    assert not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("checkpoint_*"))


def test_validate_refuses_a_storage_uri_it_cannot_open(tmp_path, capsys):
    cfg = tiny_config(tmp_path, output={"storage": "nosuch://bucket/runs"})
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err
    assert "output.storage: cannot open nosuch://bucket/runs: " in err
    (tmp_path / "file").write_text("")
    cfg = tiny_config(tmp_path, output={"storage": str(tmp_path / "file")})
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2
    assert f"output.storage: {tmp_path / 'file'} is a file, not a folder" in capsys.readouterr().err


@pytest.mark.slow  # 25-100 s on 2 cores: `pytest -m slow`
def test_trial_process_killed_is_retried_from_its_checkpoint(tmp_path, uninterrupted):
    """kill -9 of the Ray worker processes that run the trials (``train.max_failures: 1``):
    Tune retries each, the retry continues from the store (no epoch reported twice), and the
    tables equal the uninterrupted run's."""
    cfg = grid_config(tmp_path, "file://" + str(tmp_path / "store"))
    cfg["train"]["max_failures"] = 1
    config = write_config(tmp_path, cfg)
    run_dir = tmp_path / "runs" / "crash"
    driver = Driver(config, log=tmp_path / "driver.log")

    def trial_processes():
        found = []
        for p in driver.ray_processes():
            with contextlib.suppress(psutil.Error):
                if "ImplicitFunc" in " ".join(p.cmdline()):
                    found.append(p)
        return found

    until(lambda: _epoch_reported(run_dir) and trial_processes(), driver, "an epoch report")
    killed = trial_processes()
    for p in killed:
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert driver.wait() == 0, driver.log.read_text()[-3000:]
    trials, epochs = tables(run_dir)
    pd.testing.assert_frame_equal(trials, uninterrupted[0])
    pd.testing.assert_frame_equal(epochs, uninterrupted[1])
    for result in (run_dir / "ray").glob("tune-*/*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines()]
        epochs_reported = [r["epoch"] for r in reports if not r["done"]]
        assert epochs_reported == sorted(set(epochs_reported)), (result, epochs_reported)
    errors = list((run_dir / "ray").glob("tune-*/*/error.txt"))
    assert len(errors) >= len(killed) >= 1  # Tune saw each trial fail, then retried it


@pytest.mark.slow  # 25-100 s on 2 cores: `pytest -m slow`
def test_two_worker_trial_continues_after_driver_kill9(tmp_path):
    """A ``workers_per_trial: 2`` trial (TorchTrainer, DDP on gloo): the driver killed after
    the first epoch report, ``--resume`` continues it from its checkpoint (each worker restores
    from the store itself) to the rows and metrics of an uninterrupted 2-worker run."""
    tables_of = {}
    for mode in ("straight", "killed"):
        cfg = tiny_config(
            tmp_path / mode,
            name="ddp",
            grid={"methods": ["rlw"]},
            train={"epochs": 3},
            resources={"workers_per_trial": 2, "cpus_per_worker": 1},
        )
        (tmp_path / mode).mkdir()
        config = write_config(tmp_path / mode, cfg)
        run_dir = tmp_path / mode / "runs" / "ddp"
        driver = Driver(config, log=tmp_path / f"{mode}.log")
        if mode == "killed":
            until(lambda run_dir=run_dir: _epoch_reported(run_dir), driver, "an epoch report")
            driver.kill9()
            driver = Driver(config, "--resume", log=tmp_path / "resumed.log")
        assert driver.wait() == 0, driver.log.read_text()[-3000:]
        tables_of[mode] = tables(run_dir)
        if mode == "killed":
            results = sorted((run_dir / "ray").glob("tune-*/*/result.json"))
            assert json.loads(results[-1].read_text().splitlines()[0])["epoch"] > 1
    pd.testing.assert_frame_equal(tables_of["killed"][0], tables_of["straight"][0])
    pd.testing.assert_frame_equal(tables_of["killed"][1], tables_of["straight"][1])


@pytest.mark.slow  # 25-100 s on 2 cores: `pytest -m slow`
def test_overwrite_starts_a_new_store_and_deletes_the_old_one(tmp_path):
    """A run killed with checkpoints in ``output.storage``, then ``--overwrite``: the new run
    has a new run id, so nothing is restored (every trial starts at epoch 1), and the replaced
    run's store is deleted."""
    storage = tmp_path / "store"
    config = write_config(tmp_path, grid_config(tmp_path, "file://" + str(storage)))
    run_dir = tmp_path / "runs" / "crash"
    first = Driver(config, log=tmp_path / "first.log")
    until(lambda: _epoch_reported(run_dir), first, "an epoch report")
    first.kill9()
    old = json.loads((run_dir / "manifest.json").read_text())
    assert list((storage / f"crash-{old['run_id']}" / "checkpoints").rglob("epoch-*.pt"))
    second = Driver(config, "--overwrite", log=tmp_path / "second.log")
    assert second.wait() == 0, second.log.read_text()[-3000:]
    new = json.loads((run_dir / "manifest.json").read_text())
    assert new["run_id"] != old["run_id"]
    assert new["checkpoints"] == f"file://{storage}/crash-{new['run_id']}/checkpoints"
    assert sorted(p.name for p in storage.iterdir()) == [f"crash-{new['run_id']}"]
    for result in (run_dir / "ray").glob("tune-*/*/result.json"):
        assert json.loads(result.read_text().splitlines()[0])["epoch"] == 1


def test_resume_prunes_what_a_kill_left_in_an_ended_trials_store(ray_session, tmp_path):
    """A driver killed after a trial ended but before that trial's store was pruned leaves its
    epoch state there: ``--resume`` (here the one that only writes tables and report) keeps the
    best weights alone."""
    cfg = tiny_config(tmp_path, grid={"methods": ["equal"]})
    config = write_config(tmp_path, cfg)
    assert main(["run", str(config)]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    store = run_dir / f"tiny-{manifest['run_id']}" / "checkpoints" / "equal-simple_cnn-s0"
    (best,) = store.iterdir()
    (store / "epoch-0002.pt").write_bytes(best.read_bytes())  # what the kill left
    (run_dir / "report.html").unlink()  # killed before the report, too
    assert main(["run", str(config), "--resume"]) == 0
    assert [p.name for p in store.iterdir()] == [best.name]
