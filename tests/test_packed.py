"""Packing a real data set: decoding, the on-disk layout, resuming, bad images, the checks of
the loader, and ``harness data prepare`` / ``verify``. Every image is made on the fly."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deepchest.data import DatasetError
from deepchest.data import prepare as prep
from deepchest.data.index import ImageIndex
from deepchest.data.packed import inspect_packed, load_packed
from deepchest.data.prepare import TooManyBadImages, decode_image, prepare
from harness.cli import main
from tests.conftest import REPO

S = 16  # packed side
TASKS = ("Atelectasis", "Pleural Effusion", "Nodule")
SPLIT_CYCLE = ("train", "val", "train", "test", "train")


def smooth(rng: np.random.Generator, h: int, w: int, noise: float = 20) -> np.ndarray:
    """A uint8 grey image with structure (gradients) and noise, like a tiny radiograph."""
    y, x = np.mgrid[0:h, 0:w]
    base = 100 + 80 * np.sin(x / (3 + rng.random() * 4)) * np.cos(y / (4 + rng.random() * 3))
    return np.clip(base + rng.normal(0, noise, (h, w)), 0, 255).astype(np.uint8)


def by_hand(path: Path, size: int = S) -> np.ndarray:
    """The documented decoding, written out with Pillow: grey, stretched, BICUBIC."""
    with Image.open(path) as img:
        return np.asarray(img.convert("L").resize((size, size), Image.Resampling.BICUBIC))


def make_index(paths, root: Path, dataset: str = "nih", seed: int = 0, splits=None):
    n = len(paths)
    rng = np.random.default_rng(seed)
    return ImageIndex(
        paths=tuple(str(p) for p in paths),
        patients=tuple(f"p{i // 2}" for i in range(n)),
        splits=tuple(splits or [SPLIT_CYCLE[i % len(SPLIT_CYCLE)] for i in range(n)]),
        labels=(rng.random((n, len(TASKS))) < 0.4).astype(np.float32),
        mask=rng.random((n, len(TASKS))) < 0.8,
        task_names=TASKS,
        dataset=dataset,
        root=str(root),
    )


def write_pngs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = (24, 32) if i % 2 else (40, 40)
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(smooth(rng, h, w)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def small(tmp_path):
    """12 PNGs in interleaved splits, and their index."""
    root = tmp_path / "raw"
    paths = write_pngs(root, 12)
    return make_index(paths, root), paths


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    return text


def check_splits_by_hand(splits, info, index):
    """Each loaded image is the hand decoding of the index row that ``info`` says it is."""
    for split, data in splits.items():
        assert len(data) == info.counts[split]
        for i, j in enumerate(info.index_rows[split]):
            assert index.splits[j] == split
            np.testing.assert_array_equal(data.images[i, 0].numpy(), by_hand(index.paths[j]))
            np.testing.assert_array_equal(data.labels[i].numpy(), index.labels[j])
            np.testing.assert_array_equal(data.mask[i].numpy(), index.mask[j])


# ---- decoding ------------------------------------------------------------------------------


def test_decode_8bit_png_resized_and_identity(tmp_path):
    rng = np.random.default_rng(1)
    pixels = smooth(rng, 40, 24)  # portrait: stretched to a square, not cropped
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png", S)
    assert out.shape == (S, S) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, by_hand(tmp_path / "a.png"))
    Image.fromarray(pixels[:S, :S]).save(tmp_path / "b.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "b.png", S), pixels[:S, :S])


def test_decode_16bit_png_maps_the_full_range(tmp_path):
    values = np.array(
        [0, 1, 128, 129, 256, 257, 385, 386, 1000, 32767, 32768, 65278, 65406, 65407, 65535]
    )
    grid = np.resize(values, S * S).reshape(S, S).astype(np.uint16)
    Image.fromarray(grid).save(tmp_path / "v.png")
    with Image.open(tmp_path / "v.png") as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    expected = np.floor(grid / 257 + 0.5).astype(np.uint8)  # round(v / 257); 257 is odd: no ties
    np.testing.assert_array_equal(decode_image(tmp_path / "v.png", S), expected)
    assert expected.min() == 0 and expected.max() == 255
    # an 8-bit image stored as v8 * 257 comes back exactly, and resizes like the 8-bit one
    eight = np.arange(256, dtype=np.uint8).reshape(S, S)
    Image.fromarray(eight.astype(np.uint16) * 257).save(tmp_path / "w.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "w.png", S), eight)
    big = smooth(np.random.default_rng(2), 48, 48)
    Image.fromarray(big.astype(np.uint16) * 257).save(tmp_path / "x16.png")
    Image.fromarray(big).save(tmp_path / "x8.png")
    diff = decode_image(tmp_path / "x16.png", S).astype(int) - by_hand(tmp_path / "x8.png")
    assert np.abs(diff).max() <= 1


def test_decode_jpeg_and_colour_to_grey(tmp_path):
    rng = np.random.default_rng(3)
    grey = smooth(rng, 48, 40, noise=5)
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    diff = decode_image(tmp_path / "g.jpg", S).astype(int) - by_hand(tmp_path / "g.jpg")
    # draft (DCT) scaling vs a full decode: close, and no bias
    assert np.abs(diff).mean() < 2 and abs(diff.mean()) < 1
    rgb = np.stack([grey, np.roll(grey, 3, 1), 255 - grey], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    luma = np.asarray(Image.fromarray(rgb).convert("L").resize((S, S), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decode_image(tmp_path / "c.png", S), luma)
    rgba = np.concatenate([rgb, np.full((48, 40, 1), 7, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "c4.png")  # alpha is dropped, not composited
    np.testing.assert_array_equal(decode_image(tmp_path / "c4.png", S), luma)
    Image.fromarray(np.stack([grey, grey // 2], axis=-1)).save(tmp_path / "la.png")
    only_grey = np.asarray(Image.fromarray(grey).resize((S, S), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decode_image(tmp_path / "la.png", S), only_grey)
    # content well below the 16 px output's Nyquist, as in a radiograph shrunk to 256 px
    coarse = Image.fromarray(rng.integers(40, 220, (5, 4), dtype=np.uint8))
    blurry = np.asarray(coarse.resize((160, 200), Image.Resampling.BICUBIC))
    big_rgb = np.repeat(blurry[..., None], 3, axis=-1)
    Image.fromarray(big_rgb).save(tmp_path / "big.jpg", quality=95)
    diff = decode_image(tmp_path / "big.jpg", S).astype(int) - by_hand(tmp_path / "big.jpg")
    assert np.abs(diff).mean() < 2 and abs(diff.mean()) < 1


# ---- prepare and load ----------------------------------------------------------------------


def test_prepare_layout_manifest_and_round_trip(tmp_path, small):
    index, paths = small
    out = tmp_path / "packed"
    seen = []
    report = prepare(index, out, S, workers=2, shard_size=5, progress=lambda d, t: seen.append(d))
    assert seen[-1] == len(index) and seen == sorted(seen)
    assert report.decoded == 12 and report.reused_shards == 0 and report.n_bad == 0
    assert {p.name for p in out.iterdir()} >= {
        "images.npy",
        "index.parquet",
        "manifest.json",
        "bad.txt",
    }
    images = np.load(out / "images.npy", mmap_mode="r")
    assert images.shape == (12, 1, S, S) and images.dtype == np.uint8
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["version"] == prep.FORMAT_VERSION
    assert manifest["dataset"] == "nih" and manifest["root"] == index.root
    assert manifest["image_size"] == S and manifest["task_names"] == list(TASKS)
    assert manifest["counts"] == index.split_sizes() == report.counts
    assert manifest["n_bad"] == 0 and (out / "bad.txt").read_text() == ""
    assert [s["rows"] for s in manifest["shards"]] == [[0, 5], [5, 10], [10, 12]]
    assert all(s["status"] == "done" and len(s["sha256"]) == 64 for s in manifest["shards"])
    for name, entry in manifest["files"].items():
        assert (out / name).stat().st_size == entry["size"]
    # split-major rows: train block, then val, then test
    sizes = index.split_sizes()
    assert manifest["splits"]["val"]["start"] == sizes["train"]
    table = pq.read_table(out / "index.parquet").to_pydict()
    assert table["path"] == list(index.paths) and table["split"] == list(index.splits)
    assert all(table["ok"]) and table["reason"] == [""] * 12
    np.testing.assert_array_equal(np.array(table["label:Pleural Effusion"]), index.labels[:, 1])
    np.testing.assert_array_equal(np.array(table["mask:Nodule"]), index.mask[:, 2])
    for j, row in enumerate(table["row"]):
        np.testing.assert_array_equal(images[row, 0], by_hand(paths[j]))

    splits, info = load_packed(out)
    assert list(splits) == ["train", "val", "test"]
    assert info.counts == sizes and info.n_bad == 0 and info.skipped == dict.fromkeys(sizes, 0)
    assert (info.dataset, info.image_size, info.task_names) == ("nih", S, TASKS)
    check_splits_by_hand(splits, info, index)
    # views of one mapping, in index order within a split: no copy of the pixels
    assert all(type(d.images) is torch.Tensor for d in splits.values())
    pointers = {d.images.untyped_storage().data_ptr() for d in splits.values()}
    assert len(pointers) == 1
    assert list(info.index_rows["train"]) == [i for i, s in enumerate(index.splits) if s == "train"]


def test_inspect_packed_makes_the_checks_of_load_packed_without_tensors(tmp_path, small):
    index, _ = small
    out = tmp_path / "packed"
    prepare(index, out, S, workers=1)
    info = inspect_packed(out)
    assert info.counts == load_packed(out)[1].counts and info.task_names == TASKS
    # a split block past the last image (load_packed's tensors would have been short)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["splits"]["test"]["start"] = manifest["shape"][0] - 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    for load in (inspect_packed, load_packed):
        with pytest.raises(DatasetError) as exc:
            load(out)
        assert one_line(exc).startswith(f"{out / 'manifest.json'}: split 'test' is rows ")


def shards_done(out: Path) -> int:
    manifest = json.loads((out / "manifest.json").read_text())
    return sum(1 for s in manifest["shards"] if s["status"] == "done")


def test_interrupted_prepare_resumes_without_redoing_shards(tmp_path, small, monkeypatch):
    index, _ = small
    out = tmp_path / "packed"

    def stop_after_two_shards(done, total):
        if shards_done(out) >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(index, out, S, workers=1, shard_size=2, progress=stop_after_two_shards)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "running"
    done = {i for i, s in enumerate(manifest["shards"]) if s["status"] == "done"}
    assert 2 <= len(done) < 6
    hashes = {i: manifest["shards"][i]["sha256"] for i in done}
    with pytest.raises(DatasetError) as exc:
        load_packed(out)
    assert "unfinished" in one_line(exc) and "manifest.json" in str(exc.value)

    log = tmp_path / "decoded.txt"
    real = prep.decode_image

    def counting(path, size):  # inherited by the forked workers
        with open(log, "a") as f:
            f.write(f"{path}\n")
        return real(path, size)

    monkeypatch.setattr(prep, "decode_image", counting)
    report = prepare(index, out, S, workers=2, shard_size=2)
    assert report.reused_shards == len(done) and report.decoded == 12 - 2 * len(done)
    order, _ = prep._layout(index)
    redone = {index.paths[j] for i in range(6) if i not in done for j in order[2 * i : 2 * i + 2]}
    assert set(log.read_text().split()) == redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(manifest["shards"][i]["sha256"] == h for i, h in hashes.items())
    splits, info = load_packed(out, verify=True)
    check_splits_by_hand(splits, info, index)


KILLER = """
import os, signal, sys
from pathlib import Path
from deepchest.data.prepare import prepare
from tests.test_packed import make_index, shards_done

root, out = Path(sys.argv[1]), Path(sys.argv[2])
index = make_index(sorted(root.glob("*.png")), root)

def die(done, total):
    if shards_done(out) >= 2:
        os.kill(os.getpid(), signal.SIGKILL)

prepare(index, out, 16, workers=2, shard_size=2, progress=die)
"""


def test_killed_prepare_resumes(tmp_path, small):
    index, paths = small
    out = tmp_path / "packed"
    run = subprocess.run(
        [sys.executable, "-c", KILLER, str(paths[0].parent), str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    done = [s for s in manifest["shards"] if s["status"] == "done"]
    assert manifest["state"] == "running" and 2 <= len(done) < 6
    report = prepare(index, out, S, workers=2, shard_size=2)
    assert report.reused_shards == len(done) and report.decoded == 12 - 2 * len(done)
    splits, info = load_packed(out, verify=True)
    check_splits_by_hand(splits, info, index)


def test_rerun_with_other_inputs_is_refused(tmp_path, small):
    index, paths = small
    out = tmp_path / "packed"
    prepare(index, out, S, workers=2, shard_size=4)
    with pytest.raises(DatasetError) as exc:
        prepare(index, out, 24, workers=2, shard_size=4)
    assert one_line(exc).startswith(f"{out / 'manifest.json'}: prepared from other inputs")
    assert "image size 16 -> 24" in str(exc.value) and "--overwrite" in str(exc.value)
    fewer = make_index(paths[:-1], index.root)
    with pytest.raises(DatasetError, match="number of images"):
        prepare(fewer, out, S, workers=2, shard_size=4)
    other_splits = make_index(paths, index.root, splits=["train"] * 12)
    with pytest.raises(DatasetError, match="image list or splits"):
        prepare(other_splits, out, S, workers=2, shard_size=4)
    chexpert = make_index(paths, index.root, dataset="chexpert")
    with pytest.raises(DatasetError, match="data set 'nih' -> 'chexpert'"):
        prepare(chexpert, out, S, workers=2, shard_size=4)
    # other labels only: nothing is decoded again, index.parquet follows the new labels
    relabelled = make_index(paths, index.root, seed=5)
    report = prepare(relabelled, out, S, workers=2, shard_size=4)
    assert report.decoded == 0 and report.reused_shards == 3
    splits, info = load_packed(out)
    check_splits_by_hand(splits, info, relabelled)
    report = prepare(index, out, 24, workers=2, shard_size=4, overwrite=True)
    assert report.decoded == 12
    assert load_packed(out)[0]["train"].images.shape[-1] == 24


def test_a_folder_of_other_files_is_not_taken_over(tmp_path, small):
    index, _ = small
    out = tmp_path / "packed"
    out.mkdir()
    (out / "images.npy").write_bytes(b"not ours")
    with pytest.raises(DatasetError, match="exists without manifest.json"):
        prepare(index, out, S, workers=2)
    assert (out / "images.npy").read_bytes() == b"not ours"
    prepare(index, out, S, workers=2, overwrite=True)


def write_bad_images(folder: Path) -> dict[str, Path]:
    """One of each kind of bad file, made from good ones."""
    rng = np.random.default_rng(9)
    noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    png, jpg = io.BytesIO(), io.BytesIO()
    Image.fromarray(noise).save(png, format="PNG")
    Image.fromarray(smooth(rng, 64, 64)).save(jpg, format="JPEG")
    bad = {
        "missing": folder / "missing.png",
        "zero": folder / "zero.png",
        "truncated_png": folder / "truncated.png",
        "corrupt_jpeg": folder / "corrupt.jpg",
        "truncated_jpeg": folder / "truncated.jpg",
        "text": folder / "notes.png",
    }
    bad["zero"].write_bytes(b"")
    bad["truncated_png"].write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    bad["corrupt_jpeg"].write_bytes(b"\xff\xd8\xff" + rng.bytes(400))
    bad["truncated_jpeg"].write_bytes(jpg.getvalue()[: len(jpg.getvalue()) // 2])
    bad["text"].write_text("this is not a PNG\n")
    return bad


def test_bad_images_fail_above_max_bad_and_are_left_out_within(tmp_path):
    root = tmp_path / "raw"
    good = write_pngs(root, 10)
    bad = write_bad_images(root)
    paths = good[:3] + list(bad.values())[:3] + good[3:7] + list(bad.values())[3:] + good[7:]
    index = make_index(paths, root)
    out = tmp_path / "packed"
    with pytest.raises(TooManyBadImages) as exc:
        prepare(index, out, S, workers=2, shard_size=3)
    # the first bad images with their reasons, relative to the root, then where all are
    assert one_line(exc) == (
        f"{root}: 6 of 16 images are unreadable or missing, more than max_bad 0: missing.png: "
        "missing (no such file); zero.png: empty file (0 bytes); truncated.png: unreadable "
        f"(OSError: image file is truncated) (and 3 more); all are listed in {out / 'bad.txt'}"
    )
    lines = (out / "bad.txt").read_text().splitlines()
    reasons = dict(line.split("\t") for line in lines)
    assert list(reasons) == [str(p) for p in paths if p in bad.values()]
    assert reasons[str(bad["missing"])].startswith("missing")
    assert reasons[str(bad["zero"])].startswith("empty file")
    assert reasons[str(bad["text"])].startswith("cannot identify the image")
    assert "truncated" in reasons[str(bad["truncated_png"])]
    assert "truncated" in reasons[str(bad["truncated_jpeg"])]
    assert reasons[str(bad["corrupt_jpeg"])]
    assert json.loads((out / "manifest.json").read_text())["state"] == "failed"
    with pytest.raises(DatasetError) as exc:
        load_packed(out)
    assert (
        "the prepare failed: 6 unreadable or missing images, more than max_bad 0: missing.png: "
        "missing (no such file); zero.png: empty file (0 bytes); truncated.png: " in one_line(exc)
    )
    assert "(and 3 more) (listed in bad.txt)" in one_line(exc)

    with pytest.raises(TooManyBadImages, match="more than max_bad 5"):
        prepare(index, out, S, workers=2, shard_size=3, max_bad=5)
    report = prepare(index, out, S, workers=2, shard_size=3, max_bad=6)
    assert report.decoded == 0 and report.n_bad == 6  # every shard reused
    splits, info = load_packed(out, verify=True)
    assert info.n_bad == 6 and sum(info.skipped.values()) == 6
    ok = [p not in bad.values() for p in paths]
    for split in ("train", "val", "test"):
        expected = [j for j, s in enumerate(index.splits) if s == split and ok[j]]
        assert sorted(info.index_rows[split]) == expected
        assert info.skipped[split] == sum(
            1 for j, s in enumerate(index.splits) if s == split and not ok[j]
        )
    check_splits_by_hand(splits, info, index)
    table = pq.read_table(out / "index.parquet").to_pydict()
    assert table["ok"] == ok and all(
        r == -1 for r, k in zip(table["row"], ok, strict=True) if not k
    )


# ---- the loader's refusals -----------------------------------------------------------------


@pytest.fixture
def packed(tmp_path, small):
    index, _ = small
    out = tmp_path / "packed"
    prepare(index, out, S, workers=2, shard_size=4)
    return out


def refusal(out: Path, verify: bool = False) -> str:
    with pytest.raises(DatasetError) as exc:
        load_packed(out, verify=verify)
    return one_line(exc)


def test_load_refuses_missing_files_and_unfinished(tmp_path, packed):
    assert refusal(tmp_path / "nowhere").startswith(f"{tmp_path / 'nowhere'}: no such folder")
    for name in ("images.npy", "index.parquet", "manifest.json"):
        copy = tmp_path / f"no-{name}"
        shutil.copytree(packed, copy)
        (copy / name).unlink()
        assert refusal(copy).startswith(f"{copy / name}: missing")
    manifest = json.loads((packed / "manifest.json").read_text())
    manifest["state"] = "running"
    manifest["shards"][1]["status"] = "pending"
    (packed / "manifest.json").write_text(json.dumps(manifest))
    assert "unfinished (2 of 3 shards done)" in refusal(packed)


def test_load_refuses_edited_index_and_changed_images(tmp_path, packed):
    load_packed(packed, verify=True)
    edited = tmp_path / "edited"
    shutil.copytree(packed, edited)
    table = pq.read_table(edited / "index.parquet")
    flipped = pa.array(1 - table.column("label:Nodule").to_numpy())
    table = table.set_column(table.column_names.index("label:Nodule"), "label:Nodule", flipped)
    pq.write_table(table, edited / "index.parquet")
    assert refusal(edited) == f"{edited / 'index.parquet'}: edited after the prepare " + (
        "(its sha256 differs from the manifest)"
    )

    truncated = tmp_path / "truncated"
    shutil.copytree(packed, truncated)
    with open(truncated / "images.npy", "r+b") as f:
        f.truncate((truncated / "images.npy").stat().st_size - 100)
    assert "bytes, the manifest says" in refusal(truncated)

    written = tmp_path / "written"
    shutil.copytree(packed, written)
    with open(written / "images.npy", "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x01\x02\x03")
    os.utime(written / "images.npy", ns=(1, 10**18))
    # a new time makes the load check every shard: the changed one is named
    assert refusal(written).startswith(f"{written / 'images.npy'}: shard 2 (rows 8 .. 11) differs")
    assert "shard 2 (rows 8 .. 11) differs" in refusal(written, verify=True)

    # a flipped byte behind an unchanged size and time: only verify sees it
    flipped_dir = tmp_path / "flipped"
    shutil.copytree(packed, flipped_dir)
    path = flipped_dir / "images.npy"
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(st.st_size - 5 * S * S)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    load_packed(flipped_dir)
    assert "shard 1 (rows 4 .. 7) differs from its sha256" in refusal(flipped_dir, verify=True)


def test_a_copy_with_a_new_time_is_verified_once(tmp_path, packed):
    os.utime(packed / "images.npy", ns=(10**18, 10**18))  # what `cp` without -p does
    _, info = load_packed(packed, cache_dir=tmp_path / "cache")
    assert info.verified and info.restamped  # the first load read every shard
    assert (
        json.loads((packed / "manifest.json").read_text())["files"]["images.npy"]["mtime_ns"]
        == 10**18
    )
    _, info = load_packed(packed, cache_dir=tmp_path / "cache")
    assert not info.verified and not info.restamped
    assert not list(tmp_path.glob("cache/verified/*.json"))  # the manifest took the new time


def test_a_copy_on_a_read_only_mount_is_verified_once_then_remembered(
    tmp_path, packed, monkeypatch
):
    """A read-only folder (simulated: the tests run as root, where chmod does not stop
    writes) cannot take the new time: the record goes to the cache, and the next load reads
    no shard; a record stops counting when the file changes again."""
    real_write = prep.write_json_atomic

    def read_only(path, data):
        if Path(path).parent == packed:
            raise OSError(30, "Read-only file system", str(path))
        real_write(path, data)

    import deepchest.data.packed as packed_module

    monkeypatch.setattr(packed_module, "write_json_atomic", read_only)
    before = (packed / "manifest.json").read_bytes()
    os.utime(packed / "images.npy", ns=(10**18, 10**18))
    cache = tmp_path / "cache"
    _, info = load_packed(packed, cache_dir=cache)
    assert info.verified and info.restamped
    assert (packed / "manifest.json").read_bytes() == before
    assert len(list((cache / "verified").glob("*.json"))) == 1
    hashed = []
    monkeypatch.setattr(
        packed_module, "_shard_sha256", lambda *a: hashed.append(a) or "never matches"
    )
    splits, info = load_packed(packed, cache_dir=cache)  # remembered: no shard is read
    assert not info.verified and not hashed and len(splits["train"]) > 0
    os.utime(packed / "images.npy", ns=(2 * 10**18, 2 * 10**18))  # touched again
    with pytest.raises(DatasetError, match=r"shard 0 \(rows 0 .. 3\) differs"):
        load_packed(packed, cache_dir=cache)  # the record no longer counts: verified again
    assert hashed


def test_image_size_out_of_range_is_one_line(tmp_path, small):
    index, _ = small
    for size in (0, 7, 2049, 100000):
        with pytest.raises(DatasetError) as exc:
            prepare(index, tmp_path / "out", size)
        assert one_line(exc) == f"image_size: {size} is out of range 8 .. 2048"
    with pytest.raises(DatasetError, match="not an integer"):
        prepare(index, tmp_path / "out", 16.0)
    assert not (tmp_path / "out").exists()


# ---- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def fake_readers(monkeypatch, small):
    """``deepchest.data.readers`` replaced by one that returns the test's index."""
    index, _ = small
    calls = []
    module = types.ModuleType("deepchest.data.readers")

    def read_index(dataset, root, **options):
        calls.append((dataset, options))
        return dataclasses.replace(module.index, dataset=dataset)

    module.read_index = read_index
    module.index = index
    monkeypatch.setitem(sys.modules, "deepchest.data.readers", module)
    return module, calls


def errors(capsys) -> list[str]:
    """The error lines on stderr; everything else there must be progress lines."""
    lines = capsys.readouterr().err.strip().splitlines()
    found = [line for line in lines if line.startswith("harness: error: ")]
    assert found and all(line.startswith("prepare: ") for line in lines if line not in found)
    return found


def test_cli_data_prepare_and_verify(tmp_path, capsys, fake_readers):
    module, calls = fake_readers
    out = tmp_path / "packed"
    root = str(tmp_path / "raw")
    base = ["data", "prepare", "--dataset", "nih", "--root", root, "--out", str(out)]
    assert main([*base, "--image-size", "16", "--workers", "2"]) == 0
    printed = capsys.readouterr()
    assert "prepared nih into" in printed.out and "usable: train 7, val 3, test 2" in printed.out
    assert "bad: 0" in printed.out and "prepare: 12/12 images (100%)" in printed.err
    assert calls == [("nih", {"val_fraction": 0.1, "seed": 0})]
    assert main(["data", "verify", str(out)]) == 0
    assert "every sha256 matches" in capsys.readouterr().out

    opts = ["--uncertain", "ones", "--views", "all", "--val-fraction", "0.2", "--seed", "3"]
    assert main([*base, "--dataset", "chexpert", *opts, "--image-size", "16"]) == 2
    assert errors(capsys) == [
        f"harness: error: {out / 'manifest.json'}: prepared from other inputs (data set "
        "'nih' -> 'chexpert'); rerun with --overwrite to replace it, or "
        "choose another output folder"
    ]
    assert calls[-1] == (
        "chexpert",
        {"val_fraction": 0.2, "seed": 3, "uncertain": "ones", "views": "all"},
    )

    for bad_args, message in (
        (["--image-size", "0"], "image_size: 0 is out of range 8 .. 2048"),
        (["--image-size", "100000"], "image_size: 100000 is out of range 8 .. 2048"),
        (["--uncertain", "zeros"], "--uncertain: applies to chexpert only, not nih"),
        (["--workers", "0"], "--workers: 0 must be at least 1"),
        (["--max-bad", "-1"], "--max-bad: -1 must be at least 0"),
    ):
        assert main([*base, *bad_args]) == 2
        assert errors(capsys) == [f"harness: error: {message}"]
    assert main([*base[:4], "--root", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "is not an existing folder" in errors(capsys)[0]

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "index.parquet").write_bytes(b"")
    assert main(["data", "verify", str(broken)]) == 2
    assert errors(capsys) == [
        f"harness: error: {broken / 'index.parquet'}: edited after the prepare (its sha256 "
        "differs from the manifest)"
    ]


def test_cli_too_many_bad_and_interrupted(tmp_path, capsys, fake_readers, monkeypatch):
    module, _ = fake_readers
    root = tmp_path / "raw"
    paths = write_pngs(root, 5)
    paths[2] = root / "gone.png"
    module.index = make_index(paths, root)
    out = tmp_path / "packed"
    base = ["data", "prepare", "--dataset", "nih", "--root", str(root), "--out", str(out)]
    base += ["--image-size", "16", "--workers", "2"]
    assert main(base) == 1
    assert errors(capsys) == [
        f"harness: error: {root}: 1 of 5 images are unreadable or missing, more than max_bad "
        f"0: gone.png: missing (no such file); all are listed in {out / 'bad.txt'}"
    ]
    assert main([*base, "--max-bad", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"bad: 1 unreadable or missing images, left out (listed in {out / 'bad.txt'})" in (
        printed
    )
    assert "decoded 0 images" in printed and "reused 1 of 1 shards" in printed

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep, "prepare", interrupted)
    assert main(base) == 130
    assert errors(capsys) == [
        f"harness: error: interrupted; finished shards are kept in {out}: rerun the same "
        "command to resume"
    ]
