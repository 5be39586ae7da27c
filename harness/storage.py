"""Storage URIs: open any that pyarrow opens; stage a prepared data set from one onto this node.

``output.storage`` (the checkpoints, :mod:`harness.checkpoints`) and ``data.prepared`` may be a
local or shared path or a URI that ``pyarrow.fs.FileSystem.from_uri`` opens (``s3://``,
``gs://``, ``abfs://``, ``hdfs://``, ``file://``). Credentials, region and endpoint come from
each file system's usual environment variables and files; an S3-compatible store (MinIO, ...)
is reached with ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), or with the URI's own
options: ``s3://bucket/prefix?endpoint_override=host:9000&scheme=http``.

Staging. Training memory-maps ``images.npy`` (:mod:`deepchest.data.packed`), which needs a
local file. :func:`stage_prepared` copies a prepared folder from object storage into the
node-local cache ``<cache_dir>/prepared/<dataset>-<size>px-<content id>/`` once per node: the
trials that start on a node at once wait on one file lock while the first downloads; the
copy is checked against the manifest's sha256s (every shard and the index) before it is
moved to its final name, so a folder under its final name is always whole and verified. The
content id comes from the manifest's checksums, so later runs (of any URI holding the same
prepare) reuse the copy; nothing is ever evicted (delete the folder to free the space).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pyarrow.fs as pafs

CHUNK = 16 * 2**20  # bytes per read while staging
PROGRESS_EVERY_S = 15.0


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(file system, path in it)`` for a URI or a local path (relative to the working
    directory, ``~`` expanded). Raises whatever pyarrow raises for a URI it cannot open
    (``pyarrow.ArrowInvalid`` for an unknown scheme, ``OSError`` for unreachable stores)."""
    if "://" not in uri:
        uri = str(Path(uri).expanduser().resolve())
    return pafs.FileSystem.from_uri(uri)


def is_remote(location: str) -> bool:
    """True for a URI other than ``file://`` (what has to be staged to be memory-mapped)."""
    return "://" in location and not location.startswith("file://")


def local_path(location: str) -> str:
    """A local path for a plain path or a ``file://`` URI (``~`` expanded, made absolute)."""
    if location.startswith("file://"):
        location = unquote(urlparse(location).path)
    return str(Path(location).expanduser().resolve())


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (pyarrow's run to several), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dataset_error(message: str) -> Exception:
    from deepchest.data import DatasetError

    return DatasetError(message)


def read_prepared_manifest(uri: str) -> dict[str, Any]:
    """The manifest of the prepared folder at ``uri`` (object storage), checked to be a
    finished prepare of this format. Raises ``DatasetError`` (one line, ``data.prepared: ...``)
    when the store cannot be opened or the folder is not a finished prepare."""
    from deepchest.data.prepare import FORMAT, FORMAT_VERSION, MANIFEST

    where = f"data.prepared: {uri}"
    try:
        fs, root = open_uri(uri)
        with fs.open_input_stream(f"{root.rstrip('/')}/{MANIFEST}") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise _dataset_error(
            f"{where}: no {MANIFEST}; not a prepared data set (harness data prepare, then "
            "copy the folder there)"
        ) from None
    except Exception as exc:  # ArrowInvalid, OSError, ValueError: pyarrow's own words
        raise _dataset_error(f"{where}: cannot read it: {first_line(exc)}") from None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise _dataset_error(f"{where}: unreadable {MANIFEST} ({first_line(exc)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _dataset_error(f"{where}: its {MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise _dataset_error(
            f"{where}: packed format version {manifest.get('version')}, this version reads "
            f"{FORMAT_VERSION}; prepare the data set again"
        )
    if manifest.get("state") != "complete":
        raise _dataset_error(
            f"{where}: the prepare is not complete (state {manifest.get('state')!r}); finish "
            "it with harness data prepare and copy the folder again"
        )
    return manifest


def remote_source(data: dict[str, Any]) -> dict[str, int]:
    """Images per split (``train``, ``val``, ``test``) of the prepared folder in object
    storage that ``data`` (the experiment file's ``data`` section) names, from its manifest
    alone (pre-flight: nothing else is downloaded). Raises ``DatasetError`` (one line) as
    :func:`read_prepared_manifest` does, and for another data set or a task it lacks."""
    uri = data["prepared"]
    manifest = read_prepared_manifest(uri)
    if manifest.get("dataset") != data["dataset"]:
        raise _dataset_error(
            f"data.prepared: {uri} holds data set {manifest.get('dataset')!r}, not "
            f"{data['dataset']!r}"
        )
    names = manifest.get("task_names", [])
    tasks = data.get("tasks")
    missing = [t for t in tasks if t not in names] if isinstance(tasks, list) else []
    if missing:
        raise _dataset_error(
            f"data.tasks: unknown task {missing[0]!r}; available: {', '.join(names)}"
        )
    counts = manifest.get("counts", {})
    return {split: int(counts.get(split, 0)) for split in ("train", "val", "test")}


@contextlib.contextmanager
def _node_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process of this node (a ``flock`` on ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _copy(fs: pafs.FileSystem, src: str, dst: Path, size: int, say: Callable[[str], None]) -> None:
    """Stream one file to ``dst``, saying how far it got every ``PROGRESS_EVERY_S`` seconds."""
    done, last = 0, time.monotonic()
    with fs.open_input_stream(src) as stream, open(dst, "wb") as out:
        while chunk := stream.read(CHUNK):
            out.write(chunk)
            done += len(chunk)
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                say(f"  {dst.name}: {done / 2**20:,.0f} of {size / 2**20:,.0f} MiB")
                last = time.monotonic()
    if done != size:
        raise OSError(f"{src}: read {done} bytes, the store lists {size}")


def stage_prepared(
    uri: str, cache_dir: str | None = None, say: Callable[[str], None] = print
) -> Path:
    """The local copy of the prepared folder at ``uri``, made on first use (module
    docstring). ``cache_dir``: the node-local cache folder (``~`` expanded on this node;
    default :func:`deepchest.data.default_cache_dir`). ``say`` gets one line per step.
    Raises ``DatasetError`` (one line) for a folder that is not a finished prepare, one that
    fails its checksums after the download, or too little free space; ``OSError`` when the
    store fails mid-copy (nothing is left under the final name)."""
    from deepchest.data import default_cache_dir
    from deepchest.data.packed import content_id, load_packed
    from deepchest.data.prepare import BAD, IMAGES, INDEX, MANIFEST

    manifest = read_prepared_manifest(uri)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = f"{manifest['dataset']}-{manifest['image_size']}px-{content_id(manifest)[:16]}"
    final = cache / "prepared" / name
    with _node_lock(cache / "prepared" / f"{name}.lock"):
        if final.is_dir():  # staged earlier, by this run or another
            return final
        fs, root = open_uri(uri)
        root = root.rstrip("/")
        infos = {n: fs.get_file_info(f"{root}/{n}") for n in (MANIFEST, INDEX, IMAGES, BAD)}
        for needed in (INDEX, IMAGES):
            if infos[needed].type != pafs.FileType.File:
                raise _dataset_error(f"data.prepared: {uri}: no {needed}")
        files = {n: i for n, i in infos.items() if i.type == pafs.FileType.File}
        total = sum(i.size for i in files.values())
        partial = final.with_name(f"{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # a copy cut short by a kill
        partial.mkdir(parents=True)
        free = shutil.disk_usage(partial).free
        if free < total:
            shutil.rmtree(partial, ignore_errors=True)
            raise _dataset_error(
                f"data.cache_dir: {cache} has {free / 2**30:.1f} GiB free, staging {uri} needs "
                f"{total / 2**30:.1f} GiB"
            )
        say(f"staging {uri} ({total / 2**20:,.0f} MiB) into {final}")
        started = time.monotonic()
        try:
            for file_name, info in files.items():
                _copy(fs, info.path, partial / file_name, info.size, say)
            load_packed(partial, verify=True, cache_dir=cache)  # every sha256; records the time
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(final)
        say(f"staged {uri} in {time.monotonic() - started:.0f} s; checksums match")
        return final
