"""``harness bench`` as a user runs it: the JSON it writes, the table, and bad arguments."""

from __future__ import annotations

import json

import pytest
import torch

from harness import bench, bench_spec
from harness.cli import main

TINY = ["--backbone", "simple_cnn", "--image-size", "16", "--batch-size", "4", "--tasks", "3"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_bench_writes_one_object_per_method_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "bench" / "result.json"
    code = main(
        ["bench", "--methods", "deepchest,pcgrad", "mgda:level=representation", *TINY]
        + ["--steps", "2", "--warmup", "1", "--threads", "1", "--output", str(out)]
    )
    assert code == 0
    rows = json.loads(out.read_text())
    # equal joins first as the baseline of the ratios
    assert [r["method"] for r in rows] == [
        "equal",
        "deepchest",
        "pcgrad",
        "mgda:level=representation",
    ]
    for row in rows:
        for key in (
            "method",
            "step_time_ms",
            "ratio_vs_equal",
            "peak_memory_mb",
            "flop_ratio_vs_equal",
        ):
            assert key in row
        assert row["step_time_ms"] > 0 and row["peak_memory_mb"] > 0
    by = {r["method"]: r for r in rows}
    assert by["equal"]["ratio_vs_equal"] == 1.0 and by["equal"]["flop_ratio_vs_equal"] == 1.0
    assert by["deepchest"]["flop_ratio_vs_equal"] == pytest.approx(1.0, abs=0.01)
    # T = 3 backward passes of ~2 forwards each plus one forward: ~(1 + 2T) / 3 = 2.33 equal's
    assert 0.8 * 7 / 3 < by["pcgrad"]["flop_ratio_vs_equal"] < 1.05 * 7 / 3
    assert by["pcgrad"]["level"] == "parameters" and by["pcgrad"]["jacobian_mb"] > 0
    assert by["mgda:level=representation"]["level"] == "representation"
    assert by["equal"]["jacobian_mb"] == 0
    printed = capsys.readouterr().out
    assert "mgda:level=representation" in printed and "x equal" in printed
    assert f"wrote {out}" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--methods", "equal,gradnorm2"],
            "unknown method 'gradnorm2' (did you mean 'gradnorm'?); available:",
        ),
        (["--methods", "mgda:level=weights"], "level must be one of parameters, representation"),
        (["--methods", "mgda:level"], "expected name:key=value"),
        (["--methods", "famo", "famo"], "--methods lists famo more than once"),
        (["--methods", "equal", "--steps", "0"], "--steps must be in [1, 100000], got 0"),
        (["--methods", "equal", "--backbone", "vgg"], "unknown backbone 'vgg'"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("harness: error: ")
    assert message in err[0]


def test_output_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys):
    assert main(["bench", "--methods", "equal", *TINY, "--output", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_run_bench_requires_the_baseline():
    specs = [bench_spec.MethodSpec.parse("deepchest", 3)]
    with pytest.raises(bench_spec.BenchError, match="must include 'equal'"):
        bench.run_bench(specs, bench_spec.BenchSettings(backbone="simple_cnn", tasks=3))


def test_jacobian_size_per_level():
    from deepchest.models import MultiTaskNet

    settings = bench_spec.BenchSettings(backbone="simple_cnn", tasks=3, batch_size=4)
    net = MultiTaskNet("simple_cnn", 3)
    shared = sum(p.numel() for p in net.shared_parameters())
    assert bench.jacobian_bytes("parameters", net, settings) == 4 * 3 * shared
    assert bench.jacobian_bytes("representation", net, settings) == 4 * 3 * 4 * 128
    assert bench.jacobian_bytes("loss", net, settings) == 0


def test_two_batch_and_update_every_rows_count_honestly(monkeypatch):
    """SDMGrad's step takes two batches (every image counted, the epoch ratio is per image);
    update_every's time is a whole cycle's mean, not the median's cheap step; its FLOPs too."""
    monkeypatch.setattr(bench, "peak_memory_bytes", lambda *a, **k: 0)  # no child processes
    settings = bench_spec.BenchSettings(
        backbone="simple_cnn", tasks=3, batch_size=4, image_size=16, steps=4, warmup=0
    )
    names = ("equal", "sdmgrad", "mgda:update_every=4", "auto_lambda")
    specs = [bench_spec.MethodSpec.parse(t, 3) for t in names]
    rows = {r["method"]: r for r in bench.run_bench(specs, settings)}
    pair, every, base = rows["sdmgrad"], rows["mgda:update_every=4"], rows["equal"]
    assert pair["batches_per_step"] == 2 and base["batches_per_step"] == 1
    assert pair["images_per_second"] == pytest.approx(8 / (pair["step_time_ms"] / 1000))
    assert pair["epoch_ratio_vs_equal"] == pytest.approx(pair["ratio_vs_equal"] / 2)
    assert every["update_every"] == 4
    # Auto-Lambda's look-ahead (a held-out synthetic batch) costs more than equal's step
    assert rows["auto_lambda"]["flop_ratio_vs_equal"] > 2
    # one Jacobian step in four: the FLOPs per step lie between equal's and MGDA's every step
    full = bench.run_bench(
        [specs[0], bench_spec.MethodSpec.parse("mgda", 3)], dataclass_replace(settings, steps=1)
    )[1]
    assert 1.0 < every["flop_ratio_vs_equal"] < full["flop_ratio_vs_equal"]
    with pytest.raises(bench_spec.BenchError, match="at least its update_every"):
        bench.run_bench([specs[0], bench_spec.MethodSpec.parse("mgda:update_every=9", 3)], settings)


def dataclass_replace(settings, **changes):
    import dataclasses

    return dataclasses.replace(settings, **changes)
