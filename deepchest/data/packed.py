"""Load a data set packed by :func:`deepchest.data.prepare.prepare`: memory-mapped, checked.

``load_packed(out)`` returns one :class:`~deepchest.data.base.LabeledImages` per split whose
``images`` is a *view* into the memory-mapped ``images.npy``: no pixel is read until a batch
is indexed (``images[idx]`` reads those rows only, ``images[i:j]`` a contiguous run), and the
page cache is shared by every process that maps the same file.

Why plain ``LabeledImages`` over a slice, and not an index tensor or a subclass: the prepare
writes ``images.npy`` split-major and moves each split's unreadable images to the tail of
its block (:mod:`deepchest.data.prepare`), so a split's usable images are always rows
``start .. start + ok`` of the file. The view is then an ordinary ``torch.Tensor``
(``torch.from_numpy`` of the memmap, sliced), which every consumer (the training loop's
``images[perm[...]]`` and ``images[i:j]``, ``LabeledImages.subset``, task selection) already
handles, with no second code path for packed data. Bad images are left out by that slice and
counted (``PackedInfo.n_bad``, ``PackedInfo.skipped``).

The file is mapped copy-on-write (``np.load(..., mmap_mode="c")``): the tensor is writable as
torch expects, and an in-place change in memory never reaches the file.

Checks, each a one-line :class:`~deepchest.data.DatasetError` naming the file:

* a missing ``manifest.json``, ``images.npy`` or ``index.parquet``;
* a prepare that is unfinished (interrupted or killed) or failed (too many bad images);
* ``images.npy`` whose size, shape or dtype differs from the manifest (truncated or replaced
  after the prepare); a changed modification time alone triggers a full check (below);
* ``index.parquet`` whose sha256 differs from the manifest (edited), or whose rows disagree
  with the manifest's counts;
* with ``verify=True``, every shard's sha256 is recomputed (reads the whole file once).

A copy that keeps the bytes but not the modification time (``cp`` without ``-p``, a download,
another mount of the same files) is verified once on its first load: every shard's sha256 is
recomputed (one full read) and the new time is recorded in the manifest, or, when the folder
cannot be written (a read-only mount), in a small record under the cache folder
(``<cache_dir>/verified/``, see :func:`deepchest.data.default_cache_dir`) keyed by the file's
absolute path, size and time. Later loads then skip the full read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lazy_loader
import numpy as np

from deepchest.data import DatasetError, default_cache_dir
from deepchest.data.base import LabeledImages
from deepchest.data.index import SPLITS
from deepchest.data.prepare import (
    BAD,
    FORMAT_VERSION,
    IMAGES,
    INDEX,
    MANIFEST,
    _read_manifest,
    _shard_sha256,
    bad_summary,
    exclusive_lock,
    file_sha256,
    write_json_atomic,
)

if TYPE_CHECKING:
    import torch
else:  # pre-flight (inspect_packed) runs without torch
    torch = lazy_loader.load("torch")

__all__ = ["PackedInfo", "content_id", "inspect_packed", "load_packed"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedInfo:
    """What a packed folder holds. ``counts``: usable images per split (the ``LabeledImages``
    lengths); ``skipped``: unreadable or missing images per split, left out; ``n_bad``: their
    total (listed in ``bad_path``); ``index_rows[split][i]``: the position in the reader's
    index (and ``index.parquet``) of the split's ``i``-th image; ``verified``: every shard's
    sha256 was checked; ``restamped``: a changed modification time of ``images.npy`` was
    recorded (in the manifest or the cache's record) after its content proved intact."""

    out: Path
    dataset: str
    root: str
    image_size: int
    task_names: tuple[str, ...]
    counts: dict[str, int]
    skipped: dict[str, int]
    n_bad: int
    n_images: int
    shards: int
    index_rows: dict[str, np.ndarray] = field(repr=False)
    verified: bool = False
    restamped: bool = False

    @property
    def bad_path(self) -> Path:
        return self.out / BAD


def _fail(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}")


def _check_state(path: Path, manifest: dict[str, Any]) -> None:
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise _fail(
            path,
            f"packed format version {version}, this version reads {FORMAT_VERSION}; "
            "prepare the data set again",
        )
    state = manifest.get("state")
    if state == "complete":
        return
    if state == "running":
        shards = manifest.get("shards", [])
        done = sum(1 for s in shards if s.get("status") == "done")
        raise _fail(
            path,
            f"the prepare is unfinished ({done} of {len(shards)} shards done); rerun "
            "harness data prepare with the same arguments to finish it",
        )
    if state == "failed":
        raise _fail(
            path,
            f"the prepare failed: {manifest.get('n_bad')} unreadable or missing images, more "
            f"than max_bad {manifest.get('max_bad')}{_first_bad(path.parent, manifest)} "
            f"(listed in {BAD}); fix them or rerun harness data prepare with a larger --max-bad",
        )
    raise _fail(path, f"unknown prepare state {state!r}")


def _first_bad(out: Path, manifest: dict[str, Any]) -> str:
    """``: path: reason; ...`` of the first bad images that ``bad.txt`` lists, or nothing."""
    try:
        with open(out / BAD) as f:
            bad = [tuple(line.rstrip("\n").split("\t", 1)) for line in f]
    except OSError:
        return ""
    bad = [entry for entry in bad if len(entry) == 2]
    return f": {bad_summary(bad, manifest.get('root', ''))}" if bad else ""


def _record_path(path: Path, cache_dir: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:24]
    return cache_dir / "verified" / f"{key}.json"


def content_id(manifest: dict[str, Any]) -> str:
    """A sha256 hex digest of what a manifest's shard checksums say ``images.npy`` holds (its
    shape and every shard's sha256; neither a copy's time nor its place is part of it)."""
    shards = [s.get("sha256") for s in manifest["shards"]]
    return hashlib.sha256(json.dumps([manifest["shape"], shards]).encode()).hexdigest()


def _read_record(path: Path, st: os.stat_result, manifest: dict[str, Any], cache: Path) -> bool:
    """A record under the cache says this very file (path, size, time) was verified."""
    try:
        record = json.loads(_record_path(path, cache).read_text())
    except (OSError, ValueError):
        return False
    return record == _record(path, st, manifest)


def _record(path: Path, st: os.stat_result, manifest: dict[str, Any]) -> dict[str, Any]:
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "content": content_id(manifest),
    }


def _check_images(
    out: Path, manifest: dict[str, Any], verify: bool, cache_dir: Path, check_copy: bool
) -> tuple[np.ndarray, bool, bool]:
    """Map images.npy after checking it against the manifest; returns the memmap and whether
    the shards were verified and the modification time re-recorded."""
    path = out / IMAGES
    recorded = manifest["files"][IMAGES]
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _fail(path, "missing") from None
    if st.st_size != recorded["size"]:
        raise _fail(
            path,
            f"{st.st_size} bytes, the manifest says {recorded['size']} (truncated or replaced "
            "after the prepare)",
        )
    try:
        images = np.load(path, mmap_mode="c")
    except (OSError, ValueError) as exc:
        raise _fail(path, f"not a readable .npy file ({exc})") from None
    if list(images.shape) != list(manifest["shape"]) or images.dtype != np.uint8:
        raise _fail(
            path,
            f"shape {list(images.shape)} {images.dtype}, the manifest says "
            f"{list(manifest['shape'])} uint8",
        )
    moved = st.st_mtime_ns != recorded["mtime_ns"]
    if not moved:
        if verify:
            _verify_shards(path, images, manifest)
        return images, verify, False
    if not verify and (not check_copy or _read_record(path, st, manifest, cache_dir)):
        return images, False, False  # pre-flight, or a read-only copy verified before
    # a copy: verify it once. The trials that start on this machine at once take turns, and
    # those that waited find it recorded (in the manifest, or the cache's record)
    with _copy_lock(path, cache_dir):
        fresh = _read_manifest(out / MANIFEST) or manifest
        same_content = content_id(fresh) == content_id(manifest)
        if not verify and same_content:
            if fresh["files"][IMAGES]["mtime_ns"] == st.st_mtime_ns:
                return images, False, False
            if _read_record(path, st, manifest, cache_dir):
                return images, False, False
        if not verify:
            log.warning(
                "%s: its modification time differs from the manifest (a copy or another "
                "mount); checking every shard's sha256 once",
                path,
            )
        _verify_shards(path, images, manifest)
        return images, True, _remember(out, path, st, manifest, cache_dir)


@contextlib.contextmanager
def _copy_lock(path: Path, cache_dir: Path) -> Iterator[None]:
    """This machine's lock for verifying ``path`` (under the cache folder: the data folder
    may be read-only); no lock when the cache folder cannot be written either."""
    with contextlib.ExitStack() as stack:
        with contextlib.suppress(OSError):
            stack.enter_context(exclusive_lock(_record_path(path, cache_dir).with_suffix(".lock")))
        yield


def _verify_shards(path: Path, images: np.ndarray, manifest: dict[str, Any]) -> None:
    for i, shard in enumerate(manifest["shards"]):
        a, b = shard["rows"]
        if _shard_sha256(images, a, b) != shard.get("sha256"):
            raise _fail(
                path,
                f"shard {i} (rows {a} .. {b - 1}) differs from its sha256 in the manifest "
                "(modified or corrupt); prepare the data set again",
            )


def _remember(
    out: Path, path: Path, st: os.stat_result, manifest: dict[str, Any], cache_dir: Path
) -> bool:
    """A verified copy's new time goes into its manifest or, for a read-only folder, into a
    record under the cache folder; False when neither can be written."""
    manifest["files"][IMAGES]["mtime_ns"] = st.st_mtime_ns
    try:
        write_json_atomic(out / MANIFEST, manifest)
        return True
    except OSError:
        pass
    try:
        record = _record_path(path, cache_dir)
        record.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(record, _record(path, st, manifest))
        return True
    except OSError:
        return False


def _read_index(out: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    path = out / INDEX
    if not path.exists():
        raise _fail(path, "missing")
    recorded = manifest["files"][INDEX]
    if path.stat().st_size != recorded["size"] or file_sha256(path) != recorded["sha256"]:
        raise _fail(path, "edited after the prepare (its sha256 differs from the manifest)")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise _fail(path, f"unreadable ({type(exc).__name__}: {exc})") from None
    tasks = manifest["task_names"]
    needed = ["split", "ok", "row"]
    needed += [f"label:{t}" for t in tasks] + [f"mask:{t}" for t in tasks]
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise _fail(path, f"no column {missing[0]!r}")
    n = manifest["shape"][0]
    if table.num_rows != n:
        raise _fail(path, f"{table.num_rows} rows, the manifest says {n} images")
    columns = {
        "split": np.asarray(table.column("split").to_pylist(), dtype=object),
        "ok": table.column("ok").to_numpy().astype(bool),
        "row": table.column("row").to_numpy().astype(np.int64),
    }
    columns["labels"] = np.stack(
        [table.column(f"label:{t}").to_numpy().astype(np.float32) for t in tasks], axis=1
    ).reshape(n, len(tasks))
    columns["mask"] = np.stack(
        [table.column(f"mask:{t}").to_numpy().astype(bool) for t in tasks], axis=1
    ).reshape(n, len(tasks))
    return columns


def load_packed(
    out: str | os.PathLike,
    *,
    verify: bool = False,
    cache_dir: str | os.PathLike | None = None,
    check_copy: bool = True,
) -> tuple[dict[str, LabeledImages], PackedInfo]:
    """The splits (``train``, ``val``, ``test``, each possibly empty) of the folder ``out``
    written by ``prepare``, as views into the memory-mapped ``images.npy``, and what the
    folder holds. Checks the folder against its manifest first (module docstring);
    ``verify=True`` also recomputes every shard's sha256 (so does a first load of a copy with
    another modification time). ``cache_dir`` (default :func:`default_cache_dir`) holds the
    records of verified copies in read-only folders. ``check_copy=False`` leaves a copy
    unverified (pre-flight: the trials verify it). Each problem is a one-line
    ``DatasetError`` naming the file."""
    images, columns, starts, info = _checked(out, verify, cache_dir, check_copy)
    everything = torch.from_numpy(images)  # shares the mapping: no copy
    splits = {}
    for split in SPLITS:
        start, chosen = starts[split], info.index_rows[split]
        splits[split] = LabeledImages(
            everything[start : start + len(chosen)],
            torch.from_numpy(columns["labels"][chosen]),
            torch.from_numpy(columns["mask"][chosen]),
            info.task_names,
        )
    return splits, info


def inspect_packed(
    out: str | os.PathLike,
    *,
    verify: bool = False,
    cache_dir: str | os.PathLike | None = None,
    check_copy: bool = True,
) -> PackedInfo:
    """What :func:`load_packed` would load from ``out``, after the same checks (the same
    one-line ``DatasetError``), without building tensors: numpy only, for a pre-flight that
    runs without torch."""
    return _checked(out, verify, cache_dir, check_copy)[3]


def _checked(
    out: str | os.PathLike,
    verify: bool,
    cache_dir: str | os.PathLike | None,
    check_copy: bool,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, int], PackedInfo]:
    """The checks of :func:`load_packed`: the mapped images, the index's columns, each split's
    first row in the images, and the folder's :class:`PackedInfo`."""
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    out = Path(out)
    manifest_path = out / MANIFEST
    if not out.is_dir():
        raise _fail(out, "no such folder (prepare the data set with harness data prepare)")
    manifest = _read_manifest(manifest_path)
    if manifest is None:
        raise _fail(manifest_path, "missing; not a prepared data set (harness data prepare)")
    _check_state(manifest_path, manifest)
    try:
        images, verified, restamped = _check_images(out, manifest, verify, cache, check_copy)
        columns = _read_index(out, manifest)
        tasks = tuple(manifest["task_names"])
        blocks = manifest["splits"]
    except (KeyError, TypeError, IndexError) as exc:
        raise _fail(manifest_path, f"malformed manifest ({type(exc).__name__}: {exc})") from None
    if images.ndim != 4:
        raise _fail(manifest_path, f"images of shape {list(images.shape)}, not [N, C, H, W]")

    starts: dict[str, int] = {}
    index_rows: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    skipped: dict[str, int] = {}
    index_path = out / INDEX
    for split in SPLITS:
        block = blocks.get(split, {"start": 0, "images": 0, "ok": 0, "bad": 0})
        start, ok = int(block["start"]), int(block["ok"])
        if start < 0 or start + ok > images.shape[0]:  # the split's block is images[start:+ok]
            raise _fail(
                manifest_path,
                f"split {split!r} is rows {start}..{start + ok} of {images.shape[0]} images",
            )
        in_split = columns["split"] == split
        chosen = np.flatnonzero(in_split & columns["ok"])
        if len(chosen) != ok or int(in_split.sum()) != int(block["images"]):
            raise _fail(
                index_path,
                f"{len(chosen)} usable {split} images, the manifest says {ok}",
            )
        chosen = chosen[np.argsort(columns["row"][chosen], kind="stable")]
        if not np.array_equal(columns["row"][chosen], np.arange(start, start + ok)):
            raise _fail(index_path, f"the rows of split {split!r} disagree with the manifest")
        starts[split] = start
        index_rows[split] = chosen
        counts[split] = ok
        skipped[split] = int(block["images"]) - ok
    if sum(skipped.values()) != int(manifest["n_bad"]):
        raise _fail(
            index_path,
            f"{sum(skipped.values())} images flagged bad, the manifest says {manifest['n_bad']}",
        )
    info = PackedInfo(
        out=out,
        dataset=manifest["dataset"],
        root=manifest["root"],
        image_size=int(manifest["image_size"]),
        task_names=tasks,
        counts=counts,
        skipped=skipped,
        n_bad=int(manifest["n_bad"]),
        n_images=int(manifest["shape"][0]),
        shards=len(manifest["shards"]),
        index_rows=index_rows,
        verified=verified,
        restamped=restamped,
    )
    return images, columns, starts, info
