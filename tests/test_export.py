"""``harness export`` and ``harness predict`` through the CLI on a tiny real run: the best
trial by validation only, a card whose metrics are the trial's own, and predictions on the
pydicom-data chest radiograph as DICOM and as a 16-bit PNG of its pixels."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from deepchest import inference as inf
from deepchest.data.augment import eval_batch
from deepchest.models import MultiTaskNet
from harness.checkpoints import CheckpointStore
from harness.cli import main
from harness.errors import RunRefused
from harness.export import choose_trial, export_model
from tests.conftest import tiny_config, write_config

DICOM = Path(get_testdata_file("RG1_UNCR.dcm"))


def record(trial_id, method, val, test, status="completed", **identity):
    summary = {"val_mean_auroc": val, "test_mean_auroc": test}
    return {
        "identity": {"trial_id": trial_id, "method": method, "backbone": "b", **identity},
        "status": status,
        "summary": summary,
    }


def test_the_trial_is_chosen_by_validation_never_by_test():
    """b has the best test AUROC by far; a the best val: a is exported. Tuning trials and
    single-task references never are, nor a failed trial whatever its score."""
    records = [
        record("a", "equal", val=0.80, test=0.60),
        record("b", "deepchest", val=0.79, test=0.99),
        record("t", "equal", val=0.95, test=0.95, phase="tuning"),
        record("s", "stl", val=0.97, test=0.97, single_task="Mass"),
        record("f", "equal", val=0.99, test=0.99, status="failed"),
    ]
    assert choose_trial(records)["identity"]["trial_id"] == "a"
    assert choose_trial(records, method="deepchest")["identity"]["trial_id"] == "b"
    with pytest.raises(RunRefused, match="no trial of method 'pcgrad' in this run; it has: "):
        choose_trial(records, method="pcgrad")
    with pytest.raises(RunRefused, match="no completed trial with a validation score"):
        choose_trial([records[-1]])


@pytest.fixture(scope="module")
def exported(ray_session, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("export")
    cfg = tiny_config(tmp_path, grid={"methods": ["equal", "deepchest"], "seeds": [0, 1]})
    assert main(["run", str(write_config(tmp_path, cfg))]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    assert main(["export", str(run_dir)]) == 0
    return run_dir, run_dir / "model"


def test_export_writes_the_val_best_trial_with_its_own_metrics(exported):
    run_dir, bundle_dir = exported
    card = json.loads((bundle_dir / "model.json").read_text())
    trials = pd.read_parquet(run_dir / "results" / "trials.parquet")
    top = trials[trials["val_mean_auroc"] == trials["val_mean_auroc"].max()]
    best = top.sort_values("trial_id").iloc[0]  # a tie goes to the first trial id
    assert card["training"]["trial_id"] == best["trial_id"]
    assert card["training"]["split_sizes"] == {"train": 168, "val": 36, "test": 36}
    epochs = pd.read_parquet(run_dir / "results" / "epochs.parquet")
    mine = epochs[epochs["trial_id"] == best["trial_id"]]
    for split, key, epoch in (("test", "test_auroc", None), ("val", "val_auroc", best.best_epoch)):
        rows = mine[(mine["split"] == split) & ((mine["epoch"] == epoch) if epoch else True)]
        for task, auroc in zip(rows["task"], rows["auroc"], strict=True):
            ours = card["metrics"][key][task]
            assert (ours is None) if np.isnan(auroc) else ours == pytest.approx(auroc, abs=1e-9)
    assert card["thresholds"]["rule"] == "youden_j" and card["thresholds"]["split"] == "val"
    assert set(card["thresholds"]["values"]) == set(card["findings"])
    assert 0 <= card["ood"]["test_false_refusal_rate"] <= 1 and card["ood"]["quantile"] == 0.99
    assert card["training"]["dataset"] == "synthetic"
    assert card["harness"]["version"] and len(card["weights_sha256"]) == 64
    bundle = inf.load_bundle(bundle_dir)
    assert bundle.findings == card["findings"] and bundle.synthetic
    # the same logits as the trial's own best weights in the checkpoint store
    manifest = json.loads((run_dir / "manifest.json").read_text())
    state = CheckpointStore(manifest["checkpoints"]).load_best(card["training"]["trial_id"])
    net = MultiTaskNet("simple_cnn", len(card["findings"]))
    net.load_state_dict(state)
    images = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        x = eval_batch(images, 32)
        assert torch.equal(net.eval()(x)[1], bundle.net(x)[1])


def test_predict_json_on_a_dicom_and_its_16_bit_png(exported, tmp_path, capsys):
    _, bundle_dir = exported
    png = tmp_path / "xray.png"
    Image.fromarray(inf.dicom_pixels(DICOM.read_bytes())).save(png)
    capsys.readouterr()
    assert main(["predict", str(bundle_dir), str(DICOM), str(png), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out] == [str(DICOM), str(png)]
    names = json.loads((bundle_dir / "model.json").read_text())["findings"]
    for result in out:
        assert [f["name"] for f in result["findings"]] == names
        assert set(result["findings"][0]) == {"name", "probability", "threshold", "above"}
    first, second = ([f["probability"] for f in r["findings"]] for r in out)
    assert first == second  # the same pixels, through the same decoding


def test_predict_a_folder_as_csv_and_bad_files_in_one_line(exported, tmp_path, capsys):
    _, bundle_dir = exported
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(inf.dicom_pixels(DICOM.read_bytes())).save(folder / "a.png")
    (folder / "b.png").write_text("not an image")
    (folder / "notes.txt").write_text("skipped: not an image suffix")
    capsys.readouterr()
    code = main(["predict", str(bundle_dir), str(folder), "--format", "csv"])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.out.splitlines()
    assert lines[0] == "image,in_distribution,finding,probability,threshold,above"
    assert len(lines) == 1 + 14
    assert all(line.startswith(str(folder / "a.png")) for line in lines[1:])
    assert f"harness: error: {folder / 'b.png'}: not an image: give a PNG, JPEG or DICOM file" in (
        captured.err.splitlines()
    )
    assert main(["predict", str(tmp_path / "nowhere"), str(folder)]) == 2
    assert "nowhere: no such file or folder" in capsys.readouterr().err


def test_export_out_is_checked_before_the_work(exported, tmp_path):
    run_dir, _ = exported
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(RunRefused, match="not an empty folder; pass --overwrite"):
        export_model(run_dir, busy)
    assert (busy / "notes.txt").read_text() == "mine" and not (busy / "model.json").exists()
    with pytest.raises(RunRefused, match="exists and is not a folder"):
        export_model(run_dir, busy / "notes.txt")
    again = export_model(run_dir, busy, overwrite=True)  # and the run's own model/ freely
    assert (again.path / "model.json").is_file() and (busy / "notes.txt").exists()


def test_predict_and_its_refusals_as_a_user_types_them(exported, tmp_path):
    """Subprocesses, as typed: a run directory as MODEL, a pipe closed early, a missing path,
    a CUDA device that is not there."""
    run_dir, _ = exported
    png = tmp_path / "xray.png"
    Image.fromarray(inf.dicom_pixels(DICOM.read_bytes())).save(png)
    harness = [sys.executable, "-m", "harness.cli"]
    head = subprocess.run(
        f"{' '.join(harness)} predict {run_dir} {png} {png} --format csv | head -1",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert head.stdout.startswith("image,in_distribution,") and "Traceback" not in head.stderr
    missing = subprocess.run(
        [*harness, "predict", str(tmp_path / "nowhere"), str(png)], capture_output=True, text=True
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("nowhere: no such file or folder")
    if not torch.cuda.is_available():
        cuda = subprocess.run(
            [*harness, "predict", str(run_dir), str(png), "--device", "cuda"],
            capture_output=True,
            text=True,
        )
        assert cuda.returncode == 2 and cuda.stderr.strip() == (
            "harness: error: --device cuda: torch sees no CUDA device on this machine"
        )
    export = subprocess.run(
        [*harness, "export", str(tmp_path / "no-run")], capture_output=True, text=True
    )
    assert export.returncode == 2 and export.stderr.strip().endswith("no such file or folder")
    assert "loading torch" not in export.stderr  # refused before the slow part
