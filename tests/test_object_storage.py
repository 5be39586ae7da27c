"""Object storage as a shared-nothing cluster uses it: an S3-compatible server (moto) on
localhost, started and stopped here, holding a prepared data set (``data.prepared: s3://...``)
and the checkpoints (``output.storage: s3://...``). Credentials and endpoint reach pyarrow
through the usual AWS variables, as on a cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pytest
import torch

from deepchest.data import DatasetError
from deepchest.data.packed import content_id, load_packed
from deepchest.data.prepare import exclusive_lock, prepare
from harness.cli import main
from harness.storage import remote_source, stage_prepared
from tests.conftest import REPO, tiny_config, write_config
from tests.drivers import Driver, free_port, records, until
from tests.test_packed import S, make_index, write_pngs

pytestmark = pytest.mark.timeout(900)

BUCKET = "harness"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on localhost with one bucket; yields the AWS variables that reach it
    (also set in this process for the module's tests)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "moto did not start in 60 s"
                time.sleep(0.2)
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            access_key="testing",
            secret_key="testing",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        yield env
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def s3_fs() -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(f"s3://{BUCKET}")[0]


def upload(folder: Path, prefix: str) -> str:
    """Copy a local folder to ``s3://harness/<prefix>``; returns that URI."""
    pafs.copy_files(str(folder), f"{BUCKET}/{prefix}", pafs.LocalFileSystem(), s3_fs())
    return f"s3://{BUCKET}/{prefix}"


def listing(prefix: str) -> list[str]:
    selector = pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    infos = s3_fs().get_file_info(selector)
    return sorted(i.path.split(f"{BUCKET}/{prefix}/", 1)[1] for i in infos if i.is_file)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A prepared NIH-like folder: 40 PNGs at 16 px in shards of 4 rows."""
    tmp = tmp_path_factory.mktemp("packed")
    paths = write_pngs(tmp / "raw", 40)
    out = tmp / "nih-16"
    prepare(make_index(paths, tmp / "raw"), out, S, workers=2, shard_size=4)
    return out


def _waits_on_lock(pid: int) -> bool:
    """The process is blocked waiting for a flock (``/proc/locks`` lists waiters with ``->``)."""
    lines = Path("/proc/locks").read_text().splitlines()
    return any("->" in line and "FLOCK" in line and line.split()[5] == str(pid) for line in lines)


STAGE = """
import json, sys
from harness.storage import stage_prepared
lines = []
path = stage_prepared(sys.argv[1], sys.argv[2], say=lines.append)
print(json.dumps({"path": str(path), "lines": lines}))
"""


def test_staged_once_per_node_verified_and_reused(s3, packed, tmp_path):
    uri = upload(packed, "data/nih-16")
    cache = tmp_path / "cache"
    manifest = json.loads((packed / "manifest.json").read_text())
    name = f"nih-{S}px-{content_id(manifest)[:16]}"
    # two trials starting on one node at once: both wait on the lock this test holds until
    # both are up; then one downloads, the other waits for it and reuses the copy
    procs = []
    try:
        with exclusive_lock(cache / "prepared" / f"{name}.lock"):
            for _ in range(2):
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-c", STAGE, uri, str(cache)],
                        cwd=REPO,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            deadline = time.monotonic() + 120
            while not all(_waits_on_lock(p.pid) for p in procs):
                assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
                time.sleep(0.1)
        outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    assert outs[0]["path"] == outs[1]["path"]
    staging = [line for out in outs for line in out["lines"] if line.startswith("staging ")]
    assert len(staging) == 1, outs
    local = Path(outs[0]["path"])
    assert local.parent == cache / "prepared" and local.name.startswith("nih-16px-")
    assert sorted(p.name for p in (cache / "prepared").iterdir()) == [
        local.name,
        f"{local.name}.lock",
    ]

    original, _ = load_packed(packed)
    staged, info = load_packed(local)
    assert not info.verified  # verified once while staging; the time is in its manifest
    for split in original:
        assert torch.equal(original[split].images, staged[split].images)
        assert torch.equal(original[split].labels, staged[split].labels)

    said = []  # a later run: no download
    assert stage_prepared(uri, str(cache), say=said.append) == local and not said
    assert remote_source({"prepared": uri, "dataset": "nih", "tasks": "all"}) == dict(
        json.loads((packed / "manifest.json").read_text())["counts"]
    )


def test_a_corrupt_or_unfinished_upload_is_refused_in_one_line(s3, packed, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(packed, corrupt)
    with open(corrupt / "images.npy", "r+b") as f:
        f.seek(-7, os.SEEK_END)
        f.write(b"\xff" * 7)
    uri = upload(corrupt, "data/corrupt")
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=r"shard 9 \(rows 36 .. 39\) differs from its sha256"):
        stage_prepared(uri, str(cache), say=lambda line: None)
    assert [p.name for p in (cache / "prepared").iterdir()] == [
        p.name for p in (cache / "prepared").glob("*.lock")
    ]  # nothing under a data set's name, no partial copy

    manifest = json.loads((packed / "manifest.json").read_text())
    unfinished = tmp_path / "unfinished"
    shutil.copytree(packed, unfinished)
    (unfinished / "manifest.json").write_text(json.dumps({**manifest, "state": "running"}))
    uri = upload(unfinished, "data/unfinished")
    with pytest.raises(DatasetError) as exc:
        stage_prepared(uri, str(cache))
    assert str(exc.value) == (
        f"data.prepared: {uri}: the prepare is not complete (state 'running'); finish it with "
        "harness data prepare and copy the folder again"
    )


def test_validate_reads_the_remote_manifest(s3, packed, tmp_path, capsys):
    uri = upload(packed, "data/validate")
    base = {"dataset": "nih", "image_size": S}
    cases = {
        f"s3://{BUCKET}/data/nowhere": f"data.prepared: s3://{BUCKET}/data/nowhere: no "
        "manifest.json; not a prepared data set",
        "s3://nobucket/nih": "data.prepared: s3://nobucket/nih: no bucket 'nobucket' there",
        uri: None,
    }
    for where, expected in cases.items():
        cfg = tiny_config(tmp_path, data={**base, "prepared": where}, train={"batch_size": 8})
        cfg["data"].pop("num_samples")
        rc = main(["validate", str(write_config(tmp_path, cfg))])
        captured = capsys.readouterr()
        if expected:
            assert rc == 2 and expected in captured.err, captured.err
        else:
            assert rc == 0, captured.err
    cfg = tiny_config(
        tmp_path,
        data={**base, "prepared": uri},
        train={"batch_size": 8},
        output={"storage": "s3://nobucket/runs"},
    )
    cfg["data"].pop("num_samples")
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2  # writes would fail later
    assert "output.storage: s3://nobucket/runs: no bucket 'nobucket' there" in (
        capsys.readouterr().err
    )
    cfg = tiny_config(tmp_path, data={**base, "prepared": uri, "tasks": ["Nodule", "Mass"]})
    cfg["data"].pop("num_samples")
    assert main(["validate", str(write_config(tmp_path, cfg))]) == 2
    assert "data.tasks: unknown task 'Mass'" in capsys.readouterr().err


def _grid(tmp_path: Path, prepared: str, storage: str | None) -> dict:
    cfg = tiny_config(
        tmp_path,
        name="s3",
        data={"dataset": "nih", "image_size": S, "prepared": prepared, "augment": True},
        grid={"methods": ["rlw", "deepchest"], "seeds": [0]},
        train={"epochs": 3, "batch_size": 8},
        output={"dir": str(tmp_path / "runs"), "storage": storage},
    )
    cfg["data"].pop("num_samples")
    return cfg


def _tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    trials = trials[["trial_id", "status", "best_epoch", "test_mean_auroc", "val_mean_auroc"]]
    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet").drop(columns="train_time_s")
    epochs = epochs.sort_values(["trial_id", "epoch", "split", "task"]).reset_index(drop=True)
    return trials.sort_values("trial_id").reset_index(drop=True), epochs


@pytest.mark.slow  # about 50 s on 2 cores (a driver killed mid-grid): `pytest -m slow`
def test_a_grid_on_object_storage_survives_a_driver_kill9(ray_session, s3, packed, tmp_path):
    """Data staged from S3, checkpoints only in S3, the driver killed after the first epoch
    report, ``--resume``: the tables equal those of the same grid run from the local folder
    with local checkpoints, and the run directory holds no checkpoint."""
    straight = tmp_path / "straight"
    straight.mkdir()
    assert main(["run", str(write_config(straight, _grid(straight, str(packed), None)))]) == 0
    expected = _tables(straight / "runs" / "s3")

    uri = upload(packed, "data/e2e")
    storage = f"s3://{BUCKET}/checkpoints"
    config = write_config(tmp_path, _grid(tmp_path, uri, storage))
    run_dir = tmp_path / "runs" / "s3"
    first = Driver(config, log=tmp_path / "first.log", env=s3)
    until(lambda: any(r.get("rows") for r in records(run_dir).values()), first, "an epoch report")
    first.kill9()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    prefix = f"checkpoints/s3-{manifest['run_id']}/checkpoints"
    saved = {name.split("/")[0] for name in listing(prefix) if "/epoch-" in name}
    assert saved  # a trial had an epoch state in S3 to continue from

    second = Driver(config, "--resume", log=tmp_path / "second.log", env=s3)
    assert second.wait() == 0, second.log.read_text()[-3000:]
    trials, epochs = _tables(run_dir)
    pd.testing.assert_frame_equal(trials, expected[0])
    pd.testing.assert_frame_equal(epochs, expected[1])
    assert manifest["checkpoints"] == f"{storage}/s3-{manifest['run_id']}/checkpoints"
    kept = listing(prefix)  # each finished trial keeps its best weights alone
    assert kept == sorted(
        f"{t}/best-{b:04d}.pt" for t, b in zip(trials.trial_id, trials.best_epoch, strict=True)
    )
    assert not list(run_dir.rglob("*.pt")) and not list(run_dir.rglob("checkpoint_*"))
    assert (run_dir / "report.html").is_file()
    for trial_id in saved:  # continued from S3: this attempt's first report is a later epoch
        results = sorted((run_dir / "ray").glob(f"tune-*/{trial_id}/result.json"))
        assert json.loads(results[-1].read_text().splitlines()[0])["epoch"] > 1, trial_id
