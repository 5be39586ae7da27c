"""The page of ``harness serve`` as a user meets it: the real command serving on localhost,
the page in headless Chromium (Debian's, driven by Playwright): upload by file picker and by
drag and drop, the bars, the heat map per finding, the disclaimer, no JavaScript error; a
text file and an oversize file get their messages. Saves a screenshot (``SERVE_SCREENSHOT``
names where, e.g. ``docs/serve.png``)."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from pydicom.data import get_testdata_file

from deepchest import inference as inf
from tests.browser import chromium_or_skip
from tests.bundles import FINDINGS, make_bundle
from tests.drivers import end_processes, free_port

DICOM = Path(get_testdata_file("RG1_UNCR.dcm"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``harness serve BUNDLE --port P --max-mb 10`` in a subprocess, until the module ends."""
    folder = tmp_path_factory.mktemp("page")
    bundle = make_bundle(folder / "model")
    port = free_port()
    log = open(folder / "serve.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "serve",
            str(bundle),
            "--port",
            str(port),
            "--max-mb",
            "10",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "api/model", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((folder / "serve.log").read_text()) from None
                time.sleep(0.5)
        yield url, folder
    finally:
        family = [psutil.Process(process.pid)]
        family += psutil.Process(process.pid).children(recursive=True)
        end_processes(family)
        log.close()


@pytest.fixture(scope="module")
def browser():
    binary = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=binary, args=["--no-sandbox"])
        yield launched
        launched.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1120, "height": 1100})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    page.goto(url)
    page.wait_for_selector("#model-card table")
    return page, errors


def test_upload_by_picker_and_by_drop_shows_bars_heat_maps_and_the_disclaimer(
    server, browser, tmp_path
):
    url, _ = server
    page, errors = open_page(browser, url)
    assert page.is_visible("#disclaimer-top") and "not a substitute for professional" in (
        page.inner_text("#disclaimer-top")
    )
    assert "trained on synthetic images" in page.inner_text("#synthetic-banner")
    png = tmp_path / "xray.png"
    from PIL import Image

    Image.fromarray(inf.dicom_pixels(DICOM.read_bytes())).save(png)
    page.set_input_files("#file", str(png))
    page.wait_for_selector("#result", state="visible")
    assert page.is_visible("#disclaimer-result")
    rows = page.query_selector_all(".bar-row")
    assert sorted(r.get_attribute("data-finding") for r in rows) == sorted(FINDINGS)
    probabilities = [float(r.inner_text().split()[-1]) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)  # sorted by probability
    first = page.get_attribute("#heatmap", "src")
    assert first.startswith("data:image/png;base64,")
    other = rows[-1].get_attribute("data-finding")
    rows[-1].click()
    assert page.get_attribute("#heatmap", "data-finding") == other
    assert page.get_attribute("#heatmap", "src") != first  # that finding's own map
    assert page.input_value("#finding-select") == other

    # the DICOM by drag and drop
    data = base64.b64encode(DICOM.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "xray.dcm", {type: "application/dicom"}));
            return dt;
        }""",
        data,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_function("document.getElementById('result-name').textContent === 'xray.dcm'")
    assert len(page.query_selector_all(".bar-row")) == len(FINDINGS)
    if os.environ.get("SERVE_SCREENSHOT"):
        page.screenshot(path=os.environ["SERVE_SCREENSHOT"], full_page=True)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert errors == []


def test_bad_files_get_a_message_and_nothing_else(server, browser, tmp_path):
    url, _ = server
    page, errors = open_page(browser, url)
    text = tmp_path / "notes.png"
    text.write_text("these are my notes, not an image")
    page.set_input_files("#file", str(text))
    page.wait_for_selector("#error", state="visible")
    assert page.inner_text("#error") == (
        "This file was not interpreted: not an image: give a PNG, JPEG or DICOM file."
    )
    assert not page.is_visible("#result")
    big = tmp_path / "big.png"
    big.write_bytes(np.random.default_rng(0).bytes(11 * 2**20))
    page.set_input_files("#file", str(big))
    page.wait_for_function(
        "document.getElementById('error').textContent.includes('over the limit of 10 MB')"
    )
    assert not page.is_visible("#result")
    # the browser logs the refusals' statuses themselves; nothing else may appear
    refused = ("422 (Unprocessable Entity)", "413 (Request Entity Too Large)")
    assert [e for e in errors if not e.endswith(refused)] == []
    assert len(errors) == 2


def test_the_api_docs_render_offline(server, browser):
    url, _ = server
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    page.goto(url + "docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "chest X-ray interpretation" in page.inner_text(".swagger-ui .info .title")
    assert page.get_by_text("/api/predict", exact=True).first.is_visible()
    assert errors == []


def test_serve_refuses_what_it_cannot_do_in_one_line(server, tmp_path):
    """Before torch loads: a port in use (the module's server holds one), --replicas without
    --ray, a path that does not exist."""
    url, _ = server
    port = url.rsplit(":", 1)[1].strip("/")
    harness = [sys.executable, "-m", "harness.cli", "serve"]
    cases = [
        (
            [str(tmp_path), "--port", port],
            1,
            f"harness: error: cannot listen on 127.0.0.1:{port}: Address already in use",
        ),
        (
            [str(tmp_path), "--replicas", "2"],
            2,
            "harness: error: --replicas and --address go with --ray (a Ray Serve deployment)",
        ),
        (
            [str(tmp_path / "nowhere"), "--port", str(free_port())],
            2,
            f"harness: error: {tmp_path / 'nowhere'}: no such file or folder",
        ),
        (["x", "--port", "99999"], 2, "harness: error: --port must be 1 .. 65535, got 99999"),
    ]
    for args, code, line in cases:
        done = subprocess.run([*harness, *args], capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr.strip()) == (code, line), args
