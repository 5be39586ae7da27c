"""The errors a run raises to the CLI, each with the exit code the README documents.

Exit codes, one rule for every command: 0 done; 1 the work could not be done or some of it
failed (Ray unreachable, too few resources, failed trials, a run directory in use); 2 bad input
(an experiment file, an argument, a data set, a request the run directory's state refuses);
130 interrupted by Ctrl-C (SIGINT); 143 terminated (SIGTERM). Both interruptions keep what
finished, and a run stays resumable.
"""

from __future__ import annotations

import signal

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class RunError(Exception):
    """A run that cannot start or go on; the message is one line for the user."""

    exit_code = EXIT_FAILED


class RunRefused(RunError):
    """A request that the run directory's state refuses (say ``--resume`` of a changed
    experiment, or a folder that is not a run directory): bad input, nothing changed."""

    exit_code = EXIT_BAD_INPUT


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so that ``finally`` blocks shut Ray down and a run stays
    resumable (Ray's own driver handler calls ``sys.exit`` and the core worker then aborts
    with a C++ stack dump)."""


_received_sigterm = False


def raise_terminated(signum: int, frame: object) -> None:
    global _received_sigterm
    _received_sigterm = True
    raise Terminated()


def was_terminated(exc: BaseException) -> bool:
    """Whether an interruption came from SIGTERM: Ray's compiled code may re-raise it as a
    plain KeyboardInterrupt, so the handler also leaves a flag."""
    return isinstance(exc, Terminated) or _received_sigterm


def handle_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated`; only the main thread may set handlers."""
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)
