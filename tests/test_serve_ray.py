"""``harness serve --ray``'s deployment on the session's local Ray: 2 replicas behind Ray
Serve's HTTP proxy on localhost, answering as the local app does."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from deepchest import inference as inf
from harness.serve.app import create_app
from tests.bundles import make_bundle
from tests.drivers import free_port

DICOM = get_testdata_file("RG1_UNCR.dcm")


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_two_replicas_answer_over_http(ray_session, tmp_path):
    from ray import serve

    from harness.serve.ray_app import APP_NAME, deploy

    bundle_dir = make_bundle(tmp_path / "model")
    port = free_port()
    try:
        url = deploy(bundle_dir, "127.0.0.1", port, replicas=2, max_bytes=25 * 2**20, cpus=0.5)
        status = serve.status().applications[APP_NAME]
        (deployment,) = status.deployments.values()
        assert deployment.replica_states.get("RUNNING") == 2
        body, content_type = multipart("xray.dcm", Path(DICOM).read_bytes())
        answers = []
        for _ in range(4):
            request = urllib.request.Request(
                url + "api/predict", data=body, headers={"Content-Type": content_type}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                answers.append(json.loads(response.read()))
        page = urllib.request.urlopen(url, timeout=60).read().decode()
        assert "not a substitute for professional medical advice" in page
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
    with TestClient(create_app(inf.load_bundle(bundle_dir))) as local:
        expected = local.post(
            "/api/predict", files={"file": ("xray.dcm", Path(DICOM).read_bytes())}
        ).json()
    assert answers == [expected] * 4


def test_a_bad_bundle_fails_before_anything_is_deployed(ray_session, tmp_path):
    from harness.serve.ray_app import deploy

    with pytest.raises(inf.BundleError, match="no such file"):
        deploy(tmp_path, "127.0.0.1", free_port(), replicas=1, max_bytes=1)


def test_run_on_ray_leaves_what_it_did_not_start(ray_session, tmp_path):
    """A bad bundle fails in one line before Ray is touched; an application of the same name
    already running is refused and left running, and the session's Ray and Serve stay up."""
    from ray import serve

    from harness.errors import RunRefused
    from harness.serve.ray_app import APP_NAME, deploy, run_on_ray

    with pytest.raises(inf.BundleError, match="no such file"):
        run_on_ray(tmp_path / "none", "127.0.0.1", free_port(), 1, None, 1, print)
    bundle_dir = make_bundle(tmp_path / "model")
    port = free_port()
    try:
        deploy(bundle_dir, "127.0.0.1", port, replicas=1, max_bytes=2**20, cpus=0.5)
        with pytest.raises(RunRefused, match=f"a Serve application named '{APP_NAME}' already"):
            run_on_ray(bundle_dir, "127.0.0.1", port, 1, None, 2**20, print)
        assert ray_session.is_initialized()
        assert serve.status().applications[APP_NAME].status == "RUNNING"
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()
