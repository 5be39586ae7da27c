"""A local autoscaling Ray cluster for tests, started and ended by pid.

``ray.cluster_utils.AutoscalingCluster`` cannot be used here: its ``start`` and ``shutdown`` run
``ray stop --force``, which ends every Ray on the machine (the test session's own included), and
Ray 2.60's wheel lacks the example config it reads. This starts the same thing (a head whose
autoscaler uses Ray's fake multi-node provider, which launches worker nodes as local raylets)
with ``ray start --head`` under its own ``RAY_TMPDIR``, and ends exactly the processes that carry
it. Not a test file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.drivers import end_processes, free_port, processes_of


class FakeAutoscalingCluster:
    """A head with ``head_cpus`` CPUs and an autoscaler that adds nodes of
    ``worker_node_types`` (the autoscaler's ``available_node_types`` format: ``resources``,
    ``min_workers``, ``max_workers``, ``node_config``) as the demand asks."""

    def __init__(self, head_cpus: int, worker_node_types: dict[str, dict[str, Any]]):
        self.ray_tmp = tempfile.mkdtemp(prefix="ha", dir="/tmp")  # short: socket paths
        from ray.util import get_node_ip_address

        self.port = free_port()
        # the fake provider starts its nodes against this address (its default is port 6379)
        self.address = f"{get_node_ip_address()}:{self.port}"
        self.env = {
            **os.environ,
            "RAY_TMPDIR": self.ray_tmp,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "disabled",
            "RAY_FAKE_CLUSTER": "1",  # the fake multi-node provider
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        }
        self.env.pop("RAY_ADDRESS", None)
        config = {
            "cluster_name": "harness-test",
            "max_workers": sum(t["max_workers"] for t in worker_node_types.values()),
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
                "gcs_address": self.address,
            },
            "available_node_types": {
                **worker_node_types,
                "ray.head.default": {
                    "resources": {"CPU": head_cpus},
                    "node_config": {},
                    "max_workers": 0,
                },
            },
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5,  # no node leaves while the test runs
            "auth": {},
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
        }
        self.config_path = Path(self.ray_tmp) / "autoscaling.json"
        self.config_path.write_text(json.dumps(config))
        self.head_cpus = head_cpus

    def start(self) -> None:
        ray = Path(sys.executable).with_name("ray")
        subprocess.run(
            [str(ray), "start", "--head", f"--port={self.port}"]
            + [f"--num-cpus={self.head_cpus}", "--num-gpus=0", "--include-dashboard=false"]
            + ["--object-store-memory=300000000"]
            + [f"--autoscaling-config={self.config_path}"],
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def shutdown(self) -> None:
        end_processes(processes_of(None, self.ray_tmp))
        shutil.rmtree(self.ray_tmp, ignore_errors=True)
