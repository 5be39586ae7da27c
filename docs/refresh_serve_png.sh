#!/usr/bin/env bash
# Retake docs/serve.png: the page of `harness serve runs/quickstart` (the quickstart's best
# model, exported on first use) with pydicom-data's chest radiograph uploaded, in headless
# Chromium driven by Playwright (needs Debian's chromium and the dev extras).
# Run from an installed checkout (the README's first command made .venv and runs/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
[ -d runs/quickstart ] || harness run experiments/quickstart.yaml
python - <<'PY'
import subprocess, sys, time, urllib.request

import psutil
from playwright.sync_api import sync_playwright
from pydicom.data import get_testdata_file

from tests.browser import find_chromium
from tests.drivers import end_processes, free_port

port = free_port()
server = subprocess.Popen([sys.executable, "-m", "harness.cli", "serve", "runs/quickstart",
                           "--port", str(port)])
url = f"http://127.0.0.1:{port}/"
try:
    while True:
        try:
            urllib.request.urlopen(url + "api/model", timeout=2).read()
            break
        except OSError:
            if server.poll() is not None:
                sys.exit("harness serve ended before the page was up")
            time.sleep(0.5)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1120, "height": 900})
        page.goto(url)
        page.wait_for_selector("#model-card table")
        page.set_input_files("#file", get_testdata_file("RG1_UNCR.dcm"))
        page.wait_for_selector("#result", state="visible")
        page.screenshot(path="docs/serve.png", full_page=True)
        browser.close()
finally:
    process = psutil.Process(server.pid)
    end_processes([process, *process.children(recursive=True)])
PY
echo "wrote docs/serve.png"
