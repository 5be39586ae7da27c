"""Task-weighting methods for multi-task learning (registry and public API).

``methods`` depends on torch and the standard library only. Adding a method is one new module
plus one line in ``_CLASSES`` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from methods import engine
from methods.aligned_mtl import AlignedMTL
from methods.base import LEVELS, EpochStats, LossWeighting, Method
from methods.cagrad import CAGrad
from methods.deepchest import DeepChest
from methods.dwa import DWA
from methods.equal import Equal
from methods.famo import FAMO
from methods.fixed import Fixed
from methods.gradient import GradientAggregator
from methods.gradnorm import GradNorm
from methods.imtl_g import IMTLG
from methods.mgda import MGDA
from methods.modo import MoDo
from methods.nash_mtl import NashMTL
from methods.pcgrad import PCGrad
from methods.rlw import RLW
from methods.sdmgrad import SDMGrad
from methods.uncertainty import Uncertainty
from methods.upgrad import UPGrad

__all__ = [
    "LEVELS",
    "AlignedMTL",
    "CAGrad",
    "DWA",
    "DeepChest",
    "EpochStats",
    "Equal",
    "FAMO",
    "GradientAggregator",
    "GradNorm",
    "IMTLG",
    "MGDA",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "SDMGrad",
    "UPGrad",
    "LossWeighting",
    "Method",
    "MethodInfo",
    "RLW",
    "Uncertainty",
    "available",
    "create",
    "describe",
    "engine",
]

_CLASSES: tuple[type[Method], ...] = (
    Equal,
    Fixed,
    DeepChest,
    Uncertainty,
    DWA,
    RLW,
    FAMO,
    GradNorm,
    PCGrad,
    MGDA,
    UPGrad,
    IMTLG,
    CAGrad,
    AlignedMTL,
    NashMTL,
    SDMGrad,
    MoDo,
)

_REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in _CLASSES}


@dataclass(frozen=True)
class MethodInfo:
    """One row of the methods table: name, level, one-line summary, hyperparameter defaults."""

    name: str
    level: str
    summary: str
    hyperparameters: dict[str, Any]
    #: the levels the method can act at (its ``level`` hyperparameter's choices, if it has one)
    levels: tuple[str, ...] = ()
    #: the first epoch whose weights can differ from the initial ones (Method's attribute)
    first_reweighted_epoch: int = 1


def available() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}") from None


def create(name: str, num_tasks: int, task_names: Sequence[str] | None = None, **hp: Any) -> Method:
    """Construct method ``name`` for ``num_tasks`` tasks with hyperparameters ``hp``.

    Raises ``ValueError`` for an unknown name, an unknown hyperparameter or a bad value; each
    message lists what is allowed.
    """
    return _lookup(name)(num_tasks, task_names, **hp)


def describe() -> list[MethodInfo]:
    """Name, level, summary and hyperparameter defaults of every method, sorted by name."""
    return [
        MethodInfo(
            name=cls.name,
            level=cls.level,
            summary=cls.summary,
            hyperparameters=cls.hyperparameter_defaults(),
            levels=getattr(cls, "AGGREGATION_LEVELS", (cls.level,)),
            first_reweighted_epoch=cls.first_reweighted_epoch,
        )
        for cls in (_REGISTRY[n] for n in available())
    ]
