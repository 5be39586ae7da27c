"""Shared fixtures: one local Ray per test session, tiny experiment files."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")

REPO = Path(__file__).resolve().parent.parent

# the data cache (staged data sets, records of verified copies) of this session only, never
# the user's ~/.cache. Made once by the pytest process; Ray's workers, which import this
# module when they unpickle a test's function, inherit it and make none of their own
if not os.environ.get("HARNESS_TEST_CACHE"):
    _CACHE = tempfile.mkdtemp(prefix="harness-test-cache-")
    os.environ["HARNESS_TEST_CACHE"] = os.environ["XDG_CACHE_HOME"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)


@pytest.fixture(scope="session")
def ray_session():
    """A 2-CPU local Ray, started once for the whole session."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def tiny_config(tmp_path: Path, **sections) -> dict:
    """A grid that trains in seconds: 240 synthetic 32 px images, the small CNN, 2 epochs."""
    cfg = {
        "name": "tiny",
        "data": {"dataset": "synthetic", "image_size": 32, "num_samples": 240},
        "grid": {"methods": ["equal", "deepchest"], "seeds": [0], "backbones": ["simple_cnn"]},
        "train": {"epochs": 2, "batch_size": 32},
        "resources": {"cpus_per_worker": 1},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def write_config(tmp_path: Path, cfg: dict, name: str = "experiment.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
