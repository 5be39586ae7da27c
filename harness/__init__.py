"""Running experiments: config, CLI, Ray launcher, training loop, measurement, results.

The Python API (:mod:`harness.api`): ``harness.run(config, overrides)`` trains a grid and
``harness.load(run_dir)`` reads a run directory, both returning a ``harness.RunResults``.
Importing the package stays light: torch, Ray and pandas load on the first call.
"""

from __future__ import annotations

from typing import Any

from harness.api import load, run

__all__ = ["RunResults", "load", "run"]


def __getattr__(name: str) -> Any:
    if name == "RunResults":  # pandas comes with it: only when asked for
        from reports.load import RunResults

        return RunResults
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
