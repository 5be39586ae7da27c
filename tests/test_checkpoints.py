"""The run's checkpoint store (``harness.checkpoints``) and bit-identical continuation of an
interrupted trial on CPU."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile

import pytest
import torch

from harness.checkpoints import CheckpointStore, storage_problem, store_uri
from harness.trainloop import MemoryReporter, train_trial
from tests.test_trainloop import interrupted, spec_for

METRICS = (
    "status",
    "epochs_completed",
    "best_epoch",
    "val_mean_auroc",
    "test_mean_auroc",
    "test_mean_accuracy",
    "test_mean_auprc",
    "test_macro_f1",
    "test_macro_f1_tuned",
    "test_exact_match",
)


def _rows(out):  # everything but the clock; repr: NaN == NaN
    return repr([{k: v for k, v in r.items() if k != "train_time_s"} for r in out["rows"]])


def _temp_leftovers() -> set[str]:
    prefixes = ("harness-ckpt-", "checkpoint_tmp_")
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith(prefixes)}


@pytest.mark.parametrize(
    ("method", "data"),
    [("rlw", {}), ("deepchest", {"augment": True, "hflip": True})],
    ids=["rlw", "deepchest-augment"],
)
def test_interrupted_and_resumed_trial_is_bit_identical(tmp_path, method, data):
    """4 epochs straight vs the same trial stopped after epoch 2's save and continued from the
    store: the same rows (every epoch, every split) and the same summary metrics. ``rlw`` draws
    its weights from torch's global RNG; DeepChest with augmentation has method state and
    augmentation draws."""
    straight = train_trial(spec_for(tmp_path, method=method, epochs=4, data=data), MemoryReporter())
    before = _temp_leftovers()
    uri = "file://" + str(tmp_path / "store")  # a URI, as output.storage would give
    spec = spec_for(tmp_path, method=method, epochs=4, data=data, checkpoints=uri)
    interrupted(spec, after=2)
    reporter = MemoryReporter()
    resumed = train_trial(spec, reporter)
    assert [m["epoch"] for m in reporter.reports if not m["done"]] == [3, 4]
    assert _rows(resumed) == _rows(straight)
    assert repr([resumed[k] for k in METRICS]) == repr([straight[k] for k in METRICS])
    # the trial leaves its last epoch state until the driver has its final report and prunes
    # (ResultsCollector); nothing was left in the temp folder
    store = CheckpointStore(uri)
    assert store.trial_files(spec["trial_id"]) == [
        f"best-{resumed['best_epoch']:04d}.pt",
        "epoch-0004.pt",
    ]
    assert _temp_leftovers() <= before


def test_store_keeps_one_epoch_and_takes_the_newest_that_loads(tmp_path):
    """A save deletes the older epoch (and best weights no longer named); a newest file cut
    short by a crash is passed over for the previous complete one."""
    store = CheckpointStore(str(tmp_path / "s"))
    weights = {"w": torch.arange(3.0)}
    store.save("t", 1, {"epoch": 1, "best": {"epoch": 1}}, best_epoch=1, best_model=weights)
    store.save("t", 2, {"epoch": 2, "best": {"epoch": 1}}, best_epoch=1, best_model=weights)
    assert store.trial_files("t") == ["best-0001.pt", "epoch-0002.pt"]
    assert store.load_latest("t")["epoch"] == 2
    assert torch.equal(store.load_latest("t")["best_model"]["w"], weights["w"])
    # a crash while epoch 3 was written: the half file stays beside epoch 2
    data = (tmp_path / "s" / "t" / "epoch-0002.pt").read_bytes()
    (tmp_path / "s" / "t" / "epoch-0003.pt").write_bytes(data[: len(data) // 2])
    assert store.load_latest("t")["epoch"] == 2
    store.save("t", 3, {"epoch": 3, "best": {"epoch": 3}}, best_epoch=3, best_model=weights)
    assert store.trial_files("t") == ["best-0003.pt", "epoch-0003.pt"]
    store.finish("t", 3)
    assert store.trial_files("t") == ["best-0003.pt"]
    assert store.load_latest("t") is None and torch.equal(store.load_best("t")["w"], weights["w"])
    assert store.load_latest("never-saved") is None


def test_store_uri_and_storage_problems(tmp_path):
    assert (
        store_uri("s3://bucket/runs/", "grid", "ab12") == "s3://bucket/runs/grid-ab12/checkpoints"
    )
    assert (
        store_uri("s3://b/p?endpoint_override=localhost:9000&scheme=http", "g", "1")
        == "s3://b/p/g-1/checkpoints?endpoint_override=localhost:9000&scheme=http"
    )
    assert store_uri("relative", "g", "1") == f"{os.getcwd()}/relative/g-1/checkpoints"
    assert storage_problem(str(tmp_path / "not-yet")) is None  # made when the run saves
    assert storage_problem("file://" + str(tmp_path)) is None
    (tmp_path / "f").write_text("")
    assert (
        storage_problem(str(tmp_path / "f"))
        == f"output.storage: {tmp_path / 'f'} is a file, not a folder"
    )
    line = storage_problem("nosuch://bucket/x")
    assert line.startswith("output.storage: cannot open nosuch://bucket/x: ") and "\n" not in line


def _ddp_worker(rank, world, init_file, spec, crash_after, results):
    """One rank: straight through, or interrupted after ``crash_after`` and continued (each
    rank restores from the store into its own memory; rank 0 alone writes)."""
    import torch.distributed as dist

    from harness.trainloop import TorchCollective
    from tests.test_trainloop import Crash, CrashingReporter

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        if crash_after:
            with contextlib.suppress(Crash):
                train_trial(spec, CrashingReporter(crash_after), TorchCollective())
        out = train_trial(spec, MemoryReporter(), TorchCollective())
        results[(bool(crash_after), rank)] = (_rows(out), out["test_mean_auroc"])
    finally:
        dist.destroy_process_group()


def test_two_worker_trial_resumes_bit_identical(tmp_path):
    """DDP on 2 gloo processes, rlw (each rank draws from its own global RNG): interrupted
    after epoch 2 and continued from the store, both ranks end with the rows and test metric
    of an uninterrupted 2-worker run."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    for crash_after, store in ((0, None), (2, str(tmp_path / "store"))):
        spec = spec_for(tmp_path, method="rlw", epochs=3, checkpoints=store)
        init = tmp_path / f"init{crash_after}"
        mp.spawn(_ddp_worker, args=(2, str(init), spec, crash_after, results), nprocs=2, join=True)
    assert results[(True, 0)] == results[(True, 1)] == results[(False, 0)]


def test_s3_endpoint_comes_from_aws_endpoint_url(monkeypatch):
    """``AWS_ENDPOINT_URL`` redirects an ``s3://`` store (MinIO and the like): pyarrow then
    connects there; nothing listens on port 9 here, so the one line names that address."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = storage_problem("s3://bucket/runs?region=us-east-1")
    assert line.startswith("output.storage: cannot open s3://bucket/runs?region=us-east-1: ")
    assert "127.0.0.1" in line and "\n" not in line


def test_delete_store_removes_only_a_checkpoint_store(tmp_path):
    from harness.checkpoints import delete_store

    root = store_uri(str(tmp_path), "run", "id1")
    CheckpointStore(root).save("t", 1, {"best": {"epoch": None}}, None, None)
    (tmp_path / "keep").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint store"):
        delete_store(str(tmp_path / "keep"))
    delete_store(root)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]
    delete_store(root)  # gone already: nothing happens
    delete_store(None)


class _Faulty:
    """The store's file system with one method replaced (pyarrow's own cannot be patched)."""

    def __init__(self, fs, **replaced):
        self._fs, self._replaced = fs, replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(self._fs, name)


def test_a_kill_mid_write_never_leaves_a_cut_file_under_a_real_name(tmp_path):
    """Files are written as .partial and moved into place; a redone best epoch is rewritten;
    a file-system error other than a missing or cut file fails the load (Tune retries the
    attempt) instead of reading as "no checkpoint" and losing the real one at the next save."""
    store = CheckpointStore(str(tmp_path / "s"))
    real = store.fs
    old, new = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    store.save("t", 1, {"epoch": 1, "best": {"epoch": 1}}, best_epoch=1, best_model=old)

    def killed_before_move(src, dest):
        raise KeyboardInterrupt

    store.fs = _Faulty(real, move=killed_before_move)
    with pytest.raises(KeyboardInterrupt):
        store.save("t", 2, {"epoch": 2, "best": {"epoch": 2}}, best_epoch=2, best_model=new)
    store.fs = real
    assert store.trial_files("t") == ["best-0001.pt", "best-0002.pt.partial", "epoch-0001.pt"]
    assert store.load_latest("t")["epoch"] == 1
    # the retry redoes epoch 2 and its best weights; the partial file goes
    store.save("t", 2, {"epoch": 2, "best": {"epoch": 2}}, best_epoch=2, best_model=new)
    assert store.trial_files("t") == ["best-0002.pt", "epoch-0002.pt"]
    assert torch.equal(store.load_latest("t")["best_model"]["w"], new["w"])
    # a best file of the same epoch from an earlier attempt is replaced by this attempt's
    store.save("t", 2, {"epoch": 2, "best": {"epoch": 2}}, best_epoch=2, best_model=old)
    assert torch.equal(store.load_best("t")["w"], old["w"])

    def unreachable(path):
        raise OSError("connection reset by peer")

    store.fs = _Faulty(real, open_input_stream=unreachable)
    with pytest.raises(OSError, match="connection reset"):
        store.load_latest("t")


def test_a_restored_trial_that_fails_keeps_its_earlier_epochs_in_the_record(tmp_path):
    """``--resume`` resets the driver's record of an unfinished trial; the trial restores
    epochs 1-2 from the store and fails in epoch 3's report. The record still holds epochs
    1-3: the first report after a restore carries the restored rows too."""
    from harness.results import TrialRecord
    from tests.test_trainloop import Crash, CrashingReporter

    spec = spec_for(tmp_path, method="rlw", epochs=4, checkpoints=str(tmp_path / "store"))
    interrupted(spec, after=2)
    record = TrialRecord(tmp_path, {"trial_id": spec["trial_id"]})
    record.reset()  # what --resume does to a trial that did not end
    reporter = CrashingReporter(after=3)
    with pytest.raises(Crash):
        train_trial(spec, reporter)
    for metrics in reporter.reports:  # what the collector does with each epoch report
        record.add_epochs(json.loads(metrics["rows_json"]))
    assert sorted(record.data["rows"]) == ["epoch:1", "epoch:2", "epoch:3"]
    assert all(len(rows) == 2 * 14 for rows in record.data["rows"].values())  # train + val
