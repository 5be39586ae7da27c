"""The backbone names ``deepchest.models.BACKBONES`` builds, without torch or torchvision: the
experiment schema (``harness.config``) checks ``grid.backbones`` against them, so that
``harness validate`` does not load either. ``deepchest.models`` refuses to import when its
builders and this list disagree."""

from __future__ import annotations

BACKBONE_NAMES: tuple[str, ...] = (
    "simple_cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "convnext_tiny",
)
