"""Shared pieces of the gradient-level methods (PCGrad, MGDA, UPGrad, IMTL-G, CAGrad,
Aligned-MTL, Nash-MTL).

A gradient-level method aggregates the per-task gradients of the shared parameters: it receives
the Jacobian ``J`` (Tensor[T, n], row ``t`` = gradient of task ``t``'s loss) and the detached
losses, and returns ``(direction, weights)`` with ``direction = weights @ J`` (Tensor[n], written
into the shared parameters' ``.grad``; the optimizer descends along it) and ``weights``
(Tensor[T], the task weights the method effectively used).

Every method only needs the Gramian ``G = J J^T`` (Tensor[T, T]) to find its weights.
``GradientAggregator.aggregate`` computes it once (``solver_gramian``) and hands it to the
method's ``compute``. The small ``T x T`` problems are solved on the CPU in float64 (a few
microseconds; it also avoids the round-off of float32 and a device synchronisation per solver
iteration); the Gramian and the direction are computed in the input dtype on the input device.

Non-finite Gramian (one rule, in ``aggregate``, for every method): when ``G`` or its trace
``||J||_F^2`` is not finite (a non-finite ``J``, e.g. an fp16 step whose scaled gradients
overflowed, or a finite ``J`` whose products overflow ``J``'s dtype: rows of norm above about
1.8e19 in float32), no solver runs and ``direction`` and ``weights`` are NaN, so the step is
skipped by ``GradScaler`` (``gramian_is_finite``).

Reference implementations used by the tests: ``torchjd.aggregation`` (torchjd 0.18.0).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from methods.base import HyperparameterError, Method, check_choice

_SOLVER_DTYPE = torch.float64


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an int ``>= 1``, else raise ``HyperparameterError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HyperparameterError(f"{name} must be a positive int, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def gramian(jacobian: Tensor) -> Tensor:
    """``G = J J^T`` (Tensor[T, T]): ``G_ij = g_i . g_j``."""
    return jacobian @ jacobian.T


def solver_gramian(jacobian: Tensor) -> Tensor:
    """``G = J J^T`` in the input dtype, then moved to the CPU as float64 for the small solvers."""
    return gramian(jacobian).to(device="cpu", dtype=_SOLVER_DTYPE)


def gramian_is_finite(g: Tensor) -> bool:
    """Whether every entry of the solver Gramian ``g`` and its trace ``||J||_F^2`` are finite.

    A non-finite ``J`` always fails it (``G_tt = sum_k J_tk^2``); so does a finite ``J`` whose
    Gramian overflowed in ``J``'s dtype (float32 rows of norm above about 1.8e19), or whose trace
    overflows float64 (the solvers divide ``G`` by it). ``g``: the small CPU Tensor[T, T] of
    ``solver_gramian`` (the check costs no device work).
    """
    return bool(torch.isfinite(g).all()) and math.isfinite(float(g.diagonal().sum()))


def combine(weights: Tensor, jacobian: Tensor) -> Tensor:
    """``d = w^T J = sum_t w_t g_t`` (Tensor[n]), in ``J``'s dtype and on its device."""
    return weights.to(device=jacobian.device, dtype=jacobian.dtype) @ jacobian


def trace_normalized(g: Tensor, eps: float = 0.0) -> Tensor:
    """``G / tr(G)`` (``tr(G) = ||J||_F^2``), or the zero matrix when ``tr(G) <= eps``.

    Scaling ``G`` by a positive number does not change the weights of MGDA, UPGrad (up to its
    regularisation) or IMTL-G; normalising makes the solvers' tolerances relative to the scale of
    the gradients.
    """
    trace = float(g.diagonal().sum())
    if not trace > eps:
        return torch.zeros_like(g)
    return g / trace


def nonnegative_qp(q: Tensor, c: Tensor, *, max_iters: int, tol: float) -> Tensor:
    """Solve ``min_x 1/2 x^T Q x + c^T x  subject to  x >= 0`` for a positive-definite ``Q``.

    Primal active-set method (Lawson & Hanson's NNLS algorithm written for a quadratic): start at
    ``x = 0``; while some coordinate ``j`` outside the free set ``P`` has a negative gradient
    ``(Q x + c)_j < -tol``, free the most negative one, solve the equality-constrained problem on
    ``P`` (``Q_PP z_P = -c_P``) and, if ``z_P`` leaves the orthant, step from ``x`` towards ``z``
    as far as feasible and drop the coordinates that hit zero. Exact after finitely many steps
    (``max_iters`` bounds the number of inner solves; the iterate stays feasible). ``tol`` is
    relative to ``1 + max|Q||x| + max|c|``.

    Returns ``x`` (Tensor[T]). ``Q``, ``c``: Tensor[T, T], Tensor[T] (float64 advised).
    """
    size = c.shape[0]
    x = torch.zeros_like(c)
    free = torch.zeros(size, dtype=torch.bool)
    iters = 0
    while iters < max_iters:
        grad = q @ x + c
        scale = 1.0 + float((q.abs() @ x.abs()).max()) + float(c.abs().max())
        candidates = (~free) & (grad < -tol * scale)
        if not bool(candidates.any()):
            break
        j = int(torch.where(candidates, grad, torch.zeros_like(grad)).argmin())
        free[j] = True
        while iters < max_iters:
            iters += 1
            idx = free.nonzero().flatten()
            z = torch.zeros_like(x)
            sub = q[idx][:, idx]
            z[idx] = torch.linalg.solve(sub, -c[idx])
            if bool((z[idx] > 0).all()):
                x = z
                break
            blocking = idx[z[idx] <= 0]
            alpha = float((x[blocking] / (x[blocking] - z[blocking])).min())
            x = x + alpha * (z - x)
            leaving = free & (x <= tol * x.abs().max().clamp(min=1.0))
            x[leaving] = 0.0
            free &= ~leaving
            if not bool(free.any()):
                break
    return x.clamp(min=0.0)


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class GradientAggregator(Method):
    """A method that turns the Jacobian of the per-task losses into one update direction.

    Subclasses implement ``compute(jacobian, losses, gramian) -> (direction, weights)``, with
    ``gramian = solver_gramian(jacobian)``, always finite; ``aggregate`` checks the input,
    computes the Gramian, applies the non-finite rule and returns both detached, in
    ``jacobian``'s dtype and on its device.
    """

    level: ClassVar[str] = "parameters"
    #: Where ``J`` is taken (hyperparameter ``level``): the shared parameters (``J`` [T, n]) or
    #: the shared representation (``J`` [T, B*d], every sample kept: MGDA-UB for ``mgda``).
    AGGREGATION_LEVELS: ClassVar[tuple[str, ...]] = ("parameters", "representation")

    @classmethod
    def hyperparameter_defaults(cls) -> dict[str, Any]:
        return {"level": cls.level, **super().hyperparameter_defaults()}

    def _resolve(self, given: dict[str, Any]) -> Any:
        given = dict(given)
        level = given.pop("level", type(self).level)
        try:
            # an instance attribute: the engine reads ``method.level`` to pick where J is taken
            self.level = check_choice("level", level, self.AGGREGATION_LEVELS)
        except HyperparameterError as exc:
            raise self._error(str(exc)) from None
        return super()._resolve(given)

    def hyperparameters(self) -> dict[str, Any]:
        return {"level": self.level, **super().hyperparameters()}

    def aggregate(self, jacobian: Tensor, losses: Tensor) -> tuple[Tensor, Tensor]:
        """``(direction [n], weights [T])`` from ``jacobian`` [T, n] and detached ``losses`` [T].

        ``direction = weights @ jacobian`` is gradient-like: write it into the shared parameters'
        ``.grad`` and let the optimizer descend. When the Gramian ``J J^T`` (in ``jacobian``'s
        dtype) or its trace is not finite, both are NaN and the method's solver is not called:
        ``GradScaler`` then skips the step, as for any non-finite gradient.
        """
        num_tasks = self.num_tasks
        if not isinstance(jacobian, Tensor) or jacobian.ndim != 2 or jacobian.shape[0] != num_tasks:
            shape = tuple(jacobian.shape) if isinstance(jacobian, Tensor) else type(jacobian)
            raise self._error(f"jacobian must be a Tensor of shape ({num_tasks}, n), got {shape}")
        if not jacobian.is_floating_point():
            raise self._error(f"jacobian must be floating point, got {jacobian.dtype}")
        if not isinstance(losses, Tensor) or losses.shape != (num_tasks,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise self._error(f"losses must be a Tensor of shape ({num_tasks},), got {shape}")
        with torch.no_grad():
            jacobian, losses = jacobian.detach(), losses.detach()
            gramian = solver_gramian(jacobian)
            if gramian_is_finite(gramian):
                direction, weights = self.compute(jacobian, losses, gramian)
            else:
                # an inf/NaN Jacobian (an fp16 step whose scaled gradients overflowed) or a
                # finite one whose Gramian overflowed: no solver can use G, so return NaN, as a
                # plain backward of an inf gradient would, and GradScaler skips the step (the
                # check is on the small CPU Gramian, which every method computes anyway)
                direction = torch.full_like(jacobian[0], torch.nan)
                weights = torch.full((num_tasks,), torch.nan, dtype=jacobian.dtype)
        return (
            direction.to(device=jacobian.device, dtype=jacobian.dtype),
            weights.to(device=jacobian.device, dtype=jacobian.dtype),
        )

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        """``(direction, weights)`` from ``jacobian`` [T, n], ``losses`` [T] and ``gramian``
        (``solver_gramian(jacobian)``: float64 [T, T] on the CPU, finite, finite trace)."""
        raise NotImplementedError
