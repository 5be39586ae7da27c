"""A simulated two-node Ray cluster (ray.cluster_utils.Cluster), joined by address.

Runs in a subprocess because the test session already holds a local Ray.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, tiny_config

pytestmark = pytest.mark.timeout(420)

SCRIPT = textwrap.dedent(
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
    outcome = run_experiment(cfg, address=cluster.address, progress=LineProgress(2))
    import pandas as pd
    trials = pd.read_parquet(outcome.run_dir / "results" / "trials.parquet")
    manifest = json.loads((outcome.run_dir / "manifest.json").read_text())
    print("RESULT", json.dumps({"status": sorted(trials.status),
                                "cpus": manifest["cluster_resources"]["CPU"]}))
    cluster.shutdown()
    """
)


def test_grid_runs_on_a_two_node_cluster(tmp_path):
    cfg = tiny_config(tmp_path, name="cluster")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=400,
    )
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    found = json.loads(lines[0].removeprefix("RESULT "))
    assert found == {"status": ["completed", "completed"], "cpus": 2.0}
