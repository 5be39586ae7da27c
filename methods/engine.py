"""The only code in ``methods`` that calls autograd.

The training loop computes the per-task losses and hands them here together with the method; the
method only ever sees detached values.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from methods.base import Method


def backward(
    method: Method,
    losses: Tensor,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
    scale: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Back-propagate the method's objective and return the weights ``w`` (Tensor[T], for logging).

    ``losses`` are the per-task losses with grad (a task whose labels are all masked in this batch
    has loss 0). ``w = method.weights(reduce(losses.detach()))``: ``reduce`` (e.g. a DDP
    all-reduce-mean, so that every worker computes the same weights) gets a detached COPY of the
    losses, so an in-place collective cannot modify them; identity when None. ``scale`` is applied
    to the scalar objective before ``.backward()`` (e.g. ``GradScaler.scale`` under fp16 AMP);
    identity when None. Gradients accumulate into ``.grad`` as with a plain ``.backward()``.

    The objective is ``method.objective(losses, reduced=reduce(losses.detach()), weights=w)``:
    ``sum_t w_t L_t`` for most methods; uncertainty weighting adds its regulariser and sends
    gradients into its own parameters (``method.parameters()``), which the loop must optimise.
    """
    if method.level != "loss":
        raise NotImplementedError(
            f"engine.backward: method {method.name!r} works at level {method.level!r}; only "
            "loss-level methods are supported so far (gradient-level support is not implemented)"
        )
    if not isinstance(losses, Tensor) or losses.shape != (method.num_tasks,):
        shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
        raise ValueError(
            f"engine.backward: losses must be a Tensor of shape ({method.num_tasks},) "
            f"(one loss per task), got {shape}"
        )
    if not losses.requires_grad:
        raise ValueError("engine.backward: losses do not require grad (computed under no_grad?)")

    detached = losses.detach().clone()
    if reduce is not None:
        detached = reduce(detached)
    w = method.weights(detached)
    objective = method.objective(losses, reduced=detached, weights=w)
    if not isinstance(objective, Tensor) or objective.ndim != 0:
        raise ValueError(f"engine.backward: method {method.name!r} returned a non-scalar objective")
    if scale is not None:
        objective = scale(objective)
    objective.backward()
    return w
