"""Decode a real data set once into packed, memory-mappable arrays (``harness data prepare``).

``prepare(index, out, image_size)`` decodes every image of an
:class:`~deepchest.data.index.ImageIndex` with Pillow, on all cores, and writes under ``out``:

``images.npy``
    uint8 ``[N, 1, S, S]``, a plain ``.npy`` file (``np.load(path, mmap_mode="r")`` maps it).
    Preallocated at its final shape with ``numpy.lib.format.open_memmap`` and filled shard by
    shard (``shard_size`` consecutive rows) by the worker processes, which write their rows
    straight into the mapped file. Rows are in *split-major* order: every ``train`` image
    first, then ``val``, then ``test``, each split in the index's order, so that a split is one
    contiguous block of rows and the loader (:mod:`deepchest.data.packed`) hands out a
    zero-copy view of the block. Where a split has unreadable images, the last step of the
    prepare copies the split's last readable rows into their places, so that the readable
    images are the first rows of the block and the unreadable ones its tail (see "Bad images").
``index.parquet``
    One row per image *in the index's order*: ``path``, ``patient``, ``split``, ``ok`` (False
    for an unreadable or missing image), ``row`` (its row in ``images.npy``, ``-1`` when not
    ok), ``reason`` (empty when ok), then ``label:<task>`` (float32) and ``mask:<task>`` (bool)
    per task.
``manifest.json``
    Format and version, state (``running`` | ``complete`` | ``failed``), data set, source
    root, image size, shape, shard size, task names, the fingerprint of the inputs that decide
    the pixels, the block of each split with its counts, the number of bad images, per shard
    its status, sha256 and bad rows, and the size (and, for ``images.npy``, the modification
    time; for ``index.parquet``, the sha256) of each file. Rewritten atomically (a temporary
    file, fsync, rename) after every finished shard, which is what makes a prepare resumable.
``bad.txt``
    One line per unreadable or missing image, in index order: ``path<TAB>reason``.

Decoding (:func:`decode_image`), per image:

* The file is identified by its content, not its extension. Missing, empty (0 bytes),
  truncated, corrupt or unidentifiable files are *bad*: listed in ``bad.txt`` with the reason.
* 8-bit grey (``L``) is used as is; ``RGB``, ``RGBA``, ``LA``, ``P``, ``1`` and the other
  modes become one grey channel with Pillow's ``convert("L")`` (ITU-R 601-2 luma
  ``L = 0.299 R + 0.587 G + 0.114 B``; alpha is dropped, not composited).
* 16-bit grey (``I;16``/``I;16B``/``I;16L``, and 32-bit ``I`` clipped to ``0 .. 65535``) is
  resampled at full precision (as float) and then mapped linearly over the *full* 16-bit
  range: ``v8 = clip(round(v16 / 257), 0, 255)``; ``0 -> 0``, ``65535 -> 255``, and an 8-bit
  value stored as ``v8 * 257`` comes back exactly. No per-image windowing: intensities stay
  comparable across images. (A 12-bit detector stored in a 16-bit container therefore comes
  out dark, ``0 .. 16``; neither NIH, 8-bit PNG, nor CheXpert, 8-bit JPEG, has such files.)
* JPEGs are decoded with libjpeg's DCT scaling (``Image.draft``) to the smallest power-of-two
  reduction that is still at least ``S`` on both sides, which decodes a 2,800 px CheXpert
  image several times faster and is itself an area-like reduction; then EXIF orientation is
  applied.
* Resizing: straight to ``S x S`` with Pillow's antialiased ``BICUBIC`` filter (its support
  grows with the reduction factor, so downscaling does not alias). The aspect ratio is *not*
  kept: a non-square radiograph is stretched, not cropped. Cropping to the shorter side would
  cut off the lung apices or the costophrenic angles, exactly where pneumothorax and
  effusion show; padding would spend pixels on nothing. The stretch is the same for every
  image of a data set (CheXpert's portrait images by about 20 %), as in CheXpert's own
  baseline, which resized to 320 x 320.

Bad images. A prepare that finds more than ``max_bad`` bad images writes everything, marks
the manifest ``failed`` (the loader refuses it) and raises :class:`TooManyBadImages`; rerunning
with a larger ``max_bad`` reuses every shard and finishes. Within ``max_bad`` the images are
flagged ``ok=False`` and the loader leaves them out, with a count (``PackedInfo.n_bad``,
``PackedInfo.skipped``): never a silently smaller data set.

Resuming. Each finished shard's sha256 is recorded in the manifest as soon as the shard is
flushed to disk. A rerun with the same inputs (data set, root, image size, shard size, image
list and splits) skips the finished shards; an interrupted (Ctrl-C) or killed prepare loses at
most the shards in flight. A rerun whose inputs differ is refused with one line unless
``overwrite=True``. Labels, patients and ``max_bad`` do not decide the pixels: a rerun that only
changes them (say, CheXpert's ``--uncertain``) decodes nothing and rewrites ``index.parquet``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepchest.data import DatasetError
from deepchest.data.index import SPLITS, ImageIndex

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_IMAGE_SIZE",
    "MIN_IMAGE_SIZE",
    "PrepareFailed",
    "PrepareReport",
    "TooManyBadImages",
    "bad_summary",
    "check_image_size",
    "decode_image",
    "prepare",
]

FORMAT = "deepchest-packed"
FORMAT_VERSION = 1
# bumped whenever decode_image would give other pixels for the same file
DECODER_VERSION = 1
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 2048

IMAGES, INDEX, MANIFEST, BAD = "images.npy", "index.parquet", "manifest.json", "bad.txt"
_LOCK = ".prepare.lock"
_POLL_S = 0.2


class PrepareFailed(DatasetError):
    """The prepare ran but could not finish (too many bad images, a worker process died)."""


class TooManyBadImages(PrepareFailed):
    """More unreadable or missing images than ``max_bad``; they are listed in ``bad.txt``."""


class BadImage(Exception):
    """An image that cannot be decoded; the message is the one-line reason."""


@dataclass
class PrepareReport:
    """What a prepare did. ``counts``: usable images per split; ``bad``: ``(path, reason)`` of
    each unreadable or missing image, in index order; ``decoded``: images decoded by this run
    (fewer than ``n_images`` when finished shards were reused); ``seconds``: this run's wall
    time; ``images_per_second``: ``decoded / seconds``."""

    out: Path
    dataset: str
    image_size: int
    n_images: int
    counts: dict[str, int]
    bad: list[tuple[str, str]]
    decoded: int
    shards: int
    reused_shards: int
    seconds: float
    state: str = "complete"
    bad_path: Path = field(default=Path())

    @property
    def n_bad(self) -> int:
        return len(self.bad)

    @property
    def images_per_second(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0


# ---- decoding ------------------------------------------------------------------------------


def check_image_size(image_size: Any) -> int:
    """``image_size`` as an int; a one-line ``DatasetError`` unless 8 <= size <= 2048."""
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise DatasetError(f"image_size: {image_size!r} is not an integer")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise DatasetError(
            f"image_size: {image_size} is out of range {MIN_IMAGE_SIZE} .. {MAX_IMAGE_SIZE}"
        )
    return int(image_size)


def bad_summary(bad: list[tuple[str, str]], root: str | os.PathLike, shown: int = 3) -> str:
    """The first ``shown`` bad images as ``path: reason`` (paths relative to ``root``), then
    how many more there are."""

    def relative(path: str) -> str:
        rel = os.path.relpath(path, root)
        return path if rel.startswith("..") else rel

    text = "; ".join(f"{relative(path)}: {reason}" for path, reason in bad[:shown])
    return text + (f" (and {len(bad) - shown} more)" if len(bad) > shown else "")


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "no detail"
    return f"{type(exc).__name__}: {text}"


def decode_opened(img: Any, size: int) -> np.ndarray:
    """An opened (lazy) Pillow image -> uint8 ``[size, size]`` grey, by the rules in the module
    docstring: the one decoding of training (:func:`decode_image`) and of prediction
    (:func:`deepchest.inference.read_image`). Pillow's own exceptions pass through."""
    from PIL import Image, ImageOps

    if img.format == "JPEG":
        img.draft("L", (size, size))
    img.load()  # decoding is lazy: truncation and corruption surface here
    if img.format == "JPEG":
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.clip(np.asarray(img, dtype=np.float32), 0, 65535)
        big = Image.fromarray(wide)  # mode F
        if big.size != (size, size):
            big = big.resize((size, size), Image.Resampling.BICUBIC)
        return np.clip(np.rint(np.asarray(big) / 257.0), 0, 255).astype(np.uint8)
    if img.mode != "L":
        img = img.convert("L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def decode_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image file -> uint8 ``[size, size]`` grey (the rules are in the module docstring).
    Raises :class:`BadImage` with a one-line reason for a missing or unreadable file."""
    from PIL import Image

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadImage("missing (no such file)") from None
    except OSError as exc:
        raise BadImage(f"cannot stat ({one_line(exc)})") from None
    if not os.path.isfile(path):
        raise BadImage("not a regular file")
    if st.st_size == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            return decode_opened(img, size)
    except Image.UnidentifiedImageError:
        raise BadImage("cannot identify the image (not an image, or a corrupt header)") from None
    except BadImage:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise BadImage(f"unreadable ({one_line(exc)})") from None


# ---- worker processes ----------------------------------------------------------------------

_counter: Any = None


def _init_worker(counter: Any, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent alone decides, and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a parent killed outright (SIGKILL, OOM) takes its workers with it (Linux)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)
    global _counter
    _counter = counter


def _shard_sha256(images: np.ndarray, start: int, stop: int) -> str:
    digest = hashlib.sha256()
    step = 256
    for a in range(start, stop, step):
        digest.update(np.ascontiguousarray(images[a : min(stop, a + step)]).data)
    return digest.hexdigest()


def _decode_shard(
    images_path: str, shard: int, start: int, paths: list[str], size: int
) -> tuple[int, str, list[tuple[int, str]]]:
    """Decode ``paths`` into rows ``start ..`` of ``images_path``; flush; hash the shard."""
    images = np.load(images_path, mmap_mode="r+")
    bad: list[tuple[int, str]] = []
    for k, path in enumerate(paths):
        row = start + k
        try:
            images[row, 0] = decode_image(path, size)
        except BadImage as exc:
            images[row] = 0
            bad.append((row, str(exc)))
        if _counter is not None:
            with _counter.get_lock():
                _counter.value += 1
    images.flush()
    digest = _shard_sha256(images, start, start + len(paths))
    del images
    return shard, digest, bad


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# ---- manifest ------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never half
    (also when several processes write it at once: each through its own temporary file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _layout(index: ImageIndex) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """``order[r]`` = the index position of ``images.npy`` row ``r`` (split-major), and each
    split's block ``{"start", "images"}``."""
    splits = np.asarray(index.splits, dtype=object)
    order, blocks, start = [], {}, 0
    for split in SPLITS:
        rows = np.flatnonzero(splits == split)
        order.append(rows)
        blocks[split] = {"start": start, "images": len(rows)}
        start += len(rows)
    return np.concatenate(order).astype(np.int64), blocks


def _identity(index: ImageIndex, image_size: int, shard_size: int) -> dict[str, Any]:
    """What decides the pixels of ``images.npy``; a rerun must match it to reuse shards."""
    listing = hashlib.sha256()
    for path, split in zip(index.paths, index.splits, strict=True):
        listing.update(f"{split}\t{path}\n".encode())
    return {
        "dataset": index.dataset,
        "root": str(index.root),
        "image_size": image_size,
        "shard_size": shard_size,
        "n_images": len(index),
        "images_sha256": listing.hexdigest(),
        "decoder_version": DECODER_VERSION,
    }


_IDENTITY_WORDS = {
    "dataset": "data set",
    "root": "source root",
    "image_size": "image size",
    "shard_size": "shard size",
    "n_images": "number of images",
    "images_sha256": "image list or splits",
    "decoder_version": "decoder version",
}


def _check_same_inputs(manifest: dict[str, Any], identity: dict[str, Any], path: Path) -> None:
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: packed format version {manifest.get('version')}, this version writes "
            f"{FORMAT_VERSION}; rerun with --overwrite to replace it"
        )
    old = manifest.get("inputs", {})
    for key, word in _IDENTITY_WORDS.items():
        if old.get(key) != identity[key]:
            if key == "images_sha256":
                change = "differs"
            else:
                change = f"{old.get(key)!r} -> {identity[key]!r}"
            raise DatasetError(
                f"{path}: prepared from other inputs ({word} {change}); rerun with "
                "--overwrite to replace it, or choose another output folder"
            )


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable manifest ({one_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a {FORMAT} manifest")
    return data


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Wait for, then hold, an exclusive ``flock`` on ``path`` (made if missing), shared by
    every process of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    with open(out / _LOCK, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatasetError(f"{out}: another prepare is writing to this folder") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_outputs(out: Path) -> None:
    for name in (IMAGES, INDEX, MANIFEST, BAD, f".{INDEX}.tmp"):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    for leftover in out.glob(f".{MANIFEST}.*tmp"):  # write_json_atomic's, cut short
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


# ---- the prepare ---------------------------------------------------------------------------


def _check_arguments(
    index: ImageIndex, out: Path, image_size: Any, workers: Any, max_bad: Any, shard_size: Any
) -> tuple[int, int]:
    size = check_image_size(image_size)
    for name, value, low in (("workers", workers, 1), ("max_bad", max_bad, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise DatasetError(f"{name}: {value!r} is not an integer")
        if value is not None and value < low:
            raise DatasetError(f"{name}: {value} must be at least {low}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise DatasetError(f"shard_size: {shard_size!r} must be a positive integer")
    if len(index) == 0:
        raise DatasetError(f"{index.root}: the {index.dataset} index has no images")
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: exists and is not a folder")
    return size, workers if workers is not None else _cpu_count()


def prepare(
    index: ImageIndex,
    out: str | os.PathLike,
    image_size: int,
    *,
    workers: int | None = None,
    max_bad: int = 0,
    shard_size: int = 1024,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> PrepareReport:
    """Decode every image of ``index`` to uint8 ``[1, image_size, image_size]`` into ``out``
    (layout, decoding rules and resuming in the module docstring).

    ``workers``: decoding processes (default: the CPUs this process may use). ``max_bad``:
    unreadable or missing images tolerated (flagged, left out by the loader, counted); more
    raise :class:`TooManyBadImages` after everything is written and the manifest says
    ``failed``. ``progress(done, total)`` is called a few times a second and after each
    shard (``done`` counts reused shards' images too); an exception it raises (say
    ``KeyboardInterrupt``) stops the workers and leaves a resumable folder. ``overwrite``:
    replace a folder prepared from other inputs. One-line ``DatasetError`` for bad arguments
    or a folder that cannot be reused.
    """
    started = time.perf_counter()
    out = Path(out)
    size, workers = _check_arguments(index, out, image_size, workers, max_bad, shard_size)
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        return _prepare_locked(
            index, out, size, workers, max_bad, shard_size, progress, overwrite, started
        )


def _start_or_resume(
    index: ImageIndex, out: Path, size: int, shard_size: int, overwrite: bool
) -> tuple[dict[str, Any], np.ndarray]:
    """The manifest to continue from (a new one or the folder's) and the row order."""
    identity = _identity(index, size, shard_size)
    order, blocks = _layout(index)
    n = len(index)
    shape = [n, 1, size, size]
    try:
        manifest = _read_manifest(out / MANIFEST)
    except DatasetError:
        if not overwrite:
            raise
        manifest = None
    if manifest is None:
        ours = [name for name in (IMAGES, INDEX, BAD) if (out / name).exists()]
        if ours and not overwrite:
            raise DatasetError(
                f"{out / ours[0]}: exists without {MANIFEST}; rerun with --overwrite to "
                "replace it, or choose another output folder"
            )
    elif overwrite:
        manifest = None  # --overwrite starts again, whatever the folder holds
    else:
        _check_same_inputs(manifest, identity, out / MANIFEST)
    if manifest is not None:
        try:
            existing = np.load(out / IMAGES, mmap_mode="r")
            reusable = list(existing.shape) == shape and existing.dtype == np.uint8
            del existing
        except (OSError, ValueError):
            reusable = False
        if not reusable:
            manifest = None
    if manifest is None:
        _remove_outputs(out)
        images = np.lib.format.open_memmap(
            out / IMAGES, mode="w+", dtype=np.uint8, shape=tuple(shape)
        )
        del images
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "state": "running",
            "inputs": identity,
            "dataset": index.dataset,
            "root": str(index.root),
            "image_size": size,
            "shape": shape,
            "dtype": "uint8",
            "shard_size": shard_size,
            "task_names": list(index.task_names),
            "splits": blocks,
            "decoding": {
                "grey": "Pillow convert('L') (ITU-R 601-2 luma), alpha dropped",
                "sixteen_bit": "clip(round(v16 / 257), 0, 255) after resampling",
                "resample": "Pillow BICUBIC, antialiased; JPEG draft (DCT) scaling first",
                "aspect": "stretched to a square, not cropped",
            },
            "shards": [
                {"rows": [a, min(n, a + shard_size)], "status": "pending"}
                for a in range(0, n, shard_size)
            ],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    manifest["state"] = "running"
    manifest["task_names"] = list(index.task_names)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest, order


def _prepare_locked(
    index: ImageIndex,
    out: Path,
    size: int,
    workers: int,
    max_bad: int,
    shard_size: int,
    progress: Callable[[int, int], None] | None,
    overwrite: bool,
    started: float,
) -> PrepareReport:
    manifest, order = _start_or_resume(index, out, size, shard_size, overwrite)
    shards = manifest["shards"]
    pending = [i for i, s in enumerate(shards) if s["status"] != "done"]
    n = len(index)
    reused = sum(s["rows"][1] - s["rows"][0] for s in shards if s["status"] == "done")
    decoded = _decode_pending(index, out, manifest, order, pending, workers, progress, reused)
    if progress is not None:
        progress(n, n)
    return _finish(
        index, out, manifest, order, max_bad, decoded, len(shards) - len(pending), started
    )


def _decode_pending(
    index: ImageIndex,
    out: Path,
    manifest: dict[str, Any],
    order: np.ndarray,
    pending: list[int],
    workers: int,
    progress: Callable[[int, int], None] | None,
    reused: int,
) -> int:
    """Decode the pending shards in a process pool; record each in the manifest as it ends."""
    if not pending:
        return 0
    shards, n, size = manifest["shards"], len(index), manifest["image_size"]
    methods = multiprocessing.get_all_start_methods()
    # fork: workers start in milliseconds without importing torch again
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    counter = context.Value("q", 0)
    finished = 0
    pool = ProcessPoolExecutor(
        max_workers=max(1, min(workers, len(pending))),
        mp_context=context,
        initializer=_init_worker,
        initargs=(counter, os.getpid()),
    )
    try:
        futures: dict[Future, int] = {}
        for i in pending:
            a, b = shards[i]["rows"]
            paths = [index.paths[j] for j in order[a:b]]
            futures[pool.submit(_decode_shard, str(out / IMAGES), i, a, paths, size)] = i
        last = time.monotonic()
        while futures:
            done, _ = wait(futures, timeout=_POLL_S, return_when=FIRST_COMPLETED)
            for future in done:
                del futures[future]
                try:
                    i, digest, bad = future.result()
                except BrokenProcessPool:
                    raise PrepareFailed(
                        f"{out / IMAGES}: a decoding process died (out of memory or killed?); "
                        "finished shards are kept: rerun the same command to resume"
                    ) from None
                shards[i].update(
                    status="done",
                    sha256=digest,
                    bad=[{"row": int(r), "reason": why} for r, why in bad],
                )
                finished += shards[i]["rows"][1] - shards[i]["rows"][0]
                write_json_atomic(out / MANIFEST, manifest)
                if progress is not None:
                    progress(reused + max(finished, counter.value), n)
                    last = time.monotonic()
            if progress is not None and time.monotonic() - last >= _POLL_S:
                progress(reused + max(finished, counter.value), n)
                last = time.monotonic()
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return counter.value


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now: cancel what has not started and terminate the running workers (their
    shards stay pending in the manifest and are redone by the next run)."""
    processes = list(getattr(pool, "_processes", {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(timeout=5)


def _compact(out: Path, manifest: dict[str, Any], bad_rows: set[int]) -> dict[int, int]:
    """Make each split's readable images the first rows of its block: copy the readable rows
    of the block's tail into the bad rows before it. Returns ``{old row: new row}`` for the
    moved images. Idempotent (a source row is never written), so an interrupted run redoes
    it safely; the shards it touched are hashed again."""
    moves: dict[int, int] = {}
    for block in manifest["splits"].values():
        a, b = block["start"], block["start"] + block["images"]
        k = sum(1 for r in bad_rows if a <= r < b)
        holes = sorted(r for r in bad_rows if a <= r < b - k)
        sources = [r for r in range(b - k, b) if r not in bad_rows]
        moves.update(zip(sources, holes, strict=True))
    if not moves:
        return moves
    images = np.load(out / IMAGES, mmap_mode="r+")
    for src, dst in moves.items():
        images[dst] = images[src]
    images.flush()
    for i in sorted({dst // manifest["shard_size"] for dst in moves.values()}):
        a, b = manifest["shards"][i]["rows"]
        manifest["shards"][i]["sha256"] = _shard_sha256(images, a, b)
    del images
    return moves


def _finish(
    index: ImageIndex,
    out: Path,
    manifest: dict[str, Any],
    order: np.ndarray,
    max_bad: int,
    decoded: int,
    reused_shards: int,
    started: float,
) -> PrepareReport:
    """All shards are decoded: count the bad, compact, write index.parquet and bad.txt, and
    mark the manifest complete (or failed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = len(index)
    reasons = {int(b["row"]): b["reason"] for s in manifest["shards"] for b in s.get("bad", [])}
    failed = len(reasons) > max_bad
    # also when failed: harmless (bad rows are left out), and index.parquet's rows stay true
    moves = _compact(out, manifest, set(reasons))
    row_of = np.full(n, -1, dtype=np.int64)  # index position -> images.npy row
    row_of[order] = np.arange(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    why = [""] * n
    for r, reason in reasons.items():
        ok[order[r]] = False
        why[order[r]] = reason
    for src, dst in moves.items():
        row_of[order[src]] = dst
    row_of[~ok] = -1
    columns: dict[str, Any] = {
        "path": pa.array(index.paths, pa.string()),
        "patient": pa.array(index.patients, pa.string()),
        "split": pa.array(index.splits, pa.string()),
        "ok": pa.array(ok),
        "row": pa.array(row_of),
        "reason": pa.array(why, pa.string()),
    }
    for t, task in enumerate(index.task_names):
        columns[f"label:{task}"] = pa.array(np.ascontiguousarray(index.labels[:, t]))
    for t, task in enumerate(index.task_names):
        columns[f"mask:{task}"] = pa.array(np.ascontiguousarray(index.mask[:, t]))
    tmp = out / f".{INDEX}.tmp"
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, out / INDEX)
    bad = [(index.paths[j], why[j]) for j in np.flatnonzero(~ok)]
    with open(out / BAD, "w") as f:
        f.writelines(f"{path}\t{reason}\n" for path, reason in bad)

    splits = np.asarray(index.splits, dtype=object)
    for split, block in manifest["splits"].items():
        in_split = splits == split
        block["ok"] = int((ok & in_split).sum())
        block["bad"] = int((~ok & in_split).sum())
    stat = (out / IMAGES).stat()
    manifest["files"] = {
        IMAGES: {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
        INDEX: {"size": (out / INDEX).stat().st_size, "sha256": file_sha256(out / INDEX)},
        BAD: {"size": (out / BAD).stat().st_size},
    }
    manifest["n_bad"] = len(bad)
    manifest["max_bad"] = max_bad
    manifest["counts"] = {s: b["ok"] for s, b in manifest["splits"].items()}
    manifest["state"] = "failed" if failed else "complete"
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json_atomic(out / MANIFEST, manifest)
    if failed:
        raise TooManyBadImages(
            f"{index.root}: {len(bad)} of {n} images are unreadable or missing, more than "
            f"max_bad {max_bad}: {bad_summary(bad, index.root)}; all are listed in {out / BAD}"
        )
    return PrepareReport(
        out=out,
        dataset=index.dataset,
        image_size=manifest["image_size"],
        n_images=n,
        counts=dict(manifest["counts"]),
        bad=bad,
        decoded=decoded,
        shards=len(manifest["shards"]),
        reused_shards=reused_shards,
        seconds=time.perf_counter() - started,
        bad_path=out / BAD,
    )
