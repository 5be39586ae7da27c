"""The run directory's rules (harness.rundir), and the run lifecycle through the CLI.

Nothing of the user's is ever lost: a folder that is not a run directory is never touched, two
drivers never share a run directory, a run that could not start leaves nothing, a run killed
while writing its report is finished by ``--resume`` without Ray, SIGTERM is Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_TERMINATED, RunError, RunRefused
from harness.rundir import LOCK_FILE, MANIFEST_FILE, RunDirectory
from tests.conftest import REPO, tiny_config, write_config
from tests.drivers import Driver, free_port, until

CONFIG = {"name": "r", "train": {"epochs": 2}}


def _fake_run(path, config=CONFIG, trained=False, finished=False):
    """A run directory as a run leaves it (manifest, config, one trial record)."""
    import yaml

    (path / "trials").mkdir(parents=True)
    (path / MANIFEST_FILE).write_text(
        json.dumps({"name": "r", "started_at": "t0", "finished_at": "t1" if finished else None})
    )
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    record = {"status": "completed" if trained else "pending", "rows": {}}
    (path / "trials" / "a.json").write_text(json.dumps(record))
    if finished:
        (path / "report.html").write_text("<html></html>")


def test_a_folder_that_is_not_a_run_is_never_touched(tmp_path):
    folder = tmp_path / "Documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    for resume, overwrite in ((False, False), (False, True), (True, False)):
        with pytest.raises(RunRefused, match="is not a harness run directory"):
            RunDirectory.claim(folder, CONFIG, resume=resume, overwrite=overwrite)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]  # no lock file either


def test_new_run_directory_is_locked_and_a_second_driver_refused(tmp_path):
    path = tmp_path / "runs" / "r"
    first = RunDirectory.claim(path, CONFIG, resume=False, overwrite=False)
    assert first.mode == "new" and (path / LOCK_FILE).read_text().strip() == str(os.getpid())
    _fake_run(path, trained=True)  # what the first driver has written so far
    with pytest.raises(RunError, match=rf"in use by another harness run \(pid {os.getpid()}\)"):
        RunDirectory.claim(path, CONFIG, resume=True, overwrite=False)
    first.release()
    second = RunDirectory.claim(path, CONFIG, resume=True, overwrite=False)
    assert second.mode == "resume"
    second.release()


def test_states_and_what_each_request_gets(tmp_path):
    finished, unfinished = tmp_path / "finished", tmp_path / "unfinished"
    _fake_run(finished, trained=True, finished=True)
    _fake_run(unfinished, trained=True)
    with pytest.raises(RunRefused, match="already holds a finished run"):
        RunDirectory.claim(finished, CONFIG, resume=False, overwrite=False)
    with pytest.raises(RunRefused, match="already holds an unfinished run"):
        RunDirectory.claim(unfinished, CONFIG, resume=False, overwrite=False)
    with pytest.raises(RunRefused, match="exclude each other"):
        RunDirectory.claim(finished, CONFIG, resume=True, overwrite=True)
    with pytest.raises(RunRefused, match="nothing to resume"):
        RunDirectory.claim(tmp_path / "new", CONFIG, resume=True, overwrite=False)
    assert not (tmp_path / "new").exists()  # the refused claim left nothing
    changed = {"name": "r", "train": {"epochs": 3}}
    with pytest.raises(RunRefused, match=r"differs from .* at train\.epochs"):
        RunDirectory.claim(unfinished, changed, resume=True, overwrite=False)
    # an overwrite deletes nothing until clear(), and a failed start then keeps the old run
    claimed = RunDirectory.claim(finished, CONFIG, resume=False, overwrite=True)
    claimed.release(discard=True)
    assert (finished / "report.html").is_file()
    claimed = RunDirectory.claim(finished, CONFIG, resume=False, overwrite=True)
    claimed.clear()
    assert [p.name for p in finished.iterdir()] == [LOCK_FILE]
    claimed.release(discard=True)
    assert not finished.exists()


def test_resume_of_a_run_that_trained_nothing_takes_the_new_file(tmp_path):
    path = tmp_path / "r"
    _fake_run(path, trained=False)
    claimed = RunDirectory.claim(
        path, {"name": "r", "train": {"epochs": 9}}, resume=True, overwrite=False
    )
    assert claimed.mode == "resume"
    claimed.release(discard=True)
    assert path.is_dir()  # a resumed directory is never removed by a failed start


def _harness(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        **kwargs,
    )


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("harness: error: ")]


def test_unreachable_address_fails_at_once_and_leaves_nothing(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_config(tmp_path, tiny_config(tmp_path))
    start = time.monotonic()
    result = _harness("run", str(path), "--address", f"127.0.0.1:{port}")
    assert time.monotonic() - start < 60
    assert result.returncode == EXIT_FAILED
    assert _errors(result.stderr) == [
        f"harness: error: could not connect to the Ray cluster at 127.0.0.1:{port}: "
        "Connection refused (nothing was started or written)"
    ]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "x.yaml", "--resume", "--overwrite"],
        ["run", "x.yaml", "--frobnicate"],
        ["validate", "x.yaml", "--bogus"],
        ["validate"],
        ["validate", "no-such-file.yaml"],
        ["methods", "extra"],
        ["report", "no-such-run"],
        ["report", "x", "--target-fraction", "0"],
        ["bench", "--methods", "pcgard", "--steps", "1"],
        ["data", "prepare", "--dataset", "nih", "--root", "no-such-dir", "--out", "o"],
        ["data", "verify", "no-such-dir"],
        ["frobnicate"],
    ],
)
def test_bad_input_exits_2_with_one_line_for_every_command(args):
    result = _harness(*args)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    assert "Traceback" not in result.stderr and "usage:" not in result.stderr
    assert len(_errors(result.stderr)) == 1, result.stderr


def test_failed_start_leaves_nothing_and_the_fixed_file_runs(ray_session, tmp_path, capsys):
    cfg = tiny_config(tmp_path, grid={"methods": ["equal"]}, resources={"gpus_per_worker": 1})
    path = write_config(tmp_path, cfg)
    assert main(["run", str(path)]) == EXIT_FAILED
    assert "but the cluster has" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny").exists()
    cfg["resources"]["gpus_per_worker"] = 0
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0


def test_killed_while_writing_the_report_resume_writes_it_without_ray(
    ray_session, tmp_path, capsys, monkeypatch
):
    import harness.launch
    import reports

    cfg = tiny_config(tmp_path, grid={"methods": ["equal"]})
    path = write_config(tmp_path, cfg)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reports, "write_report", killed)
    # the partial report after each trial would meet the interrupt first: kill the final one
    monkeypatch.setattr(harness.launch, "refresh_partial_report", lambda *a, **k: None)
    assert main(["run", str(path)]) == 130
    run_dir = tmp_path / "runs" / "tiny"
    assert json.loads((run_dir / MANIFEST_FILE).read_text())["finished_at"] is None
    assert not (run_dir / "report.html").exists()
    monkeypatch.undo()
    assert main(["run", str(path)]) == EXIT_BAD_INPUT
    assert "already holds an unfinished run" in capsys.readouterr().err

    def no_ray(address, ship_code=True):
        raise AssertionError("Ray started for a run with nothing to train")

    monkeypatch.setattr(harness.launch, "connect", no_ray)
    assert main(["run", str(path), "--resume"]) == 0
    assert "every trial of" in capsys.readouterr().err
    assert (run_dir / "report.html").is_file()
    finished_at = json.loads((run_dir / MANIFEST_FILE).read_text())["finished_at"]
    assert finished_at
    # a resume of a finished run writes the report again but keeps when the run finished
    time.sleep(1.1)
    assert main(["run", str(path), "--resume"]) == 0
    assert json.loads((run_dir / MANIFEST_FILE).read_text())["finished_at"] == finished_at


def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes(tmp_path):
    """A real driver in a subprocess, SIGTERM once a trial has trained an epoch. Meanwhile a
    second run on the machine, started from a folder that holds a ``methods`` package of the
    user's and beside the ``ray_current_cluster`` file of a ``ray start`` cluster that is gone,
    starts a Ray of its own (``ray.init()`` would try that address) and its workers run the
    project's code, not that folder's."""
    cfg = tiny_config(tmp_path, grid={"methods": ["equal"]}, train={"epochs": 200})
    path = write_config(tmp_path, cfg)
    driver = Driver(path, log=tmp_path / "driver.log", env={"RAY_num_cpus": "2"})
    until(lambda: "epoch 1/200" in driver.log.read_text(), driver, "a trained epoch", 240)

    user = tmp_path / "user"
    (user / "methods").mkdir(parents=True)
    (user / "methods" / "__init__.py").write_text("raise ImportError('the user package')\n")
    beside = tiny_config(tmp_path, name="beside", grid={"methods": ["rlw"]}, train={"epochs": 1})
    ray_tmp = tempfile.mkdtemp(prefix="hr", dir="/tmp")  # the second driver's (short: sockets)
    (Path(ray_tmp) / "ray").mkdir()
    (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
    try:
        second = Driver(
            write_config(user, beside), log=tmp_path / "second.log", cwd=user, ray_tmp=ray_tmp
        )
        assert second.wait(timeout=240) == 0, second.log.read_text()[-3000:]
    except BaseException:
        driver.kill9()
        raise
    assert driver.proc.poll() is None  # the first run went on meanwhile

    driver.proc.send_signal(signal.SIGTERM)
    code = driver.wait(timeout=120)
    stderr = driver.log.read_text()
    assert code == EXIT_TERMINATED, stderr
    assert "terminated (SIGTERM); finished trials are kept" in stderr
    assert "Traceback" not in stderr and "*** SIGABRT" not in stderr
    run_dir = tmp_path / "runs" / "tiny"
    record = json.loads((run_dir / "trials" / "equal-simple_cnn-s0.json").read_text())
    (attempt,) = record["attempts"]  # the README: interrupted when its run stopped under it
    assert attempt["status"] == "interrupted" and attempt["ended_at"], attempt
    # the run stays resumable: the same file with --resume is accepted (checked without Ray)
    from harness.config import load_config

    claimed = RunDirectory.claim(run_dir, load_config(path).to_dict(), resume=True, overwrite=False)
    assert claimed.mode == "resume"
    claimed.release()


def test_an_earlier_versions_partial_run_and_a_dead_drivers_folder_are_ours(tmp_path):
    """Run directories without a manifest that a harness run left: an earlier version's
    (config.yaml and trials/) and a driver killed before its manifest (our lock file)."""
    legacy, dead = tmp_path / "legacy", tmp_path / "dead"
    _fake_run(legacy)
    (legacy / MANIFEST_FILE).unlink()
    dead.mkdir()
    (dead / LOCK_FILE).write_text("12345\n")
    (dead / "config.yaml").write_text("name: r\n")
    for path in (legacy, dead):
        with pytest.raises(RunRefused, match="already holds an unfinished run"):
            RunDirectory.claim(path, CONFIG, resume=False, overwrite=False)
        claimed = RunDirectory.claim(path, CONFIG, resume=False, overwrite=True)
        assert claimed.mode == "overwrite"
        claimed.clear()
        claimed.release()
        assert [p.name for p in path.iterdir()] == [LOCK_FILE]


def test_a_failed_start_in_a_folder_the_user_made_keeps_the_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o750)
    claimed = RunDirectory.claim(folder, CONFIG, resume=False, overwrite=False)
    (folder / "trials").mkdir()
    assert claimed.release(discard=True) is True
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert folder.stat().st_mode & 0o777 == 0o750


def test_a_lock_on_a_removed_lock_file_is_refused(tmp_path, monkeypatch):
    """The driver we waited behind removed its folder before unlocking: our lock would guard
    an unlinked file, so the claim is refused."""
    import fcntl

    import harness.rundir

    real_flock = fcntl.flock

    def flock_after_removal(handle, operation):
        (tmp_path / "r" / LOCK_FILE).unlink()
        return real_flock(handle, operation)

    monkeypatch.setattr(harness.rundir.fcntl, "flock", flock_after_removal)
    with pytest.raises(RunError, match="was just removed by another harness run"):
        RunDirectory.claim(tmp_path / "r", CONFIG, resume=False, overwrite=False)


def test_interrupted_while_starting_says_nothing_was_kept(tmp_path, capsys, monkeypatch):
    import harness.launch

    def interrupted(address, ship_code=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(harness.launch, "connect", interrupted)
    path = write_config(tmp_path, tiny_config(tmp_path))
    assert main(["run", str(path)]) == 130
    assert _errors(capsys.readouterr().err) == [
        "harness: error: interrupted; nothing was kept: run the same command again"
    ]
    assert not (tmp_path / "runs" / "tiny").exists()


def test_only_harness_run_handles_sigterm(tmp_path):
    """Other commands keep the default SIGTERM (the data prepare workers they fork would
    otherwise inherit a handler that prints a traceback each)."""
    code = (
        "import signal, sys; from harness.cli import main; "
        "rc = main(['data', 'verify', sys.argv[1]]); "
        "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL; print('default', rc)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "none")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.stdout.strip() == "default 2", result.stderr


def test_a_report_that_cannot_be_written_fails_the_run_with_exit_1(
    ray_session, tmp_path, capsys, monkeypatch
):
    import reports

    def disk_full(*args, **kwargs):
        raise reports.ReportError("report.html: No space left on device")

    monkeypatch.setattr(reports, "write_report", disk_full)
    path = write_config(tmp_path, tiny_config(tmp_path, grid={"methods": ["equal"]}))
    assert main(["run", str(path)]) == EXIT_FAILED
    assert _errors(capsys.readouterr().err) == [
        "harness: error: the trials ended but the report could not be written (report.html: "
        "No space left on device); after fixing that, harness run --resume writes it"
    ]


def test_an_unknown_option_points_at_its_commands_help():
    result = _harness("data", "verify", "d", "--bogus")
    assert _errors(result.stderr) == [
        "harness: error: unrecognized arguments: --bogus (see harness data verify --help)"
    ]


def test_a_run_name_that_is_a_file_names_the_name(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(RunRefused, match=r"^name: the run directory .*afile \(output.dir/name\)"):
        RunDirectory.claim(tmp_path / "afile", CONFIG, resume=False, overwrite=True)
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_trial_that_started_keeps_its_experiment_on_resume(tmp_path):
    """A trial with an attempt may have saved a checkpoint before its first report: a
    --resume of a changed experiment is then refused, as for one that reported."""
    path = tmp_path / "r"
    _fake_run(path, trained=False)
    record = path / "trials" / "a.json"
    record.write_text(json.dumps({"status": "pending", "rows": {}, "attempts": [{"start": 1}]}))
    with pytest.raises(RunRefused, match="differs from"):
        RunDirectory.claim(
            path, {"name": "r", "train": {"epochs": 9}}, resume=True, overwrite=False
        )


def test_resume_of_a_run_written_before_a_new_config_section(tmp_path):
    """A run directory whose config.yaml predates a section of the schema (here ``tracking``,
    absent from the stored file, its default in today's) resumes: the stored file is read
    through today's schema before the comparison."""
    from harness.config import parse_config
    from tests.conftest import tiny_config

    today = parse_config(tiny_config(tmp_path)).to_dict()
    stored = {k: v for k, v in today.items() if k != "tracking"}
    path = tmp_path / "old"
    _fake_run(path, trained=True, config=stored)
    claimed = RunDirectory.claim(path, today, resume=True, overwrite=False)
    assert claimed.mode == "resume"
    claimed.release(discard=True)
    changed = {**today, "train": {**today["train"], "epochs": 7}}
    with pytest.raises(RunRefused, match=r"differs from .* at train\.epochs"):
        RunDirectory.claim(path, changed, resume=True, overwrite=False)
