"""UPGrad: unconflicting projection of gradients (Quinton & Rey, 2024).

*Jacobian Descent for Multi-Objective Optimization*, P. Quinton, V. Rey, 2024, arXiv:2406.16232.
Reference implementation used for the tests: ``torchjd.aggregation.UPGrad`` (torchjd 0.18.0, with
its default ``QuadprogProjector(norm_eps=1e-4, reg_eps=1e-4)``; here the same quadratic programs
are solved by an active-set method in torch, no quadprog needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

from methods.base import check_number, set_field
from methods.gradient import (
    GradientAggregator,
    check_positive_int,
    combine,
    nonnegative_qp,
    trace_normalized,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def dual_cone_projection_weights(
    u: Tensor, g: Tensor, *, max_iters: int = 1000, tol: float = 1e-14
) -> Tensor:
    """The weights ``v`` of the projection of ``J^T u`` onto the dual cone of the rows of ``J``.

    ``pi(J^T u) = J^T v`` where ``v`` solves (Proposition 1 of Quinton & Rey)::

        min_v  v^T G v   subject to  v >= u            (G = J J^T, positive definite)

    Written as ``v = u + x``: ``min_{x >= 0} 1/2 x^T G x + (G u)^T x`` (``nonnegative_qp``).
    ``u``: Tensor[T]; returns Tensor[T].
    """
    x = nonnegative_qp(g, g @ u, max_iters=max_iters, tol=tol)
    return u + x


def regularized_gramian(g: Tensor, norm_eps: float, reg_eps: float) -> Tensor:
    """``G / tr G + reg_eps * I``, the Gramian of the dual-cone projections (UPGrad, DualProj).

    As torchjd's ``QuadprogProjector``: ``G`` is divided by its trace (the zero matrix when
    ``tr G <= norm_eps``), which makes the weights scale-invariant, and ``reg_eps * I`` is added
    so that the QPs are strictly convex, with a unique solution. ``g``: Tensor[T, T]."""
    return trace_normalized(g, norm_eps) + reg_eps * torch.eye(g.shape[0], dtype=g.dtype)


def upgrad_weights(
    g: Tensor, *, norm_eps: float = 1e-4, reg_eps: float = 1e-4, max_iters: int = 1000
) -> Tensor:
    """``w = sum_i v_i`` with ``v_i`` the dual-cone projection weights of ``u_i = e_i / T``.

    The update ``d = w^T J = 1/T sum_i pi(g_i)`` is the mean of the task gradients each projected
    onto the dual cone ``{d : J d >= 0}``, so it conflicts with no task (``J d >= 0``).
    The projections use ``regularized_gramian(g, norm_eps, reg_eps)``, as torchjd.
    """
    num_tasks = g.shape[0]
    g = regularized_gramian(g, norm_eps, reg_eps)
    weights = torch.zeros(num_tasks, dtype=g.dtype)
    for i in range(num_tasks):
        u = torch.zeros(num_tasks, dtype=g.dtype)
        u[i] = 1.0 / num_tasks
        weights += dual_cone_projection_weights(u, g, max_iters=max_iters)
    return weights


@dataclass(frozen=True)
class DualConeHyperparameters:
    """The hyperparameters of UPGrad and DualProj (torchjd's defaults). ``norm_eps``: a Gramian
    with trace ``<= norm_eps`` is treated as zero (the update is then the mean gradient);
    ``reg_eps``: ridge added to the trace-normalised Gramian (``> 0`` required here);
    ``max_iters``: cap on the active-set solves of each projection."""

    norm_eps: float = 1e-4
    reg_eps: float = 1e-4
    max_iters: int = 1000

    def __post_init__(self) -> None:
        set_field(self, "norm_eps", check_number("norm_eps", self.norm_eps, ge=0))
        set_field(self, "reg_eps", check_number("reg_eps", self.reg_eps, gt=0))
        set_field(self, "max_iters", check_positive_int("max_iters", self.max_iters))


class UPGrad(GradientAggregator):
    """UPGrad: project every task gradient onto the dual cone of all task gradients (the
    directions conflicting with none) and average, ``d = 1/T sum_i pi(g_i) = w^T J``.

    Hyperparameters ``norm_eps``, ``reg_eps``, ``max_iters``: ``DualConeHyperparameters``
    (``max_iters`` per task). Reported weights: ``w``.
    """

    name = "upgrad"
    reference = "Quinton & Rey, 2024, arXiv:2406.16232; code: torchjd 0.18 UPGrad"
    summary = (
        "Mean of the task gradients projected onto the dual cone of all of them (Quinton 2024)."
    )
    Hyperparameters = DualConeHyperparameters

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = upgrad_weights(
            gramian,
            norm_eps=hp.norm_eps,
            reg_eps=hp.reg_eps,
            max_iters=hp.max_iters,
        )
        return combine(weights, jacobian), weights
