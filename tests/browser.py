"""Open an HTML page in headless Chromium: JavaScript errors, plotly figures drawn, screenshots.

Not a test file: ``tests/test_report_browser.py`` uses it, and so can whoever refreshes
``docs/report.png`` (:func:`screenshot`). Needs a Chromium binary (Debian's ``chromium``);
:func:`chromium_or_skip` skips a test without one, or fails it when ``HARNESS_REQUIRE_BROWSER=1``
(as CI sets it), so the browser test can never pass by silently not running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

BINARIES = ("chromium", "chromium-browser", "google-chrome")
REQUIRE_ENV = "HARNESS_REQUIRE_BROWSER"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
ERRORS_ATTRIBUTE = "data-js-errors"
VIRTUAL_TIME_MS = 20_000  # virtual time for plotly to finish drawing; costs no real time
TIMEOUT_S = 120

# Runs before anything else on the page: every uncaught error, unhandled promise rejection and
# console.error call is appended, as JSON, to an attribute of <html> that --dump-dom keeps.
RECORDER = (
    "<script>(function () {"
    "var seen = [];"
    "function record(text) {"
    " seen.push(String(text));"
    f" document.documentElement.setAttribute('{ERRORS_ATTRIBUTE}', JSON.stringify(seen));"
    "}"
    "window.addEventListener('error', function (e) {"
    " record('error: ' + e.message + ' (' + e.filename + ':' + e.lineno + ')');"
    "});"
    "window.addEventListener('unhandledrejection', function (e) {"
    " var r = e.reason; record('unhandledrejection: ' + (r && r.stack ? r.stack : r));"
    "});"
    "var original = console.error;"
    "console.error = function () {"
    " record('console.error: ' + Array.prototype.map.call(arguments, String).join(' '));"
    " return original.apply(console, arguments);"
    "};"
    "})();</script>"
)
_HEAD = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
_HTML = re.compile(r"<html\b[^>]*>", re.IGNORECASE)
# Chromium logs console messages as: [...:INFO:CONSOLE:6] "Uncaught ...", source: URL (6)
_CONSOLE_LINE = re.compile(r"CONSOLE[^\]]*\]\s*(.*)")


def find_chromium() -> str | None:
    """The first Chromium-like binary on PATH, or None."""
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def chromium_or_skip() -> str:
    """The Chromium binary; without one, skip the calling test (fail it if one is required)."""
    import pytest

    path = find_chromium()
    if path is None:
        reason = (
            f"no Chromium binary on PATH (looked for {', '.join(BINARIES)}); install Debian's "
            "chromium (apt-get install chromium) to run the browser test"
        )
        if browser_required():
            pytest.fail(f"{reason}, and {REQUIRE_ENV}=1 requires it")
        pytest.skip(reason)
    return path


@dataclass
class RenderResult:
    """What a page did in Chromium."""

    js_errors: list[str]  # recorded in the page: onerror, unhandledrejection, console.error
    console_errors: list[str]  # "Uncaught ..." lines of Chromium's own console log
    figures: dict[str, bool]  # plotly figure container id -> whether it holds its SVG
    figure_ids: list[str]  # the containers' ids in page order, repeats included
    dom: str = field(repr=False)
    stderr: str = field(repr=False)

    @property
    def errors(self) -> list[str]:
        return self.js_errors + self.console_errors

    @property
    def duplicate_ids(self) -> list[str]:
        return sorted({i for i in self.figure_ids if self.figure_ids.count(i) > 1})

    @property
    def missing_svg(self) -> list[str]:
        return [fig_id for fig_id, has_svg in self.figures.items() if not has_svg]


class _DomScan(HTMLParser):
    """The recorded errors and, for every ``div.plotly-graph-div``, whether an
    ``svg.main-svg`` lies inside it. Only divs are counted for nesting: Chromium's
    serialisation closes every one of them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.errors_json: str | None = None
        self.figures: dict[str, bool] = {}
        self.figure_ids: list[str] = []
        self._current: str | None = None  # id of the figure container we are inside
        self._depth = 0  # divs open inside it, itself included

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        classes = values.get("class", "").split()
        if tag == "html" and ERRORS_ATTRIBUTE in values:
            self.errors_json = values[ERRORS_ATTRIBUTE]
        if tag == "div":
            if self._current is not None:
                self._depth += 1
            elif "plotly-graph-div" in classes:
                fig_id = values.get("id") or f"<figure without id #{len(self.figures) + 1}>"
                self.figures[fig_id] = False
                self.figure_ids.append(fig_id)
                self._current, self._depth = fig_id, 1
        elif tag == "svg" and self._current is not None and "main-svg" in classes:
            self.figures[self._current] = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._current is not None:
            self._depth -= 1
            if self._depth == 0:
                self._current = None


def with_recorder(html: str) -> str:
    """``html`` with the error recorder as the very first thing in its <head>."""
    for pattern in (_HEAD, _HTML):
        match = pattern.search(html)
        if match:
            return html[: match.end()] + RECORDER + html[match.end() :]
    return RECORDER + html


def _run(binary: str, args: list[str], profile_parent: Path, timeout: float):
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=profile_parent)
    command = [binary, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(binary).name} exited with {result.returncode}:\n{result.stderr[-4000:]}"
        )
    return result


def render_in_chromium(
    html_path: str | os.PathLike[str],
    tmp_dir: str | os.PathLike[str],
    *,
    binary: str | None = None,
    virtual_time_ms: int = VIRTUAL_TIME_MS,
    timeout: float = TIMEOUT_S,
) -> RenderResult:
    """Open a copy of ``html_path`` (with the error recorder injected) in headless Chromium
    with a fresh profile under ``tmp_dir``, and report its errors and plotly figures."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium binary on PATH (looked for {', '.join(BINARIES)})")
    tmp = Path(tmp_dir)
    tmp.mkdir(parents=True, exist_ok=True)
    page = Path(tempfile.mkdtemp(prefix="page-", dir=tmp)) / Path(html_path).name
    page.write_text(with_recorder(Path(html_path).read_text(encoding="utf-8")), encoding="utf-8")
    result = _run(
        binary,
        [f"--virtual-time-budget={virtual_time_ms}", "--dump-dom", page.resolve().as_uri()],
        tmp,
        timeout,
    )
    if "<html" not in result.stdout.lower():
        raise RuntimeError(f"Chromium dumped no DOM for {page}:\n{result.stderr[-4000:]}")
    scan = _DomScan()
    scan.feed(result.stdout)
    scan.close()
    js_errors = [str(e) for e in json.loads(scan.errors_json)] if scan.errors_json else []
    console_errors = [
        match.group(1).strip()
        for line in result.stderr.splitlines()
        if "Uncaught" in line and (match := _CONSOLE_LINE.search(line))
    ]
    return RenderResult(
        js_errors=js_errors,
        console_errors=console_errors,
        figures=scan.figures,
        figure_ids=scan.figure_ids,
        dom=result.stdout,
        stderr=result.stderr,
    )


def screenshot(
    html_path: str | os.PathLike[str],
    png_path: str | os.PathLike[str],
    width: int = 1280,
    height: int = 1600,
    *,
    binary: str | None = None,
    virtual_time_ms: int = VIRTUAL_TIME_MS,
    timeout: float = TIMEOUT_S,
) -> Path:
    """A ``width`` x ``height`` PNG of the top of ``html_path``, figures drawn (e.g. to refresh
    ``docs/report.png``: ``screenshot("runs/quickstart/report.html", "docs/report.png")``)."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError(f"no Chromium binary on PATH (looked for {', '.join(BINARIES)})")
    png = Path(png_path)
    with tempfile.TemporaryDirectory(prefix="harness-screenshot-") as tmp:
        shot = Path(tmp) / "screenshot.png"  # never mistake an old png_path for a new one
        _run(
            binary,
            [
                f"--screenshot={shot}",
                f"--window-size={width},{height}",
                "--hide-scrollbars",
                f"--virtual-time-budget={virtual_time_ms}",
                Path(html_path).resolve().as_uri(),
            ],
            Path(tmp),
            timeout,
        )
        if not shot.is_file() or shot.stat().st_size == 0:
            raise RuntimeError(f"Chromium wrote no screenshot for {html_path}")
        png.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, png)
    return png
