"""``harness export``: the best trial of a run as a model bundle (:mod:`deepchest.inference`).

The trial is chosen by its validation score alone (``val_mean_auroc``, the mean val AUROC at
its best epoch, the score the loop kept its best weights by), among the run's completed
trials that the report compares (final trials of a tuned run, never tuning trials or
single-task references), optionally of one method and one backbone. Test metrics are read
only to be written into the card.

Its best weights come from the run's checkpoint store (``manifest["checkpoints"]``); its data
splits are rebuilt from the run's ``config.yaml`` with the trial's own settings, exactly as
the trial saw them. One pass over validation gives the operating thresholds (Youden's J), the
per-finding val AUROC and the out-of-distribution threshold (a quantile of the val distances);
one over test the per-finding test AUROC and the false refusal rate of that threshold; one
over (at most ``MAX_OOD_TRAIN`` images of) train the feature statistics.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import RunRefused

MAX_OOD_TRAIN = 20_000  # training images whose features fit the OOD Gaussian (a seeded sample)
DEFAULT_OOD_QUANTILE = 0.99  # of val distances: about 1% of in-distribution images refused
MODEL_DIR = "model"  # the bundle's default place: RUN_DIR/model


@dataclass
class Exported:
    """Where the bundle went, the trial it came from, and its card."""

    path: Path
    trial_id: str
    card: dict[str, Any]


def check_run_dir(root: Path) -> dict[str, Any]:
    """The manifest of run directory ``root``; :class:`RunRefused` (one line) for a path that
    does not exist or is not a run directory. Cheap: the CLI calls it before torch loads."""
    from harness.rundir import CONFIG_FILE, read_manifest

    if not root.exists():
        raise RunRefused(f"{root}: no such file or folder")
    manifest = read_manifest(root)
    if manifest is None or not (root / CONFIG_FILE).is_file():
        raise RunRefused(f"{root}: not a run directory (no manifest.json and config.yaml)")
    return manifest


def _writable_target(root: Path, out: Path | None, overwrite: bool) -> Path:
    """Where the bundle goes, checked before any work: the run's own ``model/`` is replaced
    freely; another folder must be new or empty, or hold files only replaced with
    ``overwrite``; it is made now, so an unwritable place fails in one line at once."""
    target = out if out is not None else root / MODEL_DIR
    own = target.resolve() == (root / MODEL_DIR).resolve()
    if target.exists() and not target.is_dir():
        raise RunRefused(f"--out {target}: exists and is not a folder")
    if not own and not overwrite and target.is_dir() and any(target.iterdir()):
        raise RunRefused(f"--out {target}: not an empty folder; pass --overwrite to write into it")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunRefused(f"--out {target}: {exc.strerror or type(exc).__name__}") from None
    return target


def _records(run_dir: Path) -> list[dict[str, Any]]:
    import json

    from harness.rundir import TRIALS_DIR

    records = []
    for path in sorted((run_dir / TRIALS_DIR).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a record being written; the others decide
    return records


def choose_trial(
    records: list[dict[str, Any]], method: str | None = None, backbone: str | None = None
) -> dict[str, Any]:
    """The record with the highest finite ``val_mean_auroc`` among completed, compared
    trials (not tuning trials, not single-task references) of ``method`` and ``backbone``
    when given; ties go to the first trial id. Never reads a test metric.

    Raises :class:`RunRefused` (one line) when none qualifies, naming what there is."""

    def compared(r: dict[str, Any]) -> bool:
        identity = r["identity"]
        return identity.get("phase") != "tuning" and not identity.get("single_task")

    def score(r: dict[str, Any]) -> float:
        value = (r.get("summary") or {}).get("val_mean_auroc")
        return float(value) if isinstance(value, int | float) else math.nan

    pool = [r for r in records if compared(r)]
    for key, wanted in (("method", method), ("backbone", backbone)):
        if wanted is not None:
            there = sorted({r["identity"][key] for r in pool})
            pool = [r for r in pool if r["identity"][key] == wanted]
            if not pool:
                raise RunRefused(
                    f"no trial of {key} {wanted!r} in this run; it has: {', '.join(there)}"
                )
    done = [r for r in pool if r.get("status") == "completed" and math.isfinite(score(r))]
    if not done:
        raise RunRefused(
            "no completed trial with a validation score to export"
            + (f" ({len(pool)} trials, none completed)" if pool else "")
        )
    return max(sorted(done, key=lambda r: r["identity"]["trial_id"]), key=score)


def _by_name(names: list[str], values: Any) -> dict[str, float | None]:
    """JSON has no NaN: a finding without a value is null."""
    return {
        n: (float(v) if math.isfinite(float(v)) else None)
        for n, v in zip(names, values, strict=True)
    }


def export_model(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    method: str | None = None,
    backbone: str | None = None,
    ood_quantile: float = DEFAULT_OOD_QUANTILE,
    overwrite: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Exported:
    """Export the best trial of ``run_dir`` (see the module docstring) into ``out`` (default
    ``RUN_DIR/model``); a run still going or interrupted exports its best trial so far.
    Raises :class:`RunRefused` for a folder that is not a run directory, no trial to export,
    or a trial without kept weights."""
    import torch

    from deepchest.data import load_splits
    from deepchest.inference import Bundle, fit_ood, mahalanobis, write_bundle, youden_thresholds
    from deepchest.metrics import task_metrics
    from deepchest.models import MultiTaskNet
    from harness.checkpoints import CheckpointStore
    from harness.config import load_config
    from harness.launch import git_commit, harness_version, trial_spec
    from harness.rundir import CONFIG_FILE

    say = notify or (lambda message: None)
    root = Path(run_dir)
    manifest = check_run_dir(root)
    if not 0 < ood_quantile < 1:
        raise RunRefused(f"--ood-quantile must be in (0, 1), got {ood_quantile}")
    target = _writable_target(root, Path(out) if out else None, overwrite)
    record = choose_trial(_records(root), method, backbone)
    identity = record["identity"]
    trial_id = identity["trial_id"]
    cfg = load_config(root / CONFIG_FILE)
    spec = trial_spec(cfg, identity, gpus=0)
    say(f"exporting {trial_id} (val mean AUROC {record['summary']['val_mean_auroc']:.4f})")
    state = None
    if manifest.get("checkpoints"):
        state = CheckpointStore(manifest["checkpoints"]).load_best(trial_id)
    if state is None:
        raise RunRefused(
            f"trial {trial_id} kept no best weights in {manifest.get('checkpoints') or root} "
            "(the checkpoint store was deleted or moved, or the run predates kept weights)"
        )
    say("rebuilding its data splits ...")
    splits = load_splits(spec["data"])
    names = list(splits["train"].task_names)
    net = MultiTaskNet(spec["backbone"], len(names), in_channels=splits["train"].images.shape[1])
    net.load_state_dict(state)
    net.eval()
    decode_size = int(splits["train"].images.shape[-1])
    card: dict[str, Any] = {
        "backbone": spec["backbone"],
        "in_channels": int(splits["train"].images.shape[1]),
        "findings": names,
        "preprocessing": {
            "decode_size": decode_size,
            "input_size": int(spec["data"]["image_size"]),
            "decoding": "deepchest.data.prepare.decode_opened: one grey channel (ITU-R 601-2 "
            "luma), 16-bit mapped over its full range, bicubic resize to decode_size without "
            "keeping the aspect ratio; DICOM via deepchest.inference.dicom_pixels",
            "model_input": "deepchest.data.augment.eval_batch: bilinear resize to input_size, "
            "then (x / 255 - 0.5) / 0.25",
        },
    }
    probe = Bundle(net, {**card, "ood": {"threshold": math.inf}}, np.zeros(1), np.eye(1), root)
    say("predicting the validation and test splits ...")
    outputs = {}
    for split in ("val", "test"):
        images = splits[split].images[:, 0].numpy()
        outputs[split] = probe.features_and_probabilities(images)
    val = splits["val"]
    thresholds, rules = youden_thresholds(
        outputs["val"][1], val.labels.numpy(), val.mask.numpy().astype(bool)
    )
    say("fitting the training features for the out-of-distribution check ...")
    train = splits["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    sample = train.images[order[:MAX_OOD_TRAIN], 0].numpy()
    ood_mean, ood_precision = fit_ood(probe.features_and_probabilities(sample)[0])
    val_distance = mahalanobis(outputs["val"][0], ood_mean, ood_precision)
    test_distance = mahalanobis(outputs["test"][0], ood_mean, ood_precision)
    limit = float(np.quantile(val_distance, ood_quantile))
    weighting, params = spec["weighting_method"], spec["method_params"]
    card |= {
        "training": {
            "run": manifest.get("name"),
            "run_id": manifest.get("run_id"),
            "trial_id": trial_id,
            "method": identity["method"],
            "weighting_method": weighting,
            "method_params": params,
            "seed": identity["seed"],
            "settings": {k: v for k, v in identity.items() if "." in k},
            "best_epoch": record["summary"].get("best_epoch"),
            "epochs": spec["train"]["epochs"],
            "dataset": spec["data"]["dataset"],
            "prepared": spec["data"].get("prepared"),
            "split_sizes": {s: len(splits[s]) for s in ("train", "val", "test")},
            "selected_by": "val_mean_auroc (mean val AUROC at the trial's best epoch)",
        },
        # deepchest.metrics' per-task AUROC, as the loop computed it (scored by probability)
        "metrics": {
            f"{split}_auroc": _by_name(
                names,
                task_metrics(
                    torch.from_numpy(outputs[split][1]), splits[split].labels, splits[split].mask
                ).auroc,
            )
            for split in ("val", "test")
        },
        "thresholds": {
            "rule": "youden_j",
            "description": "per finding, the probability maximising sensitivity + specificity "
            "- 1 on the validation split; 0.5 where that split has no positive or no negative",
            "split": "val",
            "values": dict(zip(names, map(float, thresholds), strict=True)),
            "rules": dict(zip(names, rules, strict=True)),
        },
        "ood": {
            "method": "Mahalanobis distance of the trunk's features from the training mean, "
            "Ledoit-Wolf covariance",
            "train_images": int(len(sample)),
            "quantile": ood_quantile,
            "threshold": limit,
            "val_refusal_rate": float(np.mean(val_distance > limit)),
            "test_false_refusal_rate": float(np.mean(test_distance > limit)),
        },
        "harness": {
            "version": harness_version(),
            "git_commit": git_commit(),
            "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    }
    path = write_bundle(target, net, card, ood_mean, ood_precision)
    return Exported(path, trial_id, card)
