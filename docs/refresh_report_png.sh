#!/usr/bin/env bash
# Retake docs/report.png from the README's first command: the quickstart run, then a headless
# Chromium screenshot of the top of its report (tests/browser.py; needs Debian's chromium).
# Run from an installed checkout (the README's first command made .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
if [ -d runs/quickstart ]; then
    harness run experiments/quickstart.yaml --overwrite
else
    harness run experiments/quickstart.yaml
fi
python -c 'from tests.browser import screenshot
screenshot("runs/quickstart/report.html", "docs/report.png", width=1280, height=2300)'
echo "wrote docs/report.png"
