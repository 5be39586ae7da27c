"""What ``harness bench`` is asked to measure: its arguments, checked without torch, so that
a bad ``--methods`` or ``--backbone`` is one line before torch loads (``harness.bench`` does
the measuring)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import methods
from deepchest.backbones import BACKBONE_NAMES

BASELINE = "equal"


class BenchError(ValueError):
    """Bad benchmark arguments; the message is one line."""


@dataclass(frozen=True)
class MethodSpec:
    """``name`` or ``name:key=value:key=value`` (e.g. ``mgda:level=representation``)."""

    text: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, num_tasks: int) -> MethodSpec:
        import yaml  # values as YAML reads them: 0.5 is a float, none is None

        name, *pairs = text.strip().split(":")
        params: dict[str, Any] = {}
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise BenchError(f"method {text!r}: expected name:key=value, got {pair!r}")
            params[key] = yaml.safe_load(value)
        try:
            methods.check(name, num_tasks=num_tasks, **params)
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        return cls(text=text.strip(), name=name, params=params)


@dataclass(frozen=True)
class BenchSettings:
    backbone: str = "resnet18"
    image_size: int = 64
    batch_size: int = 16
    steps: int = 20
    warmup: int = 3
    tasks: int = 14
    device: str = "cpu"
    amp: str = "off"
    optimizer: str = "adam"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_NAMES:
            names = ", ".join(sorted(BACKBONE_NAMES))
            raise BenchError(f"unknown backbone {self.backbone!r}; available: {names}")
        for name, low, high in (
            ("image_size", 8, 1024),
            ("batch_size", 2, 4096),
            ("steps", 1, 100_000),
            ("warmup", 0, 100_000),
            ("tasks", 1, 1000),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise BenchError(
                    f"--{name.replace('_', '-')} must be in [{low}, {high}], got {value}"
                )
        if self.device not in ("cpu", "cuda"):
            raise BenchError(f"--device must be cpu or cuda, got {self.device!r}")
        if self.amp not in ("off", "auto", "bf16", "fp16"):
            raise BenchError(f"--amp must be off, auto, bf16 or fp16, got {self.amp!r}")


def parse_methods(text: list[str], num_tasks: int) -> list[MethodSpec]:
    """``--methods`` items, each comma- or space-separated; ``equal`` is added first if absent."""
    items = [part for chunk in text for part in chunk.replace(",", " ").split()]
    if not items:
        raise BenchError("--methods is empty")
    specs = [MethodSpec.parse(item, num_tasks) for item in items]
    duplicates = sorted({s.text for s in specs if [t.text for t in specs].count(s.text) > 1})
    if duplicates:
        raise BenchError(f"--methods lists {', '.join(duplicates)} more than once")
    if not any(s.text == BASELINE for s in specs):
        specs.insert(0, MethodSpec.parse(BASELINE, num_tasks))
    return specs
