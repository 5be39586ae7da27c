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
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """A plain local path, ``~`` expanded, made absolute (``file://`` URIs are made plain
    paths when the experiment file is read)."""
    return str(Path(location).expanduser().resolve())


# file systems whose first path component is a bucket (or container) that must exist
BUCKET_FILE_SYSTEMS = ("s3", "gcs", "abfs")


def missing_bucket(fs: pafs.FileSystem, path: str) -> str | None:
    """The bucket named by ``path`` when ``fs`` is an object store and that bucket does not
    exist (a path under it reads as merely absent, and writes fail later), else None."""
    if fs.type_name not in BUCKET_FILE_SYSTEMS:
        return None
    bucket = path.strip("/").split("/", 1)[0]
    if bucket and fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        return bucket
    return None


def redact(uri: str) -> str:
    """``uri`` without credentials written into it (``s3://KEY:SECRET@bucket/...``, which
    pyarrow accepts), for messages, logs and records."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}"


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
    from deepchest.data import DatasetError
    from deepchest.data.prepare import FORMAT, FORMAT_VERSION, MANIFEST

    where = f"data.prepared: {redact(uri)}"
    try:
        fs, root = open_uri(uri)
        if bucket := missing_bucket(fs, root):
            raise _dataset_error(f"{where}: no bucket {bucket!r} there")
        with fs.open_input_stream(f"{root.rstrip('/')}/{MANIFEST}") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise _dataset_error(
            f"{where}: no {MANIFEST}; not a prepared data set (harness data prepare, then "
            "copy the folder there)"
        ) from None
    except DatasetError:
        raise
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
    from deepchest.data import check_tasks

    uri = data["prepared"]
    manifest = read_prepared_manifest(uri)
    if manifest.get("dataset") != data["dataset"]:
        raise _dataset_error(
            f"data.prepared: {redact(uri)} holds data set {manifest.get('dataset')!r}, not "
            f"{data['dataset']!r}"
        )
    check_tasks(tuple(manifest.get("task_names", [])), data.get("tasks"))
    counts = manifest.get("counts", {})
    return {split: int(counts.get(split, 0)) for split in ("train", "val", "test")}


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
        out.flush()
        os.fsync(out.fileno())  # on disk before the folder takes its final name
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
    from deepchest.data.packed import content_id, inspect_packed
    from deepchest.data.prepare import BAD, IMAGES, INDEX, MANIFEST, exclusive_lock

    manifest = read_prepared_manifest(uri)
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    name = f"{manifest['dataset']}-{manifest['image_size']}px-{content_id(manifest)[:16]}"
    final = cache / "prepared" / name
    with exclusive_lock(cache / "prepared" / f"{name}.lock"):
        if final.is_dir():  # staged earlier, by this run or another
            return final
        fs, root = open_uri(uri)
        root = root.rstrip("/")
        infos = {n: fs.get_file_info(f"{root}/{n}") for n in (MANIFEST, INDEX, IMAGES, BAD)}
        for needed in (INDEX, IMAGES):
            if infos[needed].type != pafs.FileType.File:
                raise _dataset_error(f"data.prepared: {redact(uri)}: no {needed}")
        files = {n: i for n, i in infos.items() if i.type == pafs.FileType.File}
        total = sum(i.size for i in files.values())
        partial = final.with_name(f"{name}.partial")
        shutil.rmtree(partial, ignore_errors=True)  # a copy cut short by a kill
        partial.mkdir(parents=True)
        free = shutil.disk_usage(partial).free
        if free < total:
            shutil.rmtree(partial, ignore_errors=True)
            raise _dataset_error(
                f"data.cache_dir: {cache} has {free / 2**30:.1f} GiB free, staging "
                f"{redact(uri)} needs {total / 2**30:.1f} GiB"
            )
        say(f"staging {redact(uri)} ({total / 2**20:,.0f} MiB) into {final}")
        started = time.monotonic()
        try:
            for file_name, info in files.items():
                _copy(fs, info.path, partial / file_name, info.size, say)
            staged = read_prepared_manifest(str(partial))
            if content_id(staged) != content_id(manifest):  # replaced while we copied
                raise _dataset_error(
                    f"data.prepared: {redact(uri)} changed while it was copied; run again"
                )
            inspect_packed(partial, verify=True, cache_dir=cache)  # every sha256; records the time
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        partial.rename(final)
        _fsync_dir(final.parent)
        say(f"staged {redact(uri)} in {time.monotonic() - started:.0f} s; checksums match")
        return final


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
