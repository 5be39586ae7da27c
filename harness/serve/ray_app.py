"""``harness serve --ray``: the same FastAPI app as a Ray Serve deployment, for a cluster.

Each replica gets the bundle's two files as bytes through Ray's object store (no shared file
system needed) and builds the app with :func:`harness.serve.app.create_app` when it starts
(``serve.ingress`` with the class's ``__serve_build_asgi_app__``). Ray Serve's proxy listens
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

    from deepchest.inference import CARD_FILE, WEIGHTS_FILE, load_bundle

    load_bundle(bundle_dir)  # BundleError here rather than in every replica
    card_text = (bundle_dir / CARD_FILE).read_text(encoding="utf-8")
    weights = (bundle_dir / WEIGHTS_FILE).read_bytes()
    serve.start(http_options={"host": host, "port": port})
    app = deployment(replicas, cpus).bind(card_text, weights, max_bytes)
    serve.run(app, name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}/"


def run_on_ray(
    bundle_dir: Path,
    host: str,
    port: int,
    replicas: int,
    address: str | None,
    max_bytes: int,
    notify: Callable[[str], None],
) -> int:
    """``harness serve --ray``: connect to ``address`` (else ``RAY_ADDRESS``, else start a
    local Ray), deploy, and serve until Ctrl-C; then delete the application and, for a local
    Ray, stop it."""
    import os

    import ray
    from ray import serve

    from harness.errors import RunRefused

    if replicas < 1:
        raise RunRefused(f"--replicas must be at least 1, got {replicas}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    where = address or os.environ.get("RAY_ADDRESS")
    notify(f"connecting to Ray ({where or 'a local instance'}) ...")
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        url = deploy(bundle_dir, host, port, replicas, max_bytes)
        notify(f"serving {bundle_dir} at {url} with {replicas} replica(s) (Ctrl-C stops)")
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        notify("stopping ...")
        return 0
    finally:
        try:
            serve.delete(APP_NAME)
            if not where:  # our own Ray: Serve goes with it; a cluster's Serve stays up
                serve.shutdown()
        finally:
            ray.shutdown()
