"""One `harness data prepare` + `harness run` per published layout, as a user runs them: tiny
NIH ChestX-ray14 and CheXpert trees prepared into packed folders, a ChestMNIST .npz read
directly, each trained on a tiny grid on the session's Ray."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from deepchest.data.packed import load_packed
from deepchest.inference import load_bundle
from harness.cli import main
from tests.bundles import png_bytes
from tests.conftest import tiny_config, write_config
from tests.test_readers import _chestmnist_arrays, make_chexpert, make_nih

TINY_TRAIN = {"epochs": 2, "batch_size": 8}


def _run(tmp_path, data: dict, methods: list[str]) -> pd.DataFrame:
    cfg = tiny_config(
        tmp_path,
        data={"image_size": 32, **data},
        grid={"methods": methods, "seeds": [0], "backbones": ["simple_cnn"]},
        train=TINY_TRAIN,
    )
    cfg["data"].pop("num_samples")
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert (run_dir / "report.html").is_file()
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    assert set(trials.status) == {"completed"}, trials[["trial_id", "status", "error"]]
    return pd.read_parquet(run_dir / "results" / "epochs.parquet")


def test_nih_prepare_then_run(ray_session, tmp_path, capsys):
    root = make_nih(tmp_path / "ChestX-ray14", layout="archives")
    # radiograph-sized files (predict refuses images under 32 px), all the same bytes
    image = png_bytes(np.random.default_rng(5).integers(0, 256, (64, 64), dtype=np.uint8))
    for path in root.rglob("*.png"):
        path.write_bytes(image)
    packed = tmp_path / "nih-40"
    assert (
        main(
            ["data", "prepare", "--dataset", "nih", "--root", str(root), "--out", str(packed)]
            + ["--image-size", "40", "--workers", "2"]
        )
        == 0
    )
    assert "test" in capsys.readouterr().out
    epochs = _run(tmp_path, {"dataset": "nih", "prepared": str(packed)}, ["equal", "pcgrad"])
    assert epochs.task.iloc[0] == "Atelectasis"
    assert set(epochs.split) == {"train", "val", "test"}
    # the exported model predicts a raw file of the tree exactly as its prepared row (decoded
    # at 40 px by prepare, resized to 32 by evaluation): the preprocessing of training
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["export", str(run_dir)]) == 0
    raw = next(root.rglob("*.png"))  # every image of the tiny tree is the same file
    capsys.readouterr()
    assert main(["predict", str(run_dir / "model"), str(raw), "--format", "json"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    splits, _ = load_packed(packed)
    prepared = splits["train"].images[0, 0].numpy()
    expected = load_bundle(run_dir / "model").predict(prepared[None])[0].probabilities
    assert [f["probability"] for f in printed["findings"]] == [float(p) for p in expected]


def test_chexpert_prepare_then_run_with_masked_uncertain_labels(ray_session, tmp_path):
    root = make_chexpert(tmp_path)
    packed = tmp_path / "chexpert-40"
    args = ["data", "prepare", "--dataset", "chexpert", "--root", str(root), "--out"]
    args += [str(packed), "--image-size", "40", "--workers", "2", "--uncertain", "ignore"]
    assert main(args) == 0
    epochs = _run(
        tmp_path,
        {"dataset": "chexpert", "prepared": str(packed), "tasks": ["Cardiomegaly", "Edema"]},
        ["equal", "mgda"],
    )
    assert sorted(set(epochs.task)) == ["Cardiomegaly", "Edema"]
    # uncertain labels are masked: fewer labelled images than images for some task
    train = epochs[(epochs.split == "train") & (epochs.epoch == 1)]
    assert train.n_labeled.min() < train.n_labeled.max() or (train.n_labeled < 40).any()
    assert np.isfinite(epochs[epochs.split == "train"].loss).all()


def test_chestmnist_npz_runs_directly(ray_session, tmp_path):
    path = tmp_path / "chestmnist.npz"
    np.savez_compressed(path, **_chestmnist_arrays(size=28))
    epochs = _run(tmp_path, {"dataset": "chestmnist", "root": str(path)}, ["equal"])
    assert len(set(epochs.task)) == 14


def test_run_refuses_a_prepared_folder_of_another_data_set(tmp_path, capsys):
    # refused before Ray starts (pre-flight), as a bad experiment file: exit 2
    root = make_nih(tmp_path / "nih")
    packed = tmp_path / "packed"
    args = ["data", "prepare", "--dataset", "nih", "--root", str(root), "--out", str(packed)]
    assert main(args + ["--image-size", "16", "--workers", "1"]) == 0
    cfg = tiny_config(tmp_path, data={"dataset": "chexpert", "prepared": str(packed)})
    cfg["data"].pop("num_samples")
    capsys.readouterr()
    assert main(["run", str(write_config(tmp_path, cfg))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.endswith(" ...")]  # start-up notes
    assert err == [f"harness: error: data.prepared: {packed} holds data set 'nih', not 'chexpert'"]


def test_chestmnist_folder_without_the_configured_size_names_the_files(tmp_path):
    from deepchest.data import DatasetError, load_splits

    for name, size in (("chestmnist.npz", 28), ("chestmnist_64.npz", 64)):
        np.savez_compressed(tmp_path / name, **_chestmnist_arrays(size=size))
    data = {"dataset": "chestmnist", "root": str(tmp_path), "image_size": 96, "tasks": "all"}
    try:
        load_splits(data)
    except DatasetError as exc:
        message = str(exc)
    assert "chestmnist.npz, chestmnist_64.npz and none of data.image_size 96 px" in message
    data["image_size"] = 64  # the published size present is picked
    assert load_splits(data)["train"].images.shape[-1] == 64
