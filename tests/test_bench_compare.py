"""``harness bench --compare torchjd``: every route is timed and computes the same update as
this project's step for the same aggregator (so the comparison times the same computation)."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys

import pytest
import torch

pytest.importorskip("torchjd")

from harness import bench, bench_compare  # noqa: E402
from harness.bench_spec import BenchSettings, MethodSpec  # noqa: E402
from harness.cli import main  # noqa: E402

TINY = ["--backbone", "simple_cnn", "--image-size", "32", "--batch-size", "4", "--tasks", "3"]
ROUTES = ["ours", "autojac", "autojac_gramian", "autogram", "naive"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_route_is_timed_and_updates_as_ours(tmp_path, capsys, monkeypatch):
    # one fresh process per route for the peak RSS is slow: measured in the test below
    monkeypatch.setattr(bench_compare, "peak_memory_bytes", lambda route, s, d: 2**30)
    out = tmp_path / "compare.json"
    code = main(
        ["bench", "--compare", "torchjd", "--methods", "mgda", "upgrad", *TINY]
        + ["--steps", "2", "--warmup", "1", "--threads", "1", "--output", str(out)]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["optimizer_step_included"] is True and result["settings"]["steps"] == 2
    rows = result["rows"]
    assert [(r["method"], r["route"]) for r in rows] == [("equal", "equal")] + [
        (m, k) for m in ("mgda", "upgrad") for k in ROUTES
    ]
    for row in rows:
        assert 0 < row["step_time_min_ms"] <= row["step_time_ms"]
        assert row["ratio_vs_equal"] > 0 and row["ratio_min_vs_equal"] > 0
    assert rows[0]["ratio_vs_equal"] == 1.0 and math.isnan(rows[0]["update_rel_diff_vs_ours"])
    by = {(r["method"], r["route"]): r for r in rows}
    for kind in ROUTES:
        # UPGrad: the same QPs on Gramians computed in another order (float32)
        assert by["upgrad", kind]["update_rel_diff_vs_ours"] < 1e-5, kind
        # MGDA: TorchJD's Frank-Wolfe stops at epsilon 1e-3 (exact agreement: next test);
        # the T passes use our own solver
        tolerance = 1e-12 if kind in ("ours", "naive") else 1e-2
        assert by["mgda", kind]["update_rel_diff_vs_ours"] < tolerance, kind
    assert by["upgrad", "autojac"]["aggregator"] == "torchjd.aggregation.UPGrad"
    printed = capsys.readouterr().out
    for label in ("ours (TrainStep)", "torchjd autojac+gram", "torchjd autogram", "T retained"):
        assert label in printed
    assert f"wrote {out}" in printed


def test_mgda_routes_agree_exactly_once_torchjd_frank_wolfe_converges(monkeypatch):
    """MGDA's weights put w_t on each head (default_heads "weighted"), UPGrad's own loss
    (above): both head conventions agree. With a converged solver the updates coincide."""
    from torchjd.aggregation import MGDA

    converged = dataclasses.replace(
        bench_compare.COUNTERPARTS["mgda"], build=lambda hp, t: MGDA(1e-12, 20000)
    )
    monkeypatch.setitem(bench_compare.COUNTERPARTS, "mgda", converged)
    settings = BenchSettings(backbone="simple_cnn", image_size=32, batch_size=4, tasks=3)
    routes = bench_compare.routes_for([MethodSpec.parse("mgda", 3)], 3)
    differences, errors = bench_compare.update_differences(routes, settings, torch.device("cpu"))
    assert not errors
    assert math.isnan(differences[0])  # equal: another method
    assert max(differences[1:]) < 1e-5


def test_a_route_wrongly_wired_is_caught(monkeypatch):
    """The check can fail: TorchJD's own-loss heads left unscaled for MGDA (weighted heads)."""
    monkeypatch.setattr(bench_compare.TorchStep, "_autojac", _autojac_without_head_scaling)
    settings = BenchSettings(backbone="simple_cnn", image_size=32, batch_size=4, tasks=3)
    routes = [
        bench_compare.Route(kind, MethodSpec.parse("mgda", 3)) for kind in ("ours", "autojac")
    ]
    differences, errors = bench_compare.update_differences(routes, settings, torch.device("cpu"))
    assert not errors
    assert differences[1] > 1e-2


def _autojac_without_head_scaling(self, representation, losses):
    from torchjd.autojac import jac_to_grad, mtl_backward

    mtl_backward(
        list(losses.unbind()),
        features=representation,
        tasks_params=self.heads,
        shared_params=self.shared,
        retain_graph=True,
    )
    return jac_to_grad(self.shared, self.aggregator)


def test_peak_memory_child_runs_the_route_alone():
    """What the fresh process runs (called here in-process: spawning one costs ~20 s)."""
    import queue

    settings = BenchSettings(backbone="simple_cnn", image_size=32, batch_size=4, tasks=3)
    route = bench_compare.Route("autogram", MethodSpec.parse("upgrad", 3))
    answer: queue.Queue = queue.Queue()
    build = functools.partial(bench_compare._route_step, route, settings)
    bench._cpu_peak_rss_child(build, 1, torch.get_num_threads(), answer)
    assert 50 * 2**20 < answer.get_nowait() < 64 * 2**30  # a process holding torch


@pytest.mark.parametrize(
    ("methods", "message"),
    [
        (["famo"], "'famo' has no TorchJD 0.18 aggregator to compare with; supported: mgda"),
        (["mgda:normalization=l2"], "normalization has no counterpart in TorchJD's MGDA"),
        (["mgda:level=representation"], "works at the representation level"),
        (["upgrad", "upgrad"], "--methods lists upgrad more than once"),
    ],
)
def test_methods_without_a_counterpart_are_one_line_errors(methods, message, capsys):
    assert main(["bench", "--compare", "torchjd", "--methods", *methods, *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_without_torchjd_a_one_line_error_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchjd", None)  # import torchjd raises ImportError
    assert main(["bench", "--compare", "torchjd", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[dev]'" in err[0]


def test_bench_without_compare_still_needs_methods(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench", *TINY])
    assert exit_.value.code == 2
    assert "the following arguments are required: --methods" in capsys.readouterr().err


def test_a_route_that_raises_is_reported_and_left_out(monkeypatch):
    """E.g. an operation without a vmap batching rule on some device: the others still run."""

    def fails(self, representation, losses):
        raise RuntimeError("Batching rule not implemented for aten::something\nmore")

    monkeypatch.setattr(bench_compare.TorchStep, "_autojac", fails)
    settings = BenchSettings(
        backbone="simple_cnn", image_size=32, batch_size=4, tasks=3, steps=1, warmup=0
    )
    rows = bench_compare.run_compare([MethodSpec.parse("pcgrad", 3)], settings, memory=False)
    by = {r["route"]: r for r in rows}
    for kind in ("autojac", "autojac_gramian"):
        assert (
            by[kind]["error"] == "RuntimeError: Batching rule not implemented for aten::something"
        )
        assert math.isnan(by[kind]["step_time_ms"]) and math.isnan(
            by[kind]["update_rel_diff_vs_ours"]
        )
    assert by["autogram"]["error"] is None and by["autogram"]["step_time_ms"] > 0
    assert by["autogram"]["update_rel_diff_vs_ours"] < 1e-5


def test_the_table_fits_80_columns(monkeypatch):
    """Timings stubbed: no route label nor number is cut on a narrow terminal."""
    import argparse
    import io

    from rich.console import Console

    from harness import bench

    rows = [
        {
            "route": kind,
            "label": bench_compare.ROUTES[kind],
            "method": "upgrad",
            "step_time_ms": 11234.5,
            "step_time_min_ms": 10234.5,
            "ratio_vs_equal": 12.34,
            "ratio_min_vs_equal": 11.11,
            "peak_memory_mb": 12345.0,
            "extra_memory_mb_vs_equal": 2345.0,
            "update_rel_diff_vs_ours": 1.2e-7,
            "error": None,
        }
        for kind in bench_compare.ROUTES
    ]
    monkeypatch.setattr(bench_compare, "run_compare", lambda *args, **kwargs: rows)
    monkeypatch.setattr(bench, "machine_description", lambda device: {"cpu": "x", "threads": 1})
    console = Console(width=80, record=True, file=io.StringIO())
    args = argparse.Namespace(methods=["upgrad"], output=None)
    assert bench_compare.command(args, BenchSettings(), console) == 0
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80 and "…" not in text
    for label in bench_compare.ROUTES.values():
        assert label in text
    assert text.count("11234.5") == len(rows) and text.count("1.2e-07") == len(rows)
