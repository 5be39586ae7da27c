"""The only code in ``methods`` that calls autograd.

The training loop computes the per-task losses and hands them here together with the method; the
method only ever sees detached values.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

import lazy_loader

from methods.base import LEVELS, Method, resolve_present
from methods.gradient import GradientAggregator

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


class MultiTaskModel(Protocol):
    """What the engine needs of a model for the gradient levels."""

    def shared_parameters(self) -> Iterable[torch.nn.Parameter]: ...

    def task_parameters(self, task: int) -> Iterable[torch.nn.Parameter]: ...

    def last_shared_layer(self) -> torch.nn.Module: ...


class Synchronizer(Protocol):
    """Collectives across data-parallel workers (``harness.trainloop.Collective`` fits)."""

    world_size: int
    rank: int

    def all_reduce_mean(self, tensor: Tensor) -> Tensor: ...

    def all_gather_cat(self, tensor: Tensor) -> Tensor: ...


def backward(
    method: Method,
    losses: Tensor,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
    scale: Callable[[Tensor], Tensor] | None = None,
    model: MultiTaskModel | None = None,
    heads: str | None = None,
    representation: Tensor | None = None,
    sync: Synchronizer | None = None,
    present: Tensor | None = None,
    second: Tensor | None = None,
) -> Tensor:
    """Back-propagate the method's update and return the weights ``w`` (Tensor[T], for logging).

    ``losses`` are the per-task losses with grad (a task whose labels are all masked in this batch
    has loss 0). ``present`` (Tensor[T] of bool): the tasks with at least one labelled example in
    this step, on any worker (the same on every worker); default ``reduce(losses) > 0``. The
    method gets it with the losses (``weights``, ``objective``, ``weights_from_jacobian``) and
    leaves an absent task's state as it was (docs/methods.md, "Masked tasks"); a gradient
    aggregator aggregates the present tasks' rows of ``J`` only. ``reduce`` (e.g. a DDP
    all-reduce-mean, so that every worker computes the same weights) gets a detached COPY of
    the losses, so an in-place collective cannot modify them; identity when None. ``scale`` is
    applied to the scalar objective before ``.backward()`` (e.g. ``GradScaler.scale`` under fp16
    AMP); identity when None. Gradients accumulate into ``.grad`` as with a plain ``.backward()``.

    By ``method.level``:

    * ``loss``: ``w = method.weights(reduce(losses), present=present)``; back-propagate
      ``method.objective(losses, reduced=reduce(losses), weights=w, present=present)``
      (``sum_t w_t L_t`` for most methods). Under DDP the wrapper's own gradient all-reduce
      applies; ``sync`` is not used.
    * ``parameters``: ``J`` [T, n] at the shared parameters (needs ``model``);
      ``method.aggregate(J, losses) -> (d, w)``; ``d`` goes into the shared ``.grad``.
    * ``representation``: ``J`` [T, B*d] at the shared ``representation`` (the trunk's output,
      one row per task holding every sample's gradient: never summed over the batch); the
      trunk gets the back-propagation of ``d``. Needs ``model`` and ``representation``.
    * ``last_shared_layer``: ``J`` [T, n_W] at the parameters ``W`` of
      ``model.last_shared_layer()``; ``w = method.weights_from_jacobian(J, losses,
      present=present)`` (GradNorm sets the gradient of its own weights there); the network
      gets ``sum_t w_t grad L_t``.

    At the gradient levels the task heads get ``w_t * grad L_t`` (``heads="weighted"``) or their
    own loss's gradient (``heads="own"``); None: the method's ``default_heads`` (what its
    authors' code does, docs/methods.md). ``sync`` (data parallelism with the wrapper's gradient
    all-reduce switched off, e.g. inside ``DistributedDataParallel.no_sync``): ``J`` is
    all-reduced (parameters, last shared layer) or gathered over the workers' samples
    (representation), so every worker finds the same weights as one process on the union of the
    batches; every gradient that is still local is then averaged over the workers. (Exactly so
    when every worker's batch has the same number of labels per task; with masked labels the
    workers' mean losses are averaged with equal weight, as DDP does for the loss level.)

    Two-batch methods (``method.batches_per_step == 2``: SDMGrad, MoDo) take the per-task losses
    of a second, independent mini-batch as ``second`` (with grad; the batches' own forward
    passes): ``J_1``, ``J_2`` at the shared parameters, ``method.aggregate_pair(J_1, J_2, r)``
    with ``r = reduce((losses + second) / 2)``, and the heads get the gradient of the mean of the
    two batches' losses (weighted or own). ``present`` is then the union of both batches'.

    ``update_every = k`` (every gradient aggregator): in the ``k - 1`` steps after a Jacobian
    step, ``method.reuse_weights(present)`` returns that step's weights and the network gets one
    ordinary backward of ``sum_t w_t L_t`` (heads: ``w_t`` or 1), no Jacobian.
    """
    if method.level not in LEVELS:
        raise NotImplementedError(
            f"engine.backward: method {method.name!r} works at unknown level {method.level!r}"
        )
    if not isinstance(losses, torch.Tensor) or losses.shape != (method.num_tasks,):
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"engine.backward: losses must be a Tensor of shape ({method.num_tasks},) "
            f"(one loss per task), got {shape}"
        )
    if not losses.requires_grad:
        raise ValueError("engine.backward: losses do not require grad (computed under no_grad?)")

    pairs = getattr(method, "batches_per_step", 1) == 2
    if pairs != (second is not None):
        raise ValueError(
            f"engine.backward: method {method.name!r} takes "
            + (
                "two mini-batches per step: give the second's losses as second="
                if pairs
                else "one mini-batch per step, but second= was given"
            )
        )
    if pairs:
        if not isinstance(second, torch.Tensor) or second.shape != losses.shape:
            raise ValueError("engine.backward: second must be a Tensor of the losses' shape")
        if not second.requires_grad:
            raise ValueError("engine.backward: second does not require grad")
    mean = (losses + second) / 2 if pairs else losses
    detached = mean.detach().clone()
    if reduce is not None:
        detached = reduce(detached)
    try:
        present = resolve_present(detached, present)
    except ValueError as exc:
        raise ValueError(f"engine.backward: {exc}") from None
    if method.level == "loss":
        w = method.weights(detached, present=present)
        objective = method.objective(losses, reduced=detached, weights=w, present=present)
        if not isinstance(objective, torch.Tensor) or objective.ndim != 0:
            raise ValueError(
                f"engine.backward: method {method.name!r} returned a non-scalar objective"
            )
        if scale is not None:
            objective = scale(objective)
        objective.backward()
        return w
    if model is None:
        raise ValueError(f"engine.backward: method {method.name!r} needs the model")
    if heads is None:
        heads = method.default_heads
    if heads not in ("weighted", "own"):
        raise ValueError(f"engine.backward: heads must be 'weighted' or 'own', got {heads!r}")
    if sync is not None and sync.world_size == 1:
        sync = None
    reused = method.reuse_weights(present) if isinstance(method, GradientAggregator) else None
    if reused is not None:  # update_every: this step reuses the last Jacobian step's weights
        reused = reused.to(device=losses.device, dtype=torch.float32)
        factor, scaled = _scaled_losses(scale, mean)
        _combined_backward(model, scaled, reused, heads, sync)
        _clip_shared_gradient(method, model, factor)
        return reused
    if pairs:
        return _parameters_backward(
            method, losses, detached, model, scale, heads, sync, present, second
        )
    if method.level == "parameters":
        return _parameters_backward(method, losses, detached, model, scale, heads, sync, present)
    if method.level == "representation":
        if not isinstance(representation, torch.Tensor) or not representation.requires_grad:
            raise ValueError(
                f"engine.backward: method {method.name!r} works at the representation level "
                "and needs the shared representation (with grad) the losses were computed from"
            )
        return _representation_backward(
            method, losses, detached, model, representation, scale, heads, sync, present
        )
    return _last_shared_layer_backward(method, losses, detached, model, scale, heads, sync, present)


#: id of a parameter for which the vmapped Jacobian raised (an op without a batching rule,
#: e.g. BatchNorm's backward in fp32 on CUDA) -> how many more calls go straight to T passes.
#: An entry leaves with its parameter (so a reused id starts clean); the count lets a later
#: call (another dtype under AMP) try the vmapped pass again.
_NO_BATCHING_RULE: dict[int, int] = {}
_SKIP_BATCHED_CALLS = 200


def _remember_no_batching_rule(param: Tensor) -> None:
    if id(param) not in _NO_BATCHING_RULE:
        weakref.finalize(param, _NO_BATCHING_RULE.pop, id(param), None)
    _NO_BATCHING_RULE[id(param)] = _SKIP_BATCHED_CALLS


def shared_jacobian(losses: Tensor, params: Sequence[Tensor], *, batched: bool = True) -> Tensor:
    """``J [T, n]``: row ``t`` is the gradient of ``losses[t]`` w.r.t. ``params``, flattened.

    ``batched``: the T backward passes run as one vmapped pass (``is_grads_batched``), the
    faster way on CUDA for long passes; it holds T sets of intermediate gradients at once and the
    per-parameter results beside ``J``. Where an operation has no batching rule (seen on CUDA with
    channels-last fp16 convolutions), or with ``batched=False``, T retained passes fill ``J`` row
    by row, holding one pass's gradients at a time. The graph is retained for the backward that
    follows.
    """
    num_tasks = losses.shape[0]
    columns = sum(p.numel() for p in params)
    dtype = torch.result_type(losses, params[0]) if params else losses.dtype
    jacobian = torch.zeros(num_tasks, columns, dtype=dtype, device=losses.device)

    def fill(rows: slice, grads: Sequence[Tensor | None]) -> None:
        offset = 0
        for g, p in zip(grads, params, strict=True):
            if g is not None:
                jacobian[rows, offset : offset + p.numel()] = g.reshape(-1, p.numel())
            offset += p.numel()

    # where the vmapped pass failed once for these parameters it fails every step: skip the try
    # remembered for parameters only: a representation is a new tensor every step
    key = params[0] if params and params[0].is_leaf else None
    skips = _NO_BATCHING_RULE.get(id(key), 0) if key is not None else 0
    if skips:
        _NO_BATCHING_RULE[id(key)] = skips - 1
    if batched and not skips:
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
            fill(slice(None), grads)
            return jacobian
        except torch.OutOfMemoryError:
            raise
        except RuntimeError:  # an op without a vmap rule: one pass per task
            if key is not None:
                _remember_no_batching_rule(key)
    for t in range(num_tasks):
        grads = torch.autograd.grad(losses[t], params, retain_graph=True, allow_unused=True)
        fill(slice(t, t + 1), grads)
    return jacobian


def _accumulate(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Add ``grads`` into ``.grad``; a fresh gradient is stored as it is, without a copy."""
    for p, g in zip(params, grads, strict=True):
        if g is None:
            continue
        p.grad = g.detach() if p.grad is None else p.grad + g.detach()


def _trainable(params: Iterable[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
    return [p for p in params if p.requires_grad]


def _head_parameters(model: MultiTaskModel, num_tasks: int) -> list[torch.nn.Parameter]:
    return _trainable(p for t in range(num_tasks) for p in model.task_parameters(t))


def _scaled_losses(
    scale: Callable[[Tensor], Tensor] | None, losses: Tensor
) -> tuple[Tensor | None, Tensor]:
    """``(factor, losses * factor)``: the AMP loss-scale factor (a 0-d tensor) and the losses
    to differentiate, or ``(None, losses)`` without loss scaling."""
    if scale is None:
        return None, losses
    factor = scale(torch.ones((), device=losses.device))
    return factor, losses * factor


def _unscaled_jacobian(
    scaled: Tensor, params: Sequence[Tensor], factor: Tensor | None, *, batched: bool
) -> Tensor:
    jacobian = shared_jacobian(scaled, params, batched=batched)
    return jacobian / factor if factor is not None else jacobian


def _backward_heads(
    model: MultiTaskModel, scaled: Tensor, weights: Tensor, heads: str, *, retain: bool
) -> list[torch.nn.Parameter]:
    """Each head's gradient: ``c_t * grad L_t`` with ``c = w`` (weighted) or 1 (own).

    A head depends only on its own loss, so one backward of ``sum_t c_t L_t`` restricted to the
    heads gives every head its term. Returns the head parameters.
    """
    head_params = _head_parameters(model, scaled.shape[0])
    objective = (_head_coefficients(weights, heads).to(scaled.dtype) * scaled).sum()
    torch.autograd.backward(objective, inputs=head_params, retain_graph=retain)
    return head_params


def _head_coefficients(weights: Tensor, heads: str) -> Tensor:
    return weights.detach() if heads == "weighted" else torch.ones_like(weights)


def _average_gradients(params: Sequence[torch.nn.Parameter], sync: Synchronizer) -> None:
    """Average ``.grad`` over the workers in one flat all-reduce (what DDP would have done)."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    flat = sync.all_reduce_mean(torch.cat([p.grad.reshape(-1) for p in with_grad]))
    offset = 0
    for p in with_grad:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()


def _parameters_backward(
    method: Method,
    losses: Tensor,
    reduced: Tensor,
    model: MultiTaskModel,
    scale: Callable[[Tensor], Tensor] | None,
    heads: str,
    sync: Synchronizer | None,
    present: Tensor,
    second: Tensor | None = None,
) -> Tensor:
    """Gradient-level update at the shared parameters.

    ``J`` (of the unscaled losses) goes to ``method.aggregate(J, reduced) -> (d, w)``; ``d`` is
    written into the shared parameters' ``.grad``. Under AMP the scale factor multiplies the
    losses before differentiation (fp16 gradients keep their range) and is divided out of ``J``;
    the written gradients carry it, as ``GradScaler.step`` expects. With ``sync``, ``J`` is
    all-reduced first, so ``d`` is the same on every worker; only the heads are averaged after.
    """
    factor, scaled = _scaled_losses(scale, losses)
    shared = _trainable(model.shared_parameters())
    # T retained passes, never the vmapped batch: they hold J plus one pass's gradients, the
    # batch holds T passes' (measured, ResNet-18, 14 tasks: +0.63 GB over equal vs +5.3 GB at
    # 224 px, batch 64, bf16 on an H200, for 13% more time there; at 64 px, batch 16 the passes
    # were faster on the H200 too, 7.3x vs 9.1x equal's step, and on CPU 1.1-2.2x faster)
    jacobian = _unscaled_jacobian(scaled, shared, factor, batched=False)
    if sync is not None:
        jacobian = sync.all_reduce_mean(jacobian)
    if second is None:
        direction, weights = method.aggregate(jacobian, reduced, present=present)
    else:  # a two-batch method: the second batch's Jacobian, then the heads get the mean's
        scaled_second = second * factor if factor is not None else second
        other = _unscaled_jacobian(scaled_second, shared, factor, batched=False)
        if sync is not None:
            other = sync.all_reduce_mean(other)
        direction, weights = method.aggregate_pair(jacobian, other, reduced, present=present)
        del other
        scaled = (scaled + scaled_second) / 2
    if factor is not None:
        direction = direction * factor
    offset, grads = 0, []
    for p in shared:
        grads.append(direction[offset : offset + p.numel()].view_as(p).to(p.dtype))
        offset += p.numel()
    _accumulate(shared, grads)
    head_params = _backward_heads(model, scaled, weights, heads, retain=False)
    if sync is not None:
        _average_gradients(head_params, sync)
    return weights.detach().float()


def _representation_backward(
    method: Method,
    losses: Tensor,
    reduced: Tensor,
    model: MultiTaskModel,
    representation: Tensor,
    scale: Callable[[Tensor], Tensor] | None,
    heads: str,
    sync: Synchronizer | None,
    present: Tensor,
) -> Tensor:
    """Gradient-level update at the shared representation ``z`` [B, ...] (MGDA-UB and kin).

    ``J`` [T, B*d] is the gradient of each task's loss w.r.t. ``z``, every sample kept (T cheap
    passes through the heads only). ``method.aggregate(J, reduced) -> (d, w)``; the trunk then
    gets the backward of ``d`` from ``z``, i.e. ``sum_t w_t grad L_t`` since ``d = w^T J``. With
    ``sync`` the workers' ``J`` are concatenated along the samples and divided by the number of
    workers (the union batch's mean loss), so ``w`` is the union's; the trunk's backward of the
    local ``w^T J_local`` averaged over the workers is then the union's update.
    """
    factor, scaled = _scaled_losses(scale, losses)
    # T short passes through the heads: on CUDA one vmapped pass launches far fewer kernels
    # (measured on an H200, ResNet-18, 224 px, batch 64, bf16: 1.31x equal's step vs 2.03x);
    # on CPU the T passes (1.07x)
    local = _unscaled_jacobian(scaled, [representation], factor, batched=losses.is_cuda)
    jacobian = local
    if sync is not None:
        jacobian = sync.all_gather_cat(local.T.contiguous()).T / sync.world_size
    union_direction, weights = method.aggregate(jacobian, reduced, present=present)
    if getattr(method, "direction_is_weighted_jacobian", True):
        direction = weights.to(local.dtype) @ local
    elif sync is None:  # a method's own direction (GradDrop's masks)
        direction = union_direction.to(local.dtype)
    else:  # this worker's columns of the union's direction (J was divided by the workers)
        columns = local.shape[1]
        rank = sync.rank
        part = union_direction[rank * columns : (rank + 1) * columns]
        direction = (part * sync.world_size).to(local.dtype)
    if factor is not None:
        direction = direction * factor
    # one backward of sum_t c_t L_t (c: the heads' coefficients) in which the gradient that
    # reaches z is replaced by d: heads and trunk in a single pass, as equal weighting's
    handle = representation.register_hook(
        lambda _incoming: direction.view_as(representation).to(representation.dtype)
    )
    try:
        (_head_coefficients(weights, heads).to(scaled.dtype) * scaled).sum().backward()
    finally:
        handle.remove()
    if sync is not None:
        params = _trainable(model.shared_parameters())
        _average_gradients(params + _head_parameters(model, losses.shape[0]), sync)
    _clip_shared_gradient(method, model, factor)
    return weights.detach().float()


def _last_shared_layer_backward(
    method: Method,
    losses: Tensor,
    reduced: Tensor,
    model: MultiTaskModel,
    scale: Callable[[Tensor], Tensor] | None,
    heads: str,
    sync: Synchronizer | None,
    present: Tensor,
) -> Tensor:
    """GradNorm's level: ``J`` [T, n_W] at the last shared layer's parameters only (T short
    passes: the graph above ``W`` is the top of the trunk and the heads), then one backward of
    ``sum_t w_t L_t`` for the network (heads: ``w_t`` or 1)."""
    factor, scaled = _scaled_losses(scale, losses)
    layer = _trainable(model.last_shared_layer().parameters())
    # short passes, as at the representation (H200, ResNet-18, 224 px, batch 64, bf16: 1.21x
    # equal's step vmapped, 1.79x as T passes; in fp32 the BatchNorm backward had no batching
    # rule, and shared_jacobian remembers that and goes straight to the T passes)
    jacobian = _unscaled_jacobian(scaled, layer, factor, batched=losses.is_cuda)
    if sync is not None:
        jacobian = sync.all_reduce_mean(jacobian)
    weights = method.weights_from_jacobian(jacobian, reduced, present=present).detach()
    if factor is not None:  # the method's own gradients sit in the optimizer too: the
        for p in method.parameters():  # GradScaler divides every .grad there by the scale
            if p.grad is not None:
                p.grad.mul_(factor.to(p.grad.dtype))
    _combined_backward(model, scaled, weights, heads, sync)
    return weights.float()


def _clip_shared_gradient(method: Method, model: MultiTaskModel, factor: Tensor | None) -> None:
    """Clip the shared parameters' ``.grad`` to the method's ``shared_max_norm`` (Nash-MTL),
    on the paths where the engine does not write the method's clipped direction itself. Under
    loss scaling the gradients carry the scale, and so does the limit."""
    limit = getattr(method, "shared_max_norm", None)
    if limit is None:
        return
    shared = [p for p in _trainable(model.shared_parameters()) if p.grad is not None]
    scale = float(factor) if factor is not None else 1.0
    torch.nn.utils.clip_grad_norm_(shared, limit * scale)


def _combined_backward(
    model: MultiTaskModel,
    scaled: Tensor,
    weights: Tensor,
    heads: str,
    sync: Synchronizer | None,
) -> None:
    """One backward of ``sum_t w_t L_t`` for the trunk; the heads get ``w_t grad L_t``
    (weighted) or ``grad L_t`` (own). With ``sync`` every gradient is then averaged over the
    workers (the wrapper's all-reduce is off at the gradient levels)."""
    objective = (weights.to(scaled.dtype) * scaled).sum()
    shared = _trainable(model.shared_parameters())
    head_params = _head_parameters(model, scaled.shape[0])
    if heads == "weighted":  # heads and trunk both get w_t grad L_t: one plain backward
        objective.backward()
    else:
        _backward_heads(model, scaled, weights, heads, retain=True)
        torch.autograd.backward(objective, inputs=shared)
    if sync is not None:
        _average_gradients(shared + head_params, sync)


def lookahead_hypergradient(
    model: torch.nn.Module,
    losses: Tensor,
    weights: Tensor,
    *,
    train_losses: Callable[[dict[str, Tensor]], Tensor],
    val_losses: Callable[[dict[str, Tensor]], Tensor],
    lr: float,
    weight_decay: float = 0.0,
    momentum: dict[str, Tensor] | None = None,
    sync: Synchronizer | None = None,
) -> Tensor:
    """Auto-Lambda's hypergradient ``h_t = dL_val(theta')/dlambda_t`` (Tensor[T], float32).

    ``theta' = theta - lr (m + g + weight_decay theta)``, ``g = grad_theta sum_t w_t L_t`` of
    this step's training ``losses`` (with grad, graph retained for the step's own backward) and
    ``m`` the optimizer's momentum term per parameter name (SGD; None or missing: 0). Since
    ``dtheta'/dlambda_t = -lr grad L_t``, ``h_t = -lr grad L_t(theta) . d`` with
    ``d = grad L_val(theta')`` (``L_val = sum_t`` of ``val_losses(theta')``), and the product
    is taken by central differences as in the reference code (lorenmt/auto-lambda,
    ``compute_hessian``): ``h_t = -lr (L_t(theta + e d) - L_t(theta - e d)) / (2 e)`` with
    ``e = 0.01 / ||d||``; 0 when ``d`` is 0, NaN when it is not finite (a diverged or
    overflowed look-ahead: ``AutoLambda.meta_step`` then skips the step).

    ``train_losses(params)`` / ``val_losses(params)``: the per-task losses of the training /
    validation batch with the network's parameters replaced by ``params`` (a name -> tensor
    mapping over ``model.named_parameters()``; ``torch.func.functional_call``), BatchNorm on
    the batch's statistics without updating its running ones. ``sync``: ``g``, ``d`` and ``h``
    are averaged over the data-parallel workers, so every worker takes the same meta step.
    Costs one backward for ``g``, a forward and a backward at ``theta'``, two forwards at
    ``theta +- e d``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    params = [p for _, p in named]
    objective = (weights.detach().to(losses.dtype) * losses).sum()
    grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
    grads = _filled(grads, params, sync)
    momentum = momentum or {}
    with torch.no_grad():
        ahead = {
            n: (p - lr * (momentum.get(n, 0.0) + g + weight_decay * p)).requires_grad_()
            for n, p, g in zip(names, params, grads, strict=True)
        }
    direction = torch.autograd.grad(
        val_losses(ahead).sum(), list(ahead.values()), allow_unused=True
    )
    direction = _filled(direction, params, sync)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(d) for d in direction]))
    if not bool(torch.isfinite(norm)):
        return torch.full(losses.shape, torch.nan, dtype=torch.float32, device=losses.device)
    if float(norm) == 0.0:
        return torch.zeros(losses.shape, dtype=torch.float32, device=losses.device)
    eps = 0.01 / float(norm)
    with torch.no_grad():
        moved = list(zip(names, params, direction, strict=True))
        plus = train_losses({n: p + eps * d for n, p, d in moved})
        minus = train_losses({n: p - eps * d for n, p, d in moved})
        hyper = (-lr * (plus - minus) / (2 * eps)).float()
    if sync is not None:
        hyper = sync.all_reduce_mean(hyper)
    return hyper


def _filled(
    grads: Sequence[Tensor | None], params: Sequence[Tensor], sync: Synchronizer | None
) -> list[Tensor]:
    """Gradients with zeros for unused parameters, averaged over the workers with ``sync``."""
    out = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]
    if sync is None:
        return out
    flat = sync.all_reduce_mean(torch.cat([g.reshape(-1) for g in out]))
    chunks = torch.split(flat, [p.numel() for p in params])
    return [chunk.view_as(p) for chunk, p in zip(chunks, params, strict=True)]
