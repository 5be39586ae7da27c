"""Test Jacobians for the aggregator tests: one generator, many shapes of trouble."""

from __future__ import annotations

import torch
from torch import Tensor

F64 = torch.float64
J_FIXED = torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]], dtype=F64)
SIZES = (2, 3, 5, 8, 14)
KINDS = ("random", "wide", "rank1", "rank2", "duplicate", "zero", "scaled", "one_zero_row")


def make_jacobian(kind: str, num_tasks: int, seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed * 100 + num_tasks)
    n = 20

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    if kind == "random":
        return randn(num_tasks, n)
    if kind == "correlated":  # a common component: the usual case in training
        return randn(1, n) + 0.5 * randn(num_tasks, n)
    if kind == "wide":  # fewer parameters than tasks: rank <= 3
        return randn(num_tasks, 3)
    if kind == "rank1":
        return randn(num_tasks, 1) @ randn(1, n)
    if kind == "rank2":
        return randn(num_tasks, 2) @ randn(2, n)
    if kind == "duplicate":
        j = randn(num_tasks, n)
        j[-1] = j[0]
        return j
    if kind == "zero":
        return torch.zeros(num_tasks, n, dtype=F64)
    if kind == "scaled":  # row norms from 1e-3 to 1e3
        return randn(num_tasks, n) * torch.logspace(-3, 3, num_tasks, dtype=F64)[:, None]
    if kind == "one_zero_row":
        j = randn(num_tasks, n)
        j[num_tasks // 2] = 0.0
        return j
    raise AssertionError(kind)


def cases() -> list[tuple[str, int]]:
    return [(kind, t) for kind in KINDS for t in SIZES]


def ones(t: int) -> Tensor:
    return torch.ones(t, dtype=F64)
