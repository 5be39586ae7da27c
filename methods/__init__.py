"""Task-weighting methods for multi-task learning (registry and public API).

``methods`` depends on torch, lazy_loader and the standard library only. Adding a method is one
new module plus one line in ``_CLASSES`` below.

torch is loaded lazily (``lazy_loader.load``; ``Tensor`` is imported for type checkers only):
``describe``, ``available`` and ``check`` run without loading it, so ``harness methods`` and
``harness validate`` start quickly and work without torch; building a method loads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from methods import engine
from methods.aligned_mtl import AlignedMTL
from methods.auto_lambda import AutoLambda
from methods.base import LEVELS, EpochStats, LossWeighting, Method, did_you_mean
from methods.cagrad import CAGrad
from methods.config_aggregator import ConFIG
from methods.db_mtl import DBMTL
from methods.deepchest import DeepChest
from methods.dualproj import DualProj
from methods.dwa import DWA
from methods.equal import Equal
from methods.excess_mtl import ExcessMTL
from methods.fairgrad import FairGrad
from methods.famo import FAMO
from methods.fixed import Fixed
from methods.geometric_mean import GeometricMean
from methods.graddrop import GradDrop
from methods.gradient import GradientAggregator
from methods.gradnorm import GradNorm
from methods.gradvac import GradVac
from methods.imtl_g import IMTLG
from methods.imtl_l import IMTLL
from methods.mgda import MGDA
from methods.moco import MoCo
from methods.modo import MoDo
from methods.nash_mtl import NashMTL
from methods.pcd import PCD
from methods.pcgrad import PCGrad
from methods.rlw import RLW
from methods.scale_invariant import ScaleInvariant
from methods.sdmgrad import SDMGrad
from methods.stch import STCH
from methods.uncertainty import Uncertainty
from methods.upgrad import UPGrad

__all__ = [
    "LEVELS",
    "AlignedMTL",
    "AutoLambda",
    "CAGrad",
    "ConFIG",
    "DualProj",
    "FairGrad",
    "GradDrop",
    "PCD",
    "DBMTL",
    "DWA",
    "DeepChest",
    "EpochStats",
    "Equal",
    "ExcessMTL",
    "FAMO",
    "GeometricMean",
    "GradientAggregator",
    "GradNorm",
    "GradVac",
    "IMTLG",
    "IMTLL",
    "MGDA",
    "MoCo",
    "MoDo",
    "NashMTL",
    "PCGrad",
    "SDMGrad",
    "UPGrad",
    "LossWeighting",
    "Method",
    "MethodInfo",
    "RLW",
    "STCH",
    "ScaleInvariant",
    "Uncertainty",
    "available",
    "check",
    "cost_class",
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
    GeometricMean,
    ScaleInvariant,
    STCH,
    IMTLL,
    AutoLambda,
    GradNorm,
    PCGrad,
    MGDA,
    UPGrad,
    IMTLG,
    CAGrad,
    AlignedMTL,
    NashMTL,
    FairGrad,
    ConFIG,
    GradDrop,
    DualProj,
    PCD,
    SDMGrad,
    MoDo,
    GradVac,
    ExcessMTL,
    DBMTL,
    MoCo,
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
    #: the paper (and reference code) the implementation follows
    reference: str = ""
    #: what one step costs, in passes (``cost_class``)
    cost: str = ""
    #: what the task heads get at the gradient levels by default ("own" or "weighted")
    default_heads: str = "weighted"
    #: mini-batches per optimisation step (2: SDMGrad, MoDo)
    batches_per_step: int = 1
    #: whether each step also draws a validation batch (Auto-Lambda)
    needs_validation_batch: bool = False


def cost_class(cls: type[Method]) -> str:
    """What one optimisation step of ``cls`` costs, in passes over the network, at its default
    level: the method's own ``cost`` where it sets one, else from its level (T = tasks)::

        loss                 1 backward (+ 1 forward for methods that need the losses after)
        last_shared_layer    1 backward + T short passes (to the last shared layer)
        parameters           T backward passes (the Jacobian) + the heads' backward
        two batches          2 forwards, 2T backward passes

    Measured ratios to equal weighting are in docs/methods.md ("Measured cost")."""
    if cls.cost:
        return cls.cost
    if getattr(cls, "batches_per_step", 1) == 2:
        return "2 batches: 2 forwards, 2T backward passes"
    if cls.level == "loss":
        return "1 backward + 1 forward" if cls.needs_losses_after else "1 backward"
    if cls.level == "last_shared_layer":
        return "1 backward + T short passes"
    return "T backward passes (Jacobian)"


def available() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        names = available()
        raise ValueError(
            f"unknown method {name!r}{did_you_mean(name, names)}; available: {', '.join(names)}"
        ) from None


def create(name: str, num_tasks: int, task_names: Sequence[str] | None = None, **hp: Any) -> Method:
    """Construct method ``name`` for ``num_tasks`` tasks with hyperparameters ``hp``.

    Raises ``ValueError`` for an unknown name, an unknown hyperparameter or a bad value; each
    message lists what is allowed.
    """
    return _lookup(name)(num_tasks, task_names, **hp)


def check(name: str, num_tasks: int, task_names: Sequence[str] | None = None, **hp: Any) -> None:
    """Raise the ``ValueError`` that ``create`` raises for these arguments, without building the
    method (``Method.check_arguments``): pure Python, torch is not loaded."""
    _lookup(name).check_arguments(num_tasks, task_names, **hp)


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
            reference=cls.reference,
            cost=cost_class(cls),
            default_heads=cls.default_heads,
            batches_per_step=getattr(cls, "batches_per_step", 1),
            needs_validation_batch=getattr(cls, "needs_validation_batch", False),
        )
        for cls in (_REGISTRY[n] for n in available())
    ]
