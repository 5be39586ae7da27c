"""The JSON API of ``harness serve`` through FastAPI's TestClient: the same answer as
``harness predict --format json``, heat maps, every bad input as a 4xx with one line, the
upload kept in memory, and concurrent requests."""

from __future__ import annotations

import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.data import get_testdata_file

from deepchest import inference as inf
from harness.serve.app import DISCLAIMER, SYNTHETIC_BANNER, create_app
from tests.bundles import FINDINGS, make_bundle, png_bytes

DICOM = Path(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def client(bundle_dir):
    with TestClient(create_app(inf.load_bundle(bundle_dir))) as c:
        yield c


def post(client, data: bytes, name="x.png", **params):
    return client.post("/api/predict", files={"file": (name, data)}, params=params)


def test_the_page_carries_the_disclaimer_and_the_synthetic_banner(client, bundle_dir, tmp_path):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count(DISCLAIMER) == 2  # before any result, and with every result
    assert SYNTHETIC_BANNER.split(":")[0] in page.text
    real = make_bundle(tmp_path / "real", dataset="nih")
    with TestClient(create_app(inf.load_bundle(real))) as other:
        assert "synthetic-banner" not in other.get("/").text
    info = client.get("/api/model").json()
    assert info["findings"] == list(FINDINGS) and info["synthetic"] is True
    assert info["test_auroc"]["Atelectasis"] == 0.7 and info["disclaimer"] == DISCLAIMER
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["file"]["format"] == "binary"
    assert client.get("/docs").status_code == 200


def test_the_api_answers_what_predict_prints(client, bundle_dir, tmp_path, capsys):
    from harness.cli import main

    path = tmp_path / "xray.dcm"
    path.write_bytes(DICOM.read_bytes())
    assert main(["predict", str(bundle_dir), str(path), "--format", "json"]) == 0
    (printed,) = json.loads(capsys.readouterr().out)
    answer = post(client, path.read_bytes(), name=str(path))
    assert answer.status_code == 200
    assert answer.json() == {**printed, "image": "xray.dcm"}  # never the client's folders


def test_heat_maps_for_every_finding(client):
    answer = post(client, DICOM.read_bytes(), name="xray.dcm", saliency="true").json()
    assert [s["name"] for s in answer["saliency"]] == list(FINDINGS)
    for item in [*answer["saliency"], {"overlay": answer["input"]}]:
        head, _, payload = item["overlay"].partition(",")
        assert head == "data:image/png;base64"
        image = Image.open(io.BytesIO(__import__("base64").b64decode(payload)))
        assert image.size == (64, 64)


@pytest.mark.parametrize(
    "data, status, detail",
    [
        (b"hello, not an image", 422, "not an image: give a PNG, JPEG or DICOM file"),
        (b"", 422, "an empty file (0 bytes)"),
        (
            png_bytes(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)),
            422,
            "a colour image",
        ),
    ],
)
def test_bad_files_are_4xx_with_one_line(client, data, status, detail):
    answer = post(client, data)
    assert answer.status_code == status
    assert set(answer.json()) == {"detail"} and answer.json()["detail"].startswith(detail)
    assert "\n" not in answer.json()["detail"]


def test_requests_without_the_image_are_400(client):
    answer = client.post("/api/predict", files={"image": ("x.png", b"abc")})
    assert answer.status_code == 400
    assert answer.json() == {"detail": "no multipart form field 'file' with the image"}
    answer = client.post("/api/predict", json={"file": "abc"})
    assert answer.status_code == 400
    assert answer.json() == {"detail": "send the image as the multipart form field 'file'"}


def test_oversized_uploads_and_images_are_refused(bundle_dir):
    bundle = inf.load_bundle(bundle_dir)
    small = TestClient(create_app(bundle, max_bytes=4096, max_pixels=10_000))
    noise = np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)
    answer = post(small, png_bytes(noise))
    assert answer.status_code == 413
    assert answer.json() == {"detail": "the file is over the limit of 0.00390625 MB"}
    answer = post(small, png_bytes(np.zeros((120, 120), np.uint8)))  # small file, many pixels
    assert answer.status_code == 422
    assert answer.json()["detail"] == "120 x 120 pixels is over the limit of 10,000 pixels"


def test_images_unlike_the_training_images_are_refused(tmp_path):
    strict = make_bundle(tmp_path / "strict", dataset="nih", ood_threshold=0.0)
    with TestClient(create_app(inf.load_bundle(strict))) as c:
        answer = post(c, DICOM.read_bytes(), name="xray.dcm")
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "this image is unlike the chest X-rays the model was trained on, so it was not "
        "interpreted (it also refuses 3% of real test images)"
    )
    # a synthetic-data demo model would refuse every real X-ray: it answers, and says so
    demo = make_bundle(tmp_path / "demo", dataset="synthetic", ood_threshold=0.0)
    with TestClient(create_app(inf.load_bundle(demo))) as c:
        answer = post(c, DICOM.read_bytes(), name="xray.dcm")
    assert answer.status_code == 200 and answer.json()["in_distribution"] is False


def test_an_upload_is_never_spooled_to_disk(client, monkeypatch):
    """Starlette's form parser spools files over 1 MB to a temporary file; ours parses the
    body in memory: any temporary file made during the request fails the test."""

    def no_disk(*args, **kwargs):
        raise AssertionError("the upload touched a temporary file")

    for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    big = DICOM.read_bytes()
    assert len(big) > 2**20  # over Starlette's spool threshold
    assert post(client, big, name="xray.dcm").status_code == 200


def test_concurrent_requests_get_their_own_answers(client):
    rng = np.random.default_rng(2)
    images = [png_bytes(rng.integers(0, 256, (64, 64), dtype=np.uint8)) for _ in range(4)]
    expected = [post(client, image).json() for image in images]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: post(client, images[i % 4]).json(), range(16)))
    assert answers == [expected[i % 4] for i in range(16)]


def raw_post(client, body: bytes, content_type: str):
    return client.post("/api/predict", content=body, headers={"Content-Type": content_type})


def test_malformed_multipart_bodies_are_400_in_one_line(client):
    answer = raw_post(client, b"--x\r\n", "multipart/form-data")  # no boundary
    assert answer.status_code == 400
    assert answer.json() == {"detail": "send the image as the multipart form field 'file'"}
    image = png_bytes(np.zeros((64, 64), np.uint8))
    head = b'--b0\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n\r\n'
    answer = raw_post(client, head + image[:100], "multipart/form-data; boundary=b0")
    assert answer.status_code == 400  # cut short: no closing boundary
    assert answer.json() == {"detail": "the upload ended before the file was complete"}


def test_only_the_base_name_of_the_client_file_name_comes_back(client):
    image = png_bytes(np.zeros((64, 64), np.uint8))
    for sent in ("/home/someone/private/x ray.png", "C:\\Users\\someone\\x ray.png"):
        assert post(client, image, name=sent).json()["image"] == "x ray.png"


def test_concurrent_requests_with_heat_maps(client):
    rng = np.random.default_rng(3)
    images = [png_bytes(rng.integers(0, 256, (64, 64), dtype=np.uint8)) for _ in range(3)]
    expected = [post(client, image, saliency="true").json() for image in images]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(
            pool.map(lambda i: post(client, images[i % 3], saliency="true").json(), range(9))
        )
    assert answers == [expected[i % 3] for i in range(9)]


def test_docs_work_offline_and_bad_parameters_are_one_line(client):
    docs = client.get("/docs").text
    assert "cdn.jsdelivr.net" not in docs and "/static-offline-docs/swagger-ui-bundle.js" in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    image = png_bytes(np.zeros((64, 64), np.uint8))
    answer = post(client, image, saliency="maybe")
    assert answer.status_code == 422 and isinstance(answer.json()["detail"], str)
    assert answer.json()["detail"].startswith("saliency: ")
    two = client.post(
        "/api/predict", files=[("file", ("a.png", image)), ("file", ("b.png", image))]
    )
    assert two.status_code == 400
    assert two.json() == {"detail": "more than one form field 'file': send one image"}
    tiny = post(client, png_bytes(np.zeros((8, 8), np.uint8)))
    assert tiny.status_code == 422
    assert tiny.json()["detail"] == (
        "8 x 8 pixels is too small for a radiograph (at least 32 on each side)"
    )
