"""The HTML report in a real browser: headless Chromium, no JavaScript error, every figure drawn.

Skipped without a Chromium binary, failed instead when ``HARNESS_REQUIRE_BROWSER=1`` (CI).
"""

from __future__ import annotations

import pytest

from harness.cli import main
from tests.browser import chromium_or_skip, render_in_chromium
from tests.conftest import tiny_config, write_config

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def chromium() -> str:
    return chromium_or_skip()


def test_detector_sees_a_js_error_and_an_undrawn_figure(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body>"
        '<div id="never-drawn" class="plotly-graph-div"></div>'
        "<script>undefinedFunction()</script></body></html>"
    )
    result = render_in_chromium(page, tmp_path / "chromium", binary=chromium)
    assert any("undefinedFunction" in e for e in result.js_errors), result.js_errors
    assert any("undefinedFunction" in e for e in result.console_errors), result.stderr[-2000:]
    assert result.figures == {"never-drawn": False}
    assert result.missing_svg == ["never-drawn"]


def test_detector_sees_a_drawn_plotly_figure(chromium, tmp_path):
    go = pytest.importorskip("plotly.graph_objects")
    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[3, 1, 2]))
    page = tmp_path / "figure.html"
    page.write_text(
        fig.to_html(include_plotlyjs=True, full_html=True, div_id="one-figure"), encoding="utf-8"
    )
    result = render_in_chromium(page, tmp_path / "chromium", binary=chromium)
    assert result.errors == []
    assert result.figures == {"one-figure": True}


def test_report_of_a_tiny_real_run_renders(chromium, ray_session, tmp_path, capsys):
    """``harness run`` on a tiny grid, as a user runs it; then its report.html in Chromium."""
    cfg = tiny_config(tmp_path, name="browser", grid={"seeds": [0, 1, 2]})
    assert cfg["grid"]["methods"] == ["equal", "deepchest"]
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0, capsys.readouterr().err
    report = tmp_path / "runs" / "browser" / "report.html"
    assert report.is_file()

    result = render_in_chromium(report, tmp_path / "chromium", binary=chromium)
    assert result.errors == [], "JavaScript errors in report.html:\n" + "\n".join(result.errors)
    assert result.duplicate_ids == [], f"figure ids used twice: {result.duplicate_ids}"
    assert len(result.figures) >= 3, f"expected at least 3 figures, found {list(result.figures)}"
    assert result.missing_svg == [], (
        f"figures not drawn (no svg.main-svg inside): {result.missing_svg}"
    )


def test_merged_report_with_failures_renders(chromium, tmp_path):
    """Two workloads (so the performance profiles are drawn), a failed and a diverged trial, a
    finding without a test AUROC: every figure still draws without a JavaScript error."""
    import reports
    from tests.test_reports import make_run

    one = make_run(
        tmp_path / "a",
        name="r18",
        seeds=(0, 1, 2),
        methods=("deepchest", "equal", "pcgrad"),
        outcomes={("pcgrad", 1): ("failed", "RuntimeError: boom")},
        nan_tasks={"equal": ("Effusion",)},
    )
    two = make_run(
        tmp_path / "b",
        name="r50",
        backbones=("resnet50",),
        seeds=(0, 1, 2),
        methods=("deepchest", "equal", "pcgrad"),
        outcomes={("deepchest", 2): ("diverged", "non-finite loss at epoch 2")},
    )
    written = reports.write_report([one, two], out=tmp_path / "merged" / "report.html")
    result = render_in_chromium(written.html, tmp_path / "chromium", binary=chromium)
    assert result.errors == [], "\n".join(result.errors)
    assert "fig-profiles" in result.figures
    assert result.missing_svg == [], f"figures without an SVG: {result.missing_svg}"
