"""Small model bundles and image files for the export, predict and serve tests. Not a test
file: ``test_inference``, ``test_serve``, ``test_serve_browser`` and ``test_serve_ray`` share
it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepchest import inference as inf
from deepchest.models import MultiTaskNet

FINDINGS = ("Atelectasis", "Effusion", "Mass")


def png_bytes(array: np.ndarray) -> bytes:
    """A PNG file of ``array`` (uint8 grey or RGB, or uint16 grey)."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def make_bundle(
    folder: Path,
    *,
    findings: tuple[str, ...] = FINDINGS,
    size: int = 64,
    dataset: str = "synthetic",
    ood_threshold: float = 1.0e9,
) -> Path:
    """A bundle of a seeded random ``simple_cnn`` (``torch.manual_seed(0)`` right before it is
    built, so a test can build the same network), thresholds 0.5, decode and input size
    ``size``, and an OOD check that accepts everything unless ``ood_threshold`` says else."""
    torch.manual_seed(0)
    net = MultiTaskNet("simple_cnn", len(findings)).eval()
    features = np.random.default_rng(0).normal(size=(40, net.representation_dim))
    card = {
        "backbone": "simple_cnn",
        "in_channels": 1,
        "findings": list(findings),
        "preprocessing": {"decode_size": size, "input_size": size},
        "training": {
            "dataset": dataset,
            "split_sizes": {"train": 168, "val": 36, "test": 36},
            "method": "deepchest",
            "seed": 0,
        },
        "metrics": {
            "test_auroc": {name: (None if i == 1 else 0.7) for i, name in enumerate(findings)}
        },
        "thresholds": {"rule": "youden_j", "values": dict.fromkeys(findings, 0.5)},
        "ood": {"threshold": ood_threshold, "test_false_refusal_rate": 0.03},
        "harness": {"version": "0.1.0"},
    }
    return inf.write_bundle(folder, net, card, *inf.fit_ood(features))
