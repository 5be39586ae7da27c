"""GradVac: Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021).

*Gradient Vaccine: Investigating and Improving Multi-task Optimization in Massively Multilingual
Models*, Z. Wang, Y. Tsvetkov, O. Firat, Y. Cao, ICLR 2021, arXiv:2010.05874 (Algorithm 1).
Reference implementation used for the tests: ``torchjd.aggregation.GradVac`` /
``GradVacWeighting`` (torchjd 0.18.0), the whole model as one group (LibMTL's
``GradVac_group_type = 0``).

Like PCGrad, each task gradient is corrected against every other task gradient, in a random
order; instead of removing the conflicting component, GradVac raises the cosine similarity of the
pair to a target ``phi_hat_ij``, an exponential moving average of the similarities seen before
(so also pairs that do not conflict but are less aligned than usual are corrected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lazy_loader

from methods.base import HyperparameterError, check_number, set_field
from methods.gradient import GradientAggregator, combine

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

_SEED_LIMIT = 2**63


def gradvac_orders(num_tasks: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """For each task ``i`` the order in which the other tasks are visited: the others
    (ascending) permuted by ``torch.randperm(T - 1)``, one call per task, in task order (as
    torchjd, so a seed of the global RNG, or of ``generator``, fixes them)."""
    orders = []
    for i in range(num_tasks):
        others = [j for j in range(num_tasks) if j != i]
        perm = torch.randperm(num_tasks - 1, generator=generator).tolist()
        orders.append([others[p] for p in perm])
    return orders


def gradvac_weights(
    g: Tensor, targets: Tensor, orders: list[list[int]], *, beta: float = 0.5, eps: float = 1e-8
) -> tuple[Tensor, Tensor]:
    """``(w, targets')``: the weights with ``sum_i g_i^VAC = w^T J`` and the updated targets.

    ``g``: the Gramian ``J J^T`` [T, T]; ``targets``: ``phi_hat`` [T, T] (not modified);
    ``orders[i]``: the other tasks in the order task ``i`` visits them. For each ``i``, starting
    from ``g_i^VAC = g_i``, for each ``j`` in ``orders[i]`` (against the ORIGINAL ``g_j``)::

        phi = g_i^VAC . g_j / (||g_i^VAC|| ||g_j|| + eps)
        if phi < phi_hat_ij:
            g_i^VAC += ||g_i^VAC|| (phi_hat_ij sqrt(1 - phi^2) - phi sqrt(1 - phi_hat_ij^2))
                       / (||g_j|| sqrt(1 - phi_hat_ij^2) + eps) * g_j
        phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi

    (the paper's closed form: the pair's cosine becomes ``phi_hat_ij``, up to ``eps``). The
    update is ``sum_i g_i^VAC``. Each ``g_i^VAC = c_i^T J``, so every product is read off the
    Gramian (``g_i^VAC . g_j = (c_i^T G)_j``, ``||g_i^VAC||^2 = c_i^T G c_i``) and
    ``w = sum_i c_i``. A zero ``g_j`` has ``phi = 0``; every ``w_t >= 1``. ``phi`` is clamped
    to ``[-1, 1]`` (Cauchy-Schwarz; not in torchjd): when a corrected ``g_i^VAC`` nearly
    vanishes (rank-deficient ``J``, float32 Gramian), round-off gave ``|phi| >> 1``, targets far
    outside ``[-1, 1]`` and infinite weights.
    """
    # Python floats (IEEE double, as float64 tensors): T^3 scalar steps, ~10x faster than
    # tensor ops at T = 14
    num_tasks = g.shape[0]
    gram = g.tolist()
    new = targets.tolist()
    weights = [0.0] * num_tasks
    for i in range(num_tasks):
        c = [0.0] * num_tasks  # g_i^VAC = c^T J
        c[i] = 1.0
        dots = list(gram[i])  # g_i^VAC . g_j for every j
        for j in orders[i]:
            norm_i = math.sqrt(max(sum(d * w for d, w in zip(dots, c, strict=True)), 0.0))
            norm_j = math.sqrt(max(gram[j][j], 0.0))
            # in [-1, 1] exactly; round-off in a rank-deficient Gramian can leave it far out
            phi = min(max(dots[j] / (norm_i * norm_j + eps), -1.0), 1.0)
            target = new[i][j]
            if phi < target:
                sin_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                sin_target = math.sqrt(max(1.0 - target * target, 0.0))
                step = norm_i * (target * sin_phi - phi * sin_target) / (norm_j * sin_target + eps)
                c[j] += step
                dots = [d + step * gj for d, gj in zip(dots, gram[j], strict=True)]
            new[i][j] = (1.0 - beta) * target + beta * phi
        weights = [w + ci for w, ci in zip(weights, c, strict=True)]
    return torch.tensor(weights, dtype=g.dtype), torch.tensor(new, dtype=targets.dtype)


@dataclass(frozen=True)
class GradVacHyperparameters:
    beta: float = 0.5
    eps: float = 1e-8
    seed: int | None = None

    def __post_init__(self) -> None:
        set_field(self, "beta", check_number("beta", self.beta, ge=0, le=1))
        set_field(self, "eps", check_number("eps", self.eps, gt=0))
        seed = self.seed
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _SEED_LIMIT
        ):
            raise HyperparameterError(f"seed must be null or an int in [0, 2^63), got {seed!r}")


class GradVac(GradientAggregator):
    """GradVac: every task gradient is corrected, against each other task gradient in a random
    order, until the pair's cosine similarity reaches its target ``phi_hat_ij`` (an EMA of the
    similarities of the pair, rate ``beta``); the update is the sum of the corrected gradients.

    Defaults as torchjd: ``beta = 0.5``, ``eps = 1e-8``; targets start at 0 (so the first step
    is PCGrad-like: only conflicting pairs are corrected, to orthogonal). ``seed``: ``None``
    (default) draws the orders from torch's global RNG as torchjd and PCGrad do (T calls of
    ``torch.randperm(T - 1)`` per step; the training loop checkpoints that RNG); an int gives the
    method its own generator, seeded with it and checkpointed with the targets.

    Deviation from the paper: the whole model is one group (the paper also corrects per layer
    or per parameter matrix; torchjd and LibMTL's default do the whole model). ``eps > 0``
    required (torchjd allows 0: a zero gradient then gives ``0 / 0``).

    Reported weights: ``w`` with ``direction = w^T J`` (all ones when no pair is corrected).
    State: the targets ``phi_hat`` [T, T] (float64). Masked tasks: the present tasks are
    corrected among themselves with their block of ``phi_hat`` (drawing the orders of the
    present tasks only); an absent task's row and column of ``phi_hat`` stay as they were.
    """

    name = "gradvac"
    summary = "Raise each task pair's gradient cosine to an EMA target (Gradient Vaccine, 2021)."
    reference = (
        "Wang, Tsvetkov, Firat, Cao, ICLR 2021, arXiv:2010.05874; "
        "code: torchjd 0.18 GradVacWeighting (whole model)"
    )
    Hyperparameters = GradVacHyperparameters

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.targets = torch.zeros(num_tasks, num_tasks, dtype=torch.float64)
        self._generator: torch.Generator | None = None
        if self.hp.seed is not None:
            self._generator = torch.Generator().manual_seed(self.hp.seed)

    def compute_present(
        self, jacobian: Tensor, losses: Tensor, gramian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        weights = torch.zeros(self.num_tasks, dtype=gramian.dtype)
        if not bool(present.any()):
            return torch.zeros_like(jacobian[0]), weights
        idx = present.nonzero().flatten()
        block = (idx[:, None], idx[None, :])
        orders = gradvac_orders(len(idx), self._generator)
        sub, targets = gradvac_weights(
            gramian[block], self.targets[block], orders, beta=self.hp.beta, eps=self.hp.eps
        )
        self.targets[block] = targets
        weights[idx] = sub
        return combine(sub, jacobian[idx.to(jacobian.device)]), weights

    def _state(self) -> dict[str, Any]:
        state = {**super()._state(), "targets": self.targets.clone()}
        if self._generator is not None:
            state["generator"] = self._generator.get_state()
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        targets = state.get("targets")
        if not isinstance(targets, torch.Tensor) or targets.shape != (
            self.num_tasks,
            self.num_tasks,
        ):
            raise self._error(
                f"state_dict targets must be a Tensor[{self.num_tasks}, {self.num_tasks}]"
            )
        self.targets = targets.to("cpu", torch.float64).clone()
        if self._generator is not None and "generator" in state:
            self._generator.set_state(state["generator"].clone())
