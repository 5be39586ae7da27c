"""``harness serve --ray``: the same FastAPI app as a Ray Serve deployment, for a cluster.

Each replica gets the bundle's two files as bytes, as the deployment's arguments (kept with
the deployment by Serve's controller, so no shared file system is needed; fine for bundles of
a few hundred MB), and builds the app with :func:`harness.serve.app.create_app` when it
starts (``serve.ingress`` with the class's ``__serve_build_asgi_app__``). Ray Serve's proxy listens
on ``host:port`` and spreads requests over the replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

APP_NAME = "deepchest-xray"
REPLICA_CPUS = 1.0  # one core per replica: Grad-CAM on a CPU is the heavy part of a request


def deployment(replicas: int, cpus: float = REPLICA_CPUS):
    """The Serve deployment class (``num_replicas=replicas``), built when asked so that
    importing this module needs no Ray Serve."""
    from ray import serve

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cpus})
    @serve.ingress()
    class XrayInterpreter:
        def __init__(self, card_text: str, weights: bytes, max_bytes: int):
            from deepchest.inference import bundle_from_bytes

            self.bundle = bundle_from_bytes(card_text, weights, source="replica")
            self.max_bytes = max_bytes

        def __serve_build_asgi_app__(self):
            from harness.serve.app import create_app

            return create_app(self.bundle, max_bytes=self.max_bytes)

    return XrayInterpreter


def deploy(
    bundle_dir: Path,
    host: str,
    port: int,
    replicas: int,
    max_bytes: int,
    cpus: float = REPLICA_CPUS,
) -> str:
    """Deploy on the Ray that this process is connected to and return the page's URL. The
    bundle is loaded here first, so a bad one fails in one line before anything starts."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    from deepchest.inference import CARD_FILE, WEIGHTS_FILE, load_bundle
    from harness.errors import RunRefused
    from harness.storage import first_line

    load_bundle(bundle_dir)  # BundleError here rather than in every replica
    card_text = (bundle_dir / CARD_FILE).read_text(encoding="utf-8")
    weights = (bundle_dir / WEIGHTS_FILE).read_bytes()
    app = deployment(replicas, cpus).bind(card_text, weights, max_bytes)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
    except RayServeException as exc:  # a route or port another application holds, ...
        raise RunRefused(f"Ray Serve refused the deployment: {first_line(exc)}") from None
    return f"http://{host}:{port}/"


def _running_applications() -> set[str]:
    """The Serve applications running on the connected cluster (none when Serve is not up)."""
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return set(serve.status().applications)
    except RayServeException:  # no Serve instance on this cluster
        return set()


def run_on_ray(
    bundle_dir: Path,
    host: str,
    port: int,
    replicas: int,
    address: str | None,
    max_bytes: int,
    notify: Callable[[str], None],
) -> int:
    """``harness serve --ray``: join the cluster at ``address`` (else ``RAY_ADDRESS``, else a
    new local Ray), deploy, and serve until Ctrl-C. Then it deletes the application it
    deployed, and stops Serve and Ray only when it started that Ray itself: on a cluster,
    Serve and every other application keep running. An application of the same name already
    running there is refused, not replaced."""
    import contextlib
    import os

    import ray
    from ray import serve

    from deepchest.inference import load_bundle
    from harness.errors import RunRefused
    from harness.launch import connect

    if replicas < 1:
        raise RunRefused(f"--replicas must be at least 1, got {replicas}")
    load_bundle(bundle_dir)  # a bad bundle fails in one line before Ray starts
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    where = address or os.environ.get("RAY_ADDRESS")
    notify(f"connecting to Ray ({where or 'a new local instance'}) ...")
    started = connect(address, ship_code=True)
    deployed = False
    try:
        if APP_NAME in _running_applications():
            raise RunRefused(
                f"a Serve application named {APP_NAME!r} already runs on this Ray cluster; "
                "it is left alone (delete it with serve.delete, or serve from another cluster)"
            )
        url = deploy(bundle_dir, host, port, replicas, max_bytes)
        deployed = True
        notify(f"serving {bundle_dir} at {url} with {replicas} replica(s) (Ctrl-C stops)")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        notify("stopping ...")
        return 0
    finally:
        with contextlib.suppress(Exception):  # never hide why it stopped
            if deployed:
                serve.delete(APP_NAME)
            if started:
                serve.shutdown()
        if started:
            ray.shutdown()
