"""Ray's ``worker_process_setup_hook`` for the run's workers (``launch.code_runtime_env``):
import the project's packages while the worker's ``sys.path`` is still its own.

Ray puts the driver's working directory first on each worker's ``sys.path`` once the worker
takes its first task (``ray._private.worker.connect``: the job config's
``py_driver_sys_path``), so a ``methods/`` or ``harness/`` folder there (a user's own package,
another checkout) would shadow ours. Imported here first, the packages stay in
``sys.modules`` and their modules then follow the packages' own paths. This module imports
nothing else: every worker of the job runs it (Tune's trial actors, Ray Train's workers,
Serve's replicas and controller), most of which never need torch.
"""

from __future__ import annotations

import importlib

# the project's packages: what a node needs beyond the dependencies to run a trial
CODE_PACKAGES = ("harness", "methods", "deepchest", "reports")


def import_project() -> None:
    for name in CODE_PACKAGES:
        importlib.import_module(name)
