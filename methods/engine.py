"""The only code in ``methods`` that calls autograd.

The training loop computes the per-task losses and hands them here together with the method; the
method only ever sees detached values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor

from methods.base import Method


class MultiTaskModel(Protocol):
    """What the engine needs of a model for gradient-level methods."""

    def shared_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def task_parameters(self, task: int) -> Iterable[torch.nn.Parameter]: ...


def backward(
    method: Method,
    losses: Tensor,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
    scale: Callable[[Tensor], Tensor] | None = None,
    model: MultiTaskModel | None = None,
    heads: str = "weighted",
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
    if method.level not in ("loss", "parameters"):
        raise NotImplementedError(
            f"engine.backward: method {method.name!r} works at level {method.level!r}; the "
            "engine supports the 'loss' and 'parameters' levels so far"
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
    if method.level == "parameters":
        if model is None:
            raise ValueError(f"engine.backward: method {method.name!r} needs the model")
        return _parameters_backward(method, losses, detached, model, scale, heads)
    w = method.weights(detached)
    objective = method.objective(losses, reduced=detached, weights=w)
    if not isinstance(objective, Tensor) or objective.ndim != 0:
        raise ValueError(f"engine.backward: method {method.name!r} returned a non-scalar objective")
    if scale is not None:
        objective = scale(objective)
    objective.backward()
    return w


def shared_jacobian(losses: Tensor, params: Sequence[Tensor], *, batched: bool = True) -> Tensor:
    """``J [T, n]``: row ``t`` is the gradient of ``losses[t]`` w.r.t. ``params``, flattened.

    ``batched``: the T backward passes run as one vmapped pass (``is_grads_batched``), the
    faster way on CUDA; where an operation has no batching rule (seen on CUDA with channels-last
    fp16 convolutions), or with ``batched=False`` (faster on CPU), T retained passes give the
    same rows. The graph is retained for the task
    heads' backward that follows.
    """
    num_tasks = losses.shape[0]

    def flatten(grads, rows: int) -> Tensor:
        return torch.cat(
            [
                (g if g is not None else torch.zeros(rows, *p.shape, device=p.device)).reshape(
                    rows, -1
                )
                for g, p in zip(grads, params, strict=True)
            ],
            dim=1,
        )

    if batched:
        eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
        try:
            grads = torch.autograd.grad(
                losses,
                params,
                grad_outputs=eye,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
            )
            return flatten(grads, num_tasks)
        except RuntimeError:  # an op without a vmap rule: one pass per task
            pass
    rows = []
    for t in range(num_tasks):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        rows.append(flatten(grads, 1))
    return torch.cat(rows)


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        p.grad = g.detach().clone() if p.grad is None else p.grad + g.detach()


def _parameters_backward(
    method: Method,
    losses: Tensor,
    reduced: Tensor,
    model: MultiTaskModel,
    scale: Callable[[Tensor], Tensor] | None,
    heads: str,
) -> Tensor:
    """Gradient-level update at the shared parameters.

    ``J`` (of the unscaled losses) goes to ``method.aggregate(J, reduced) -> (d, w)``; ``d`` is
    written into the shared parameters' ``.grad``. Each task head gets ``w_t * dL_t`` (``heads=
    "weighted"``) or its own loss's gradient ``dL_t`` (``heads="own"``); a head depends only on
    its own loss, so one backward of ``sum_t c_t L_t`` restricted to the heads gives both. Under
    AMP the scale factor multiplies the losses before differentiation (fp16 gradients keep their
    range) and is divided out of ``J``; the written gradients carry it, as ``GradScaler.step``
    expects.
    """
    if heads not in ("weighted", "own"):
        raise ValueError(f"engine.backward: heads must be 'weighted' or 'own', got {heads!r}")
    factor = scale(torch.ones((), device=losses.device)) if scale is not None else None
    scaled = losses * factor if factor is not None else losses
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    # measured: on CPU the T retained passes beat the vmapped batch (simple_cnn 0.82 s vs 1.78 s,
    # ResNet-18 2.26 s vs 2.58 s, 14 tasks, 1 thread); on CUDA the batch wins (2.9x vs 6-7x
    # equal's step time, ResNet-18 on an H200)
    jacobian = shared_jacobian(scaled, shared, batched=losses.is_cuda)
    if factor is not None:
        jacobian = jacobian / factor
    direction, weights = method.aggregate(jacobian, reduced)
    if factor is not None:
        direction = direction * factor
    offset, grads = 0, []
    for p in shared:
        grads.append(direction[offset : offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    _accumulate(shared, grads)

    head_params = [p for t in range(losses.shape[0]) for p in model.task_parameters(t)]
    head_params = [p for p in head_params if p.requires_grad]
    coefficients = weights.detach() if heads == "weighted" else torch.ones_like(weights)
    head_objective = (coefficients.to(scaled.dtype) * scaled).sum()
    _accumulate(head_params, torch.autograd.grad(head_objective, head_params, allow_unused=True))
    return weights.detach().float()
