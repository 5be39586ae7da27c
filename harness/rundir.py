"""The run directory ``output.dir/name``: what a run owns on disk, and the rules for touching it.

- A folder is a run directory only when it holds a harness ``manifest.json`` (written first, as
  soon as Ray is up), our lock file, or the ``config.yaml`` and ``trials/`` of an earlier
  version's run. Any other non-empty folder is never written to or deleted, ``--overwrite``
  or not.
- One driver at a time: the driver holds an exclusive ``flock`` on ``.harness.lock`` for as
  long as it runs; a second driver on the same directory is refused.
- A run that stops before any trial started (Ray unreachable, too few resources, interrupted
  during start-up) removes the directory it created, or empties the empty folder it was
  given: nothing is left that a rerun would have to ``--overwrite``.
- ``finished_at`` in the manifest is set only once the report is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from harness.errors import RunError, RunRefused

MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
REPORT_FILE = "report.html"
LOCK_FILE = ".harness.lock"
TRIALS_DIR = "trials"


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The harness manifest in ``path``, or None when there is none (or it is not ours)."""
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and {"name", "started_at"} <= manifest.keys():
        return manifest
    return None


def is_finished(path: Path, manifest: dict[str, Any] | None) -> bool:
    return bool(manifest and manifest.get("finished_at")) and (path / REPORT_FILE).is_file()


def trained_anything(path: Path) -> bool:
    """Whether any trial of the run in ``path`` started (an attempt recorded: it may have
    saved a checkpoint before its first report), reported an epoch or ended (a failure
    included: its error line is worth keeping)."""
    for record in (path / TRIALS_DIR).glob("*.json"):
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            return True  # unreadable: keep it, let the user look
        if data.get("rows") or data.get("status") != "pending" or data.get("attempts"):
            return True
    return False


def _differences(old: Any, new: Any, path: str = "") -> list[str]:
    """Key paths where two resolved configs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            d
            for key in sorted(set(old) | set(new), key=str)
            for d in _differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        ]
    return [] if old == new else [path]


def _holds_only_ours(path: Path) -> bool:
    """Empty, or nothing but a lock file that an ended driver left."""
    return all(child.name == LOCK_FILE for child in path.iterdir())


def is_run_directory(path: Path) -> bool:
    """Ours: a manifest, our lock file (a driver was here), or an earlier version's run that
    stopped before its manifest (``config.yaml`` and ``trials/``)."""
    return (
        read_manifest(path) is not None
        or (path / LOCK_FILE).is_file()
        or ((path / CONFIG_FILE).is_file() and (path / TRIALS_DIR).is_dir())
    )


@dataclass
class RunDirectory:
    """A claimed run directory: locked by this process until :meth:`release`.

    ``mode`` is ``new`` (this run created it), ``resume`` (continue the run in it) or
    ``overwrite`` (replace the run in it; its contents go only when :meth:`clear` is called,
    once Ray is up, so that a run that cannot start deletes nothing).
    """

    path: Path
    mode: Literal["new", "resume", "overwrite"]
    stored_manifest: dict[str, Any] | None
    _lock: IO[str] | None = field(default=None, repr=False)
    created: bool = False  # this claim made the folder (else it was there, maybe empty)
    _cleared: bool = False

    @classmethod
    def claim(
        cls, path: Path, config: dict[str, Any], *, resume: bool, overwrite: bool
    ) -> RunDirectory:
        """Check that ``path`` may be used as asked and lock it.

        Raises:
            RunRefused: ``--resume`` and ``--overwrite`` together; a non-empty folder that is
                not a run directory; a run directory without ``--resume`` or ``--overwrite``;
                ``--resume`` of nothing or of a run whose experiment differs.
            RunError: another driver holds the directory, or it cannot be created.
        """
        if resume and overwrite:
            raise RunRefused("--resume and --overwrite exclude each other; give one")
        try:
            existed = path.is_dir()
            if path.exists() and not existed:
                raise RunRefused(
                    f"name: the run directory {path} (output.dir/name) exists and is not a "
                    "folder; choose another name (--name) or output.dir"
                )
            if existed and not _holds_only_ours(path) and not is_run_directory(path):
                raise RunRefused(
                    f"{path} is not a harness run directory (no harness manifest.json); "
                    "nothing was changed: choose another name or output.dir"
                )
            path.mkdir(parents=True, exist_ok=True)
            lock = _lock(path)
        except OSError as exc:
            raise RunError(f"output.dir: cannot use {path}: {exc.strerror or exc}") from None
        claimed = cls(path, "new", None, lock, created=not existed)
        try:
            claimed._decide(config, resume=resume, overwrite=overwrite)
        except BaseException:
            # only a folder this claim made is removed: anything else was there before
            claimed.release(discard=claimed.created)
            raise
        return claimed

    def _decide(self, config: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
        # read again under the lock: another driver may have started a run here meanwhile
        self.stored_manifest = manifest = read_manifest(self.path)
        if manifest is None and _holds_only_ours(self.path):
            if resume:
                raise RunRefused(f"{self.path}: nothing to resume")
            self.mode = "new"
            return
        if overwrite:
            self.mode = "overwrite"
            return
        if not resume:
            state = "a finished run" if is_finished(self.path, manifest) else "an unfinished run"
            raise RunRefused(
                f"{self.path} already holds {state}; pass --resume to continue it, "
                "--overwrite to replace it, or --name to start another (from Python: "
                "resume=True, overwrite=True, or another name)"
            )
        try:
            stored = yaml.safe_load((self.path / CONFIG_FILE).read_text())
        except (OSError, yaml.YAMLError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise RunRefused(f"{self.path}: not a readable run directory ({first})") from None
        changed = _differences(_normalised(stored), _normalised(config))
        # a run that trained nothing holds nothing to keep consistent with: take the new file
        if changed and trained_anything(self.path):
            raise RunRefused(
                f"--resume: the experiment differs from {self.path / CONFIG_FILE} at "
                f"{', '.join(changed)}; use --overwrite or another --name"
            )
        self.mode = "resume"

    def clear(self) -> None:
        """Delete the replaced run's files (``overwrite``), keeping the lock."""
        if self.mode != "overwrite":
            return
        self._cleared = True
        self._empty(keep_lock=True)

    def _empty(self, *, keep_lock: bool) -> None:
        for child in self.path.iterdir():
            if keep_lock and child.name == LOCK_FILE:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    def release(self, *, discard: bool = False) -> bool:
        """Unlock; with ``discard``, first remove what this run wrote if no trial started (a
        run that could not start leaves nothing behind): the folder if a harness run made it,
        else (an empty folder the user made) its contents. Returns whether that happened
        (nothing is left to resume)."""
        # an earlier run's files (resume, or overwrite before clear) are never removed here
        ours = self.mode == "new" or (self.mode == "overwrite" and self._cleared)
        removed = discard and ours and not trained_anything(self.path)
        if removed:
            # a folder this claim made, or a replaced run's: the harness made it
            if self.created or self.mode == "overwrite":
                shutil.rmtree(self.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    self._empty(keep_lock=False)
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None
        return removed


def _lock(path: Path) -> IO[str]:
    """An exclusive, non-blocking ``flock`` on ``path/.harness.lock`` holding our pid."""
    lock_path = path / LOCK_FILE
    handle = open(lock_path, "a+")  # noqa: SIM115 - held until release()
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunError(
            f"{path} is in use by another harness run (pid {holder}); wait for it to end "
            "or stop it first"
        ) from None
    # the driver we waited behind may have removed the file (and the folder) before unlocking:
    # a lock on an unlinked file guards nothing
    try:
        current = os.stat(lock_path).st_ino
    except FileNotFoundError:
        current = None
    if current != os.fstat(handle.fileno()).st_ino:
        handle.close()
        raise RunError(f"{path} was just removed by another harness run; run again")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def _normalised(experiment: Any) -> Any:
    """An experiment (a stored ``config.yaml`` or the new one) read through today's schema,
    defaults filled in, so that a section added since (absent from an older file) is not taken
    for a change; as given when it does not validate."""
    from harness.config import ConfigError, parse_config

    try:
        return parse_config(experiment).to_dict()
    except (ConfigError, TypeError, ValueError):
        return experiment
