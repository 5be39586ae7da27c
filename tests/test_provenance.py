"""Where and how often each trial ran, and every attempt of the run, as a user reads them:
`harness run` on a real Ray, then trials.parquet, manifest.json, the trial records and the
report. A run interrupted by SIGTERM (a real driver in a subprocess) and resumed counts the
interrupted trial's restart; a simulated two-node cluster lists both nodes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest

from harness.cli import main
from harness.errors import EXIT_TERMINATED
from tests.conftest import REPO, tiny_config, write_config

pytestmark = pytest.mark.timeout(420)


def _manifest(run_dir):
    return json.loads((run_dir / "manifest.json").read_text())


def test_trials_record_their_node_device_and_attempts(ray_session, tmp_path):
    cfg = tiny_config(tmp_path, grid={"methods": ["equal"]})
    path = write_config(tmp_path, cfg)
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "tiny"

    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    (row,) = trials.to_dict("records")
    node_ids = {n["NodeID"] for n in ray_session.nodes() if n["Alive"]}
    assert row["hostname"] == socket.gethostname()
    assert row["node_ip"] == ray_session.util.get_node_ip_address()
    assert row["node_id"] in node_ids
    assert row["device"] == "cpu" and pd.isna(row["gpu_name"])
    assert row["cpu_threads"] == 1 and pd.isna(row["worker_hosts"])
    assert row["attempts"] == 1

    manifest = _manifest(run_dir)
    assert "resumed_at" not in manifest
    (attempt,) = manifest["attempts"]
    assert attempt["outcome"] == "finished" and attempt["resumed"] is False
    assert attempt["trials_to_run"] == 1 and attempt["ended_at"] >= attempt["started_at"]
    assert attempt["command"] == " ".join(sys.argv)  # the command line that ran it
    (node,) = manifest["nodes"]
    assert node["hostname"] == socket.gethostname() and node["cpus"] == 2.0
    assert node["node_id"] in node_ids and node["gpus"] == 0.0
    (trial_attempt,) = manifest["trials"]["equal-simple_cnn-s0"]["attempts"]
    assert trial_attempt["status"] == "completed"
    assert trial_attempt["hostname"] == socket.gethostname()
    assert trial_attempt["node_id"] == row["node_id"]

    html = (run_dir / "report.html").read_text()
    assert f"<code>cpu</code> on 1 node: {socket.gethostname()} (2 CPU)" in html
    assert "Attempts (1)" in html and "retried" not in html.split("Trials</h3>")[1]

    # a resume of the finished run is an attempt of the run, not of its trials
    assert main(["run", str(path), "--resume"]) == 0
    manifest = _manifest(run_dir)
    first, again = manifest["attempts"]
    assert first == attempt
    assert again["resumed"] is True and again["trials_to_run"] == 0
    assert again["outcome"] == "finished"
    assert len(manifest["trials"]["equal-simple_cnn-s0"]["attempts"]) == 1
    assert pd.read_parquet(run_dir / "results" / "trials.parquet").attempts.tolist() == [1]


def _wait_for(condition, driver, deadline_s: float, what: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert driver.poll() is None, f"the driver ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _records(run_dir) -> dict[str, dict]:
    out = {}
    for path in (run_dir / "trials").glob("*.json"):
        with contextlib.suppress(OSError, ValueError):  # replaced while read
            out[path.stem] = json.loads(path.read_text())
    return out


def test_an_interrupted_trial_counts_its_restart_and_the_report_marks_it(ray_session, tmp_path):
    """Two trials one after the other; SIGTERM once the first has finished and the second has
    trained an epoch; --resume: the second was started twice, the first once."""
    cfg = tiny_config(
        tmp_path,
        data={"num_samples": 1200},
        train={"epochs": 4},
        resources={"max_concurrent_trials": 1},
    )
    path = write_config(tmp_path, cfg)
    run_dir = tmp_path / "runs" / "tiny"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}

    def first_done_second_trained():
        records = _records(run_dir)
        done = [t for t, r in records.items() if r["status"] == "completed"]
        running = [t for t, r in records.items() if r["status"] == "running" and r["rows"]]
        return len(done) == 1 and len(running) == 1

    with open(tmp_path / "stderr.txt", "w") as err:
        driver = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", str(path)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**env, "RAY_num_cpus": "2"},
        )
        try:
            _wait_for(first_done_second_trained, driver, 300, "one trial done, one training")
            driver.send_signal(signal.SIGTERM)
            assert driver.wait(timeout=120) == EXIT_TERMINATED
        finally:
            if driver.poll() is None:
                driver.kill()
    records = _records(run_dir)
    finished = next(t for t, r in records.items() if r["status"] == "completed")
    interrupted = next(t for t in records if t != finished)
    stopped = _manifest(run_dir)["attempts"]
    assert [a["outcome"] for a in stopped] == ["interrupted"]
    assert stopped[0]["ended_at"] and stopped[0]["trials_to_run"] == 2

    assert main(["run", str(path), "--resume"]) == 0
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet").set_index("trial_id")
    assert trials.attempts.to_dict() == {finished: 1, interrupted: 2}
    assert set(trials.status) == {"completed"}
    assert (trials.hostname == socket.gethostname()).all()

    manifest = _manifest(run_dir)
    first, resumed = manifest["attempts"]
    assert first == stopped[0]
    assert resumed["resumed"] is True and resumed["trials_to_run"] == 1
    assert resumed["outcome"] == "finished" and resumed["started_at"] >= first["ended_at"]
    assert manifest["started_at"] == first["started_at"]
    tries = manifest["trials"][interrupted]["attempts"]
    assert [a["status"] for a in tries] == ["interrupted", "completed"]
    assert tries[0]["hostname"] == socket.gethostname()  # it had reported where it ran
    assert [a["status"] for a in manifest["trials"][finished]["attempts"]] == ["completed"]

    html = (run_dir / "report.html").read_text()
    trials_table = html.split("Trials</h3>")[1]
    assert trials_table.count("retried</span>") == 1
    assert "Attempts (2)" in html and "2 trials to run; interrupted" in html
    assert "resumed, 1 trial to run; ended its trials, then wrote this report" in html
    assert main(["report", str(run_dir)]) == 0  # rebuilt: the attempt's outcome is known now
    assert "resumed, 1 trial to run; finished" in (run_dir / "report.html").read_text()
    assert f"on 1 node: {socket.gethostname()} (2 CPU)" in html  # this attempt's local Ray


CLUSTER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from ray.cluster_utils import Cluster
    from harness.config import parse_config
    from harness.launch import run_experiment
    from harness.progress import LineProgress

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cfg = parse_config(json.loads(sys.argv[1]))
    try:
        outcome = run_experiment(cfg, address=cluster.address, progress=LineProgress(2))
        print("RUN_DIR", outcome.run_dir)
    finally:
        cluster.shutdown()
    """
)


@pytest.mark.slow  # about 30 s (two raylets): `pytest -m slow`
def test_a_two_node_cluster_lists_each_node_and_where_each_trial_ran(tmp_path):
    cfg = tiny_config(tmp_path, name="cluster", grid={"seeds": [0, 1]})
    result = subprocess.run(
        [sys.executable, "-c", CLUSTER_SCRIPT, json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cluster"
    manifest = _manifest(run_dir)
    nodes = manifest["nodes"]
    assert len(nodes) == 2 and [n["cpus"] for n in nodes] == [1.0, 1.0]
    assert sum(n["driver"] for n in nodes) == 1
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert set(trials.node_id) <= {n["node_id"] for n in nodes}
    assert (trials.attempts == 1).all() and (trials.device == "cpu").all()
    host = socket.gethostname()
    assert f"on 2 nodes: {host} (1 CPU), {host} (1 CPU)" in (run_dir / "report.html").read_text()


def test_a_run_from_before_nodes_and_attempts_still_reports(ray_session, tmp_path):
    """A run directory written by an earlier harness: no placement columns, device
    "cuda:<model>", a manifest with resumed_at and no attempts or nodes. It reports, and a
    --resume of it turns resumed_at into attempts."""
    import pyarrow.parquet as pq

    cfg = tiny_config(tmp_path, grid={"methods": ["equal"]})
    path = write_config(tmp_path, cfg)
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    table = pq.read_table(run_dir / "results" / "trials.parquet")
    new = ["hostname", "node_ip", "node_id", "gpu_name", "cpu_threads", "worker_hosts", "attempts"]
    old = table.drop_columns(new).to_pandas()
    old["device"] = "cuda:NVIDIA H100"
    old.to_parquet(run_dir / "results" / "trials.parquet", index=False)
    manifest = _manifest(run_dir)
    for key in ("attempts", "nodes"):
        del manifest[key]
    manifest["resumed_at"] = ["2025-01-31T13:00:00+00:00"]
    manifest["started_at"] = "2025-01-31T12:00:00+00:00"
    for entry in manifest["trials"].values():
        del entry["attempts"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))

    assert main(["report", str(run_dir)]) == 0
    html = (run_dir / "report.html").read_text()
    assert "<code>cuda (NVIDIA H100)</code> on a host with" in html
    assert "retried" not in html.split("Trials</h3>")[1]

    # the old manifest's start and resume become attempts; the table gains the columns
    # again from the trial records
    assert main(["run", str(path), "--resume"]) == 0
    attempts = _manifest(run_dir)["attempts"]
    assert [a["started_at"] for a in attempts[:2]] == [
        "2025-01-31T12:00:00+00:00",
        "2025-01-31T13:00:00+00:00",
    ]
    assert [a["resumed"] for a in attempts] == [False, True, True]
    assert attempts[1]["outcome"] == "finished" and attempts[2]["outcome"] == "finished"
