"""What every Ray worker of a run gets (``launch.code_runtime_env``, ``harness.worker_setup``)
and where Tune's log records go during a fit (``launch._logged_to``): pure functions, no Ray.
The end-to-end case (a run from a folder holding a ``methods`` package of the user's) is in
tests/test_rundir.py."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from harness import launch
from harness.worker_setup import CODE_PACKAGES
from tests.conftest import REPO

HOOK = "harness.worker_setup.import_project"


def test_a_local_run_imports_the_drivers_packages_first(monkeypatch):
    monkeypatch.delenv(launch.JOB_CONFIG_ENV, raising=False)
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = launch.code_runtime_env(None, ship_code=True)
    assert env["worker_process_setup_hook"] == HOOK
    # this checkout (an editable install) first, the user's PYTHONPATH kept after it
    assert env["env_vars"] == {"PYTHONPATH": f"{REPO}:/elsewhere"}
    assert "py_modules" not in env


def test_joining_a_cluster_ships_the_packages_unless_told_not_to(monkeypatch):
    monkeypatch.delenv(launch.JOB_CONFIG_ENV, raising=False)
    shipped = launch.code_runtime_env("10.0.0.1:6379", ship_code=True)
    assert [m.__name__ for m in shipped["py_modules"]] == list(CODE_PACKAGES)
    assert shipped["worker_process_setup_hook"] == HOOK and "env_vars" not in shipped
    assert launch.code_runtime_env("10.0.0.1:6379", ship_code=False) == {
        "worker_process_setup_hook": HOOK
    }


def test_a_submitted_jobs_own_modules_and_hook_are_left_alone(monkeypatch):
    job = {
        "runtime_env": {"py_modules": ["s3://bucket/code.zip"], "worker_process_setup_hook": "x.y"}
    }
    monkeypatch.setenv(launch.JOB_CONFIG_ENV, json.dumps(job))
    assert launch.code_runtime_env("auto", ship_code=True) == {}


def test_the_hook_imports_the_four_packages_in_a_fresh_interpreter():
    code = (
        "import sys; from harness.worker_setup import import_project; import_project(); "
        "print(sorted(m for m in ('harness', 'methods', 'deepchest', 'reports', 'torch._C') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    ).stdout
    # the packages, and not torch (torch._C: a lazy `torch` module is not torch loaded): most
    # workers (Serve's, Train's controller) never need it
    assert out.strip() == "['deepchest', 'harness', 'methods', 'reports']"


@pytest.fixture
def loggers():
    parent = logging.getLogger("harness_test_ray")
    child = logging.getLogger("harness_test_ray.tune")
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record)

    handler = Collect()
    parent.addHandler(handler)
    parent.propagate = False
    yield child, seen
    parent.removeHandler(handler)


def test_tune_tracebacks_go_to_the_log_and_its_warnings_to_the_terminal(loggers):
    child, seen = loggers
    stream = io.StringIO()
    with launch._logged_to(stream, child.name):
        logging.getLogger(f"{child.name}.execution").warning("no trial is running: resources?")
        try:
            raise ValueError("bad weights")
        except ValueError:
            logging.getLogger(f"{child.name}.execution").exception("Trial task failed")
        child.error("Trials did not complete: [a]")
    assert [r.getMessage() for r in seen] == ["no trial is running: resources?"]
    logged = stream.getvalue()
    assert "Trial task failed" in logged and "ValueError: bad weights" in logged
    assert "Trials did not complete" in logged and "resources?" in logged
    # afterwards, as before
    assert child.propagate and not child.handlers
    child.error("later")
    assert seen[-1].getMessage() == "later"
