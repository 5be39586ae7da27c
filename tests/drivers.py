"""``harness run`` as a user starts it: a driver subprocess with its own local Ray (isolated by
``RAY_TMPDIR``), watched through its run directory, stopped by signal or kill -9; every
process it started is ended afterwards, by pid. Not a test file: the crash, SIGTERM and
provenance tests share it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO


def records(run_dir: Path) -> dict[str, dict]:
    out = {}
    for path in (run_dir / "trials").glob("*.json"):
        try:
            out[path.stem] = json.loads(path.read_text())
        except ValueError:  # caught while replaced
            continue
    return out


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(pid: int | None, ray_tmp: str) -> list[psutil.Process]:
    """The descendants of ``pid`` and every other process whose environment carries
    ``RAY_TMPDIR=ray_tmp`` (Ray's daemons, reparented to init), ``pid`` itself excluded."""
    found = {}
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(pid).children(recursive=True):
                found[p.pid] = p
    for p in psutil.process_iter():
        if p.pid in found or p.pid == pid:
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get("RAY_TMPDIR") == ray_tmp:
                found[p.pid] = p
    return list(found.values())


def end_processes(processes: list[psutil.Process]) -> None:
    """kill -9 each, by pid, and wait for them."""
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(processes, timeout=30)


class Driver:
    """``harness run`` in a subprocess with its own local Ray (``RAY_TMPDIR``)."""

    def __init__(
        self,
        config: Path,
        *args: str,
        log: Path,
        env: dict[str, str] | None = None,
        cwd: Path = REPO,
        ray_tmp: str | None = None,
    ):
        """``cwd``: the driver's working directory; it runs with ``python -P``, so a folder
        there never shadows the installed project for the driver itself. ``ray_tmp``: another
        driver's, to run beside it on the same machine (as two runs of a user's would)."""
        self.ray_tmp = ray_tmp or tempfile.mkdtemp(prefix="hr", dir="/tmp")  # short: sockets
        env = {
            **os.environ,
            "RAY_TMPDIR": self.ray_tmp,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            **(env or {}),
        }
        env.pop("RAY_ADDRESS", None)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "harness.cli", "run", str(config), *args],
            cwd=cwd,
            env=env,
            stdout=open(log, "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def ray_processes(self) -> list[psutil.Process]:
        """Every process started for this driver (see :func:`processes_of`)."""
        return processes_of(self.proc.pid, self.ray_tmp)

    def kill9(self) -> None:
        """kill -9 of the driver, then of the Ray it started (by pid)."""
        family = self.ray_processes()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.cleanup(family)

    def cleanup(self, family: list[psutil.Process] | None = None) -> None:
        end_processes((family or []) + self.ray_processes())
        assert not self.ray_processes()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def wait(self, timeout: float = 300) -> int:
        try:
            rc = self.proc.wait(timeout)
        finally:
            self.cleanup() if self.proc.poll() is not None else self.kill9()
        return rc


def until(condition, driver: Driver, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if driver.proc.poll() is not None:
            driver.cleanup()
            pytest.fail(f"the driver ended before {what}:\n{driver.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            driver.kill9()
            pytest.fail(f"no {what} in {timeout:g} s:\n{driver.log.read_text()[-3000:]}")
        time.sleep(0.01)
