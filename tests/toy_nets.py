"""Tiny multi-task networks for the engine and method tests: a trunk, one linear head per task,
and the methods ``methods.engine`` needs of a model."""

from __future__ import annotations

import torch
from torch import nn


class ToyNet(nn.Module):
    def __init__(self, trunk: nn.Module, dim: int, tasks: int = 3):
        super().__init__()
        self.trunk = trunk
        self.heads = nn.ModuleList(nn.Linear(dim, 1) for _ in range(tasks))

    def forward(self, x):
        rep = self.trunk(x)
        return rep, torch.cat([h(rep) for h in self.heads], 1)

    def shared_parameters(self):
        return self.trunk.parameters()

    def task_parameters(self, t):
        return self.heads[t].parameters()

    def last_shared_layer(self) -> nn.Module:
        return [m for m in self.trunk.modules() if list(m.parameters(recurse=False))][-1]


def tanh_net(tasks: int = 3) -> ToyNet:
    """5 inputs, no BatchNorm (a split batch is the same computation), representation of 4."""
    trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 4), nn.Tanh())
    return ToyNet(trunk, 4, tasks)


def batchnorm_net(tasks: int = 3) -> ToyNet:
    """4 inputs through a BatchNorm, representation of 8."""
    return ToyNet(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh()), 8, tasks)
