"""The harness's own checkpoint store: one per run, independent of Ray Tune and Ray Train.

Layout, on any file system that ``pyarrow.fs.FileSystem.from_uri`` opens (a local path,
``file://``, ``s3://``, ``gs://``, ``abfs://``, ...)::

    <storage>/<run name>-<run id>/checkpoints/<trial id>/
        epoch-0003.pt   the latest epoch's full state (one object; see trainloop._Trial._state)
        best-0002.pt    the best epoch's model weights (a state dict of tensors)

``<storage>`` is ``output.storage``, or the local run directory when that is not set; the run
id is a uuid made when the run directory is first made and kept in its manifest, so that
``--resume`` finds the store and a new run of the same name never restores a stale one.

Each object is serialised to bytes in memory and streamed to the file system (no temporary
files or folders anywhere). A save writes the new epoch's file (and its best weights, when
the best epoch changed) before it deletes the older ones, so a crash at any point leaves at
least one complete epoch; :meth:`CheckpointStore.load_latest` takes the newest epoch file
that loads, with the best weights that it names. When a trial has ended,
:meth:`CheckpointStore.finish` keeps only the best weights (what model export needs).

Credentials and endpoints: see :mod:`harness.storage` (an S3-compatible store is reached
with ``AWS_ENDPOINT_URL`` or the URI's ``?endpoint_override=host:9000&scheme=http``).
"""

from __future__ import annotations

import contextlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from harness.storage import first_line, missing_bucket, open_uri, redact

EPOCH_FILE = re.compile(r"^epoch-(\d+)\.pt$")
BEST_FILE = re.compile(r"^best-(\d+)\.pt$")
PARTIAL = ".partial"  # a file being written; moved to its real name when whole


def store_uri(storage: str, name: str, run_id: str) -> str:
    """The run's checkpoint root ``<storage>/<name>-<run_id>/checkpoints``; ``storage`` is a
    URI or a local path (made absolute here, since trials run in other working folders)."""
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    base, sep, query = storage.partition("?")  # keep a URI's options (endpoint_override=...)
    return f"{base.rstrip('/')}/{name}-{run_id}/checkpoints{sep}{query}"


def storage_problem(uri: str) -> str | None:
    """One line when ``uri`` (``output.storage``) cannot be opened or read, else None. Reads
    its metadata only; writes nothing."""
    try:
        fs, path = open_uri(uri)
        info = fs.get_file_info(path)
        bucket = missing_bucket(fs, path)
    except Exception as exc:  # ArrowInvalid, OSError, ValueError: pyarrow's own words
        return f"output.storage: cannot open {redact(uri)}: {first_line(exc)}"
    if bucket:
        return f"output.storage: {redact(uri)}: no bucket {bucket!r} there"
    if info.type == pafs.FileType.File:
        return f"output.storage: {redact(uri)} is a file, not a folder"
    return None


def delete_store(root: str | None) -> None:
    """Delete a run's checkpoint store (``root`` as :func:`store_uri` made it: the
    ``checkpoints`` folder, then its ``<name>-<run id>`` folder if nothing else is left there).
    Nothing happens for None or a store already gone."""
    if not root:
        return
    fs, path = open_uri(root)
    path = path.rstrip("/")
    if not path.endswith("/checkpoints"):  # only ever a store this module named
        raise ValueError(f"not a checkpoint store: {root}")
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return
    fs.delete_dir(path)
    parent = path.rsplit("/", 1)[0]
    selector = pafs.FileSelector(parent, allow_not_found=True)
    if parent and not fs.get_file_info(selector):
        with contextlib.suppress(OSError):
            fs.delete_dir(parent)


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


class CheckpointStore:
    """Saves and loads trial states by trial id under ``root`` (a URI or local path, see
    :func:`store_uri`). Cheap to create: every worker process of a trial opens its own."""

    def __init__(self, root: str):
        self.root = root
        self.fs, self.path = open_uri(root)

    def _dir(self, trial_id: str) -> str:
        return f"{self.path.rstrip('/')}/{trial_id}"

    def _names(self, trial_id: str) -> list[str]:
        selector = pafs.FileSelector(self._dir(trial_id), allow_not_found=True)
        return [Path(i.path).name for i in self.fs.get_file_info(selector)]

    def _write(self, trial_id: str, name: str, obj: Any) -> None:
        """Write under a temporary name, then move into place: a file under its real name is
        always whole (a kill mid-write leaves only a ``.partial``, removed by the next save)."""
        data = _to_bytes(obj)  # serialise first: a failure here writes nothing
        directory = self._dir(trial_id)
        self.fs.create_dir(directory, recursive=True)
        with self.fs.open_output_stream(f"{directory}/{name}{PARTIAL}") as out:
            out.write(data)
        self.fs.move(f"{directory}/{name}{PARTIAL}", f"{directory}/{name}")

    def _read(self, trial_id: str, name: str, map_location) -> Any:
        with self.fs.open_input_stream(f"{self._dir(trial_id)}/{name}") as stream:
            data = stream.read()
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)

    def _delete(self, trial_id: str, names: list[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(f"{self._dir(trial_id)}/{name}")

    def save(
        self,
        trial_id: str,
        epoch: int,
        state: dict[str, Any],
        best_epoch: int | None,
        best_model: dict[str, torch.Tensor] | None,
    ) -> None:
        """Write epoch ``epoch``'s ``state`` (plain objects and tensors) and, when no file
        holds them yet, the weights of ``best_epoch``; then delete the older epochs' files and
        best weights other than ``best_epoch``'s."""
        names = self._names(trial_id)
        best_name = f"best-{best_epoch:04d}.pt" if best_epoch is not None else None
        # this epoch became the best: (re)write it, even over an earlier attempt's file of the
        # same epoch (on a GPU a redone epoch's weights differ a little)
        fresh = best_epoch == epoch or best_name not in names
        if best_name and fresh and best_model is not None:
            self._write(trial_id, best_name, best_model)
        epoch_name = f"epoch-{epoch:04d}.pt"
        self._write(trial_id, epoch_name, state)
        stale = [
            n
            for n in names
            if (EPOCH_FILE.match(n) and n != epoch_name)
            or (BEST_FILE.match(n) and n != best_name)
            or n.endswith(PARTIAL)
        ]
        self._delete(trial_id, stale)

    def load_latest(self, trial_id: str, map_location="cpu") -> dict[str, Any] | None:
        """The newest epoch state of ``trial_id`` that loads, with its best epoch's weights
        under ``"best_model"`` (None when it had no best epoch); None when the store holds no
        complete epoch (a file cut short by a crash is passed over)."""
        names = self._names(trial_id)
        epochs = sorted((n for n in names if EPOCH_FILE.match(n)), reverse=True)
        for name in epochs:
            try:
                state = self._read(trial_id, name, map_location)
                best_epoch = state["best"]["epoch"]
                state["best_model"] = (
                    self._read(trial_id, f"best-{best_epoch:04d}.pt", map_location)
                    if best_epoch is not None
                    else None
                )
            # an unreadable file (written by a version without the move, or half-deleted) is
            # passed over; any other error of the file system (a network blip, expired
            # credentials) fails the attempt, so Tune retries it, rather than read as "no
            # checkpoint" and have the next save delete the real one
            except (RuntimeError, EOFError, KeyError, FileNotFoundError, pickle.UnpicklingError):
                continue
            return state
        return None

    def load_best(self, trial_id: str, map_location="cpu") -> dict[str, torch.Tensor] | None:
        """The best weights a trial left (after :meth:`finish`, the only file), or None."""
        best = sorted((n for n in self._names(trial_id) if BEST_FILE.match(n)), reverse=True)
        return self._read(trial_id, best[0], map_location) if best else None

    def finish(self, trial_id: str, best_epoch: int | None) -> None:
        """A trial ended: keep ``best_epoch``'s weights, delete the rest (epoch states with
        their optimizer state, other best weights)."""
        keep = f"best-{best_epoch:04d}.pt" if best_epoch is not None else None
        self._delete(trial_id, [n for n in self._names(trial_id) if n != keep])

    def trial_files(self, trial_id: str) -> list[str]:
        """File names kept for ``trial_id`` (sorted)."""
        return sorted(self._names(trial_id))
