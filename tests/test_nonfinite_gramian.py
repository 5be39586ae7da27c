"""A finite Jacobian whose Gramian overflows is treated as a non-finite Jacobian is.

``GradientAggregator.aggregate`` computes the solver Gramian once (``solver_gramian``: ``J J^T``
in ``J``'s dtype, then float64 on the CPU) and checks it and its trace ``||J||_F^2`` before any
solver runs: if either is not finite, ``direction`` and ``weights`` are NaN, so that the
shared ``.grad`` is non-finite and ``GradScaler`` skips the step (docs/methods.md, "Non-finite
Jacobian or Gramian"). Before, ``nash_mtl`` raised ``IndexError``, ``imtl_g``, ``cagrad`` and
``aligned_mtl`` raised ``LinAlgError`` and ``pcgrad``, ``mgda`` and ``upgrad`` returned weights
that were an artefact of the inf entries (uniform ones).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import methods
from methods import engine
from methods.gradient import GradientAggregator, gramian, solver_gramian
from tests.toy_nets import tanh_net

T = 5

#: every registered gradient-level method (a new one is tested without editing this file)
AGGREGATORS = sorted(
    name for name, cls in methods._REGISTRY.items() if issubclass(cls, GradientAggregator)
)


def test_every_gradient_aggregator_is_covered() -> None:
    expected = {"aligned_mtl", "cagrad", "imtl_g", "mgda", "nash_mtl", "pcgrad", "upgrad"}
    assert expected <= set(AGGREGATORS)
    # GradNorm works at the last shared layer on row norms only (no Gramian): see below
    assert "gradnorm" not in AGGREGATORS


def _rows(dtype: torch.dtype, scale: float, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    j = torch.randn(T, 7, generator=gen, dtype=torch.float64)
    return (j / j.norm(dim=1, keepdim=True) * scale).to(dtype)


def overflowing_jacobian(kind: str) -> Tensor:
    """A FINITE Jacobian whose solver Gramian (or its trace) is not finite.

    * ``float32``: rows of norm 1e20; ``J J^T`` (1e40) overflows in float32, the dtype
      ``solver_gramian`` multiplies in (float64 would hold it: the test checks that too).
    * ``float64``: rows of norm 1e160; ``J J^T`` (1e320) overflows in float64 itself.
    * ``float64_trace``: rows of norm 1.2e154; every entry of ``J J^T`` is finite (<= 1.44e308)
      but the trace ``||J||_F^2`` (7.2e308), by which most solvers normalise, is not.
    """
    if kind == "float32":
        return _rows(torch.float32, 1e20)
    if kind == "float64":
        return _rows(torch.float64, 1e160)
    if kind == "float64_trace":
        return _rows(torch.float64, 1.2e154)
    raise AssertionError(kind)


KINDS = ("float32", "float64", "float64_trace")


@pytest.mark.parametrize("kind", KINDS)
def test_the_jacobians_are_finite_and_their_solver_gramians_are_not(kind: str) -> None:
    """The cases reach the failing path: finite ``J``, non-finite Gramian in the code's dtype."""
    j = overflowing_jacobian(kind)
    assert bool(torch.isfinite(j).all())
    g = solver_gramian(j)
    assert g.dtype == torch.float64 and g.shape == (T, T)
    if kind == "float64_trace":
        assert bool(torch.isfinite(g).all())
        assert not math.isfinite(float(g.diagonal().sum()))
    else:
        assert not bool(torch.isfinite(g).all())
        assert not bool(torch.isfinite(gramian(j)).all())  # in J's own dtype already
    if kind == "float32":
        # it is the float32 product that overflows: the same rows multiplied in float64 fit
        assert bool(torch.isfinite(gramian(j.double())).all())


def _assert_skipped_step(direction: Tensor, weights: Tensor, j: Tensor) -> None:
    assert direction.shape == (j.shape[1],) and weights.shape == (T,)
    assert direction.dtype == j.dtype and weights.dtype == j.dtype
    assert bool(torch.isnan(direction).all()) and bool(torch.isnan(weights).all())


def _aggregate(name: str, j: Tensor) -> tuple[Tensor, Tensor]:
    """``aggregate(J, 1)``; a two-batch method (SDMGrad, MoDo) gets ``J`` as both batches:
    ``aggregate_pair(J, J, 1)`` (its ``A = J J^T`` and traces are the Gramian's)."""
    method, ones = methods.create(name, T), torch.ones(T, dtype=j.dtype)
    if method.batches_per_step == 2:
        return method.aggregate_pair(j, j, ones)
    return method.aggregate(j, ones)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", AGGREGATORS)
def test_an_overflowing_gramian_gives_nan_not_an_error(name: str, kind: str) -> None:
    j = overflowing_jacobian(kind)
    direction, weights = _aggregate(name, j)
    _assert_skipped_step(direction, weights, j)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", AGGREGATORS)
def test_a_non_finite_jacobian_gives_the_same_outcome(name: str, bad: float) -> None:
    """A non-finite ``J`` always has a non-finite Gramian (its diagonal holds ``sum_k J_tk^2``),
    so both cases are one rule."""
    j = _rows(torch.float32, 1.0)
    j[2, 3] = bad
    assert not bool(torch.isfinite(solver_gramian(j)).all())
    direction, weights = _aggregate(name, j)
    _assert_skipped_step(direction, weights, j)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_large_but_representable_gramians_are_solved(name: str) -> None:
    """Just below overflow (float32 rows of norm 1e18, ``G`` about 1e36) every method still
    returns finite weights: the rule only fires on a non-finite Gramian."""
    j = _rows(torch.float32, 1e18)
    assert bool(torch.isfinite(solver_gramian(j)).all())
    direction, weights = _aggregate(name, j)
    assert bool(torch.isfinite(weights).all()) and bool(torch.isfinite(direction).all())


def _loss_scale(factor: float):
    return lambda losses: losses * factor


@pytest.mark.parametrize("level", ["parameters", "representation"])
@pytest.mark.parametrize("name", AGGREGATORS)
def test_engine_step_is_skipped_by_the_grad_scaler(name: str, level: str) -> None:
    """Through ``engine.backward`` in float32: per-task gradients of about 1e20 (finite), a
    Gramian that overflows; the shared ``.grad`` is NaN and ``GradScaler`` skips the step.
    A two-batch method (parameters only) gets a second batch's losses as ``second``."""
    cls = methods._REGISTRY[name]
    if level not in cls.AGGREGATION_LEVELS:
        pytest.skip(f"{name} works at {', '.join(cls.AGGREGATION_LEVELS)} only")
    pairs = cls.batches_per_step == 2
    torch.manual_seed(0)
    net = tanh_net()
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    rep, logits = net(x)
    losses = ((logits - y) ** 2).mean(0) * 1e20
    params = [*net.shared_parameters()] if level == "parameters" else [rep]
    jac = engine.shared_jacobian(losses, params, batched=False)
    assert bool(torch.isfinite(jac).all()) and not bool(torch.isfinite(gramian(jac)).all())

    method = methods.create(name, 3, level=level)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    before = [p.detach().clone() for p in net.parameters()]
    second = ((net(torch.randn(16, 5))[1] - y) ** 2).mean(0) * 1e20 if pairs else None
    weights = engine.backward(
        method, losses, model=net, representation=rep, scale=scaler.scale, second=second
    )
    assert bool(torch.isnan(weights).all())
    assert all(not bool(torch.isfinite(p.grad).all()) for p in net.shared_parameters())
    scaler.step(optimizer)
    scaler.update()
    assert scaler.get_scale() == 1.0  # the overflow was seen: the scale halved
    for p, b in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)  # the step was skipped


def test_gradnorm_needs_no_gramian() -> None:
    """GradNorm uses the row norms ``||grad_W L_t||`` only, taken in float64: the float32 rows
    whose Gramian overflows give finite norms, a finite weight gradient and weights 1."""
    j = overflowing_jacobian("float32")
    method = methods.create("gradnorm", T)
    weights = method.weights_from_jacobian(j, torch.ones(T))
    assert torch.equal(weights, torch.ones(T))
    assert method.task_weights.grad is not None
    assert bool(torch.isfinite(method.task_weights.grad).all())
