"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

*Multi-Task Learning Using Uncertainty to Weigh Losses for Scene Geometry and Semantics*,
A. Kendall, Y. Gal, R. Cipolla, CVPR 2018, arXiv:1705.07115. Reference implementation used for
the tests: ``torchjd.scalarization.UW`` (torchjd 0.18.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import LossWeighting, check_number, set_field


def uncertainty_objective(losses: Tensor, log_var: Tensor, present: Tensor | None = None) -> Tensor:
    """``L = sum_t 0.5 * exp(-s_t) * L_t + 0.5 * s_t`` with ``s_t = log sigma_t^2``, the sum over
    the ``present`` tasks only (all when None): an absent task's ``s_t`` gets no gradient."""
    terms = 0.5 * torch.exp(-log_var) * losses + 0.5 * log_var
    if present is None:
        return terms.sum()
    return torch.where(present, terms, torch.zeros_like(terms)).sum()


def uncertainty_weights(log_var: Tensor) -> Tensor:
    """The effective task weights ``0.5 * exp(-s_t)`` (1 / (2 sigma_t^2))."""
    return 0.5 * torch.exp(-log_var)


@dataclass(frozen=True)
class UncertaintyHyperparameters:
    lr: float = 0.025

    def __post_init__(self) -> None:
        set_field(self, "lr", check_number("lr", self.lr, gt=0))


class Uncertainty(LossWeighting):
    """Uncertainty weighting: learnable log-variances ``s_t`` (init 0), objective
    ``sum_t 0.5 exp(-s_t) L_t + 0.5 s_t``; ``s`` is optimised with its own ``lr`` (default 0.025)
    and no weight decay. Reported weights: ``0.5 exp(-s_t)``.

    The training loop must call ``to(device)`` and add ``optimizer_group()`` to its optimizer.

    Masked tasks: the objective sums over the tasks present in the step only, so an absent
    task's ``s_t`` gets gradient 0 (not the ``+ 0.5`` of its ``0.5 s_t`` term), and
    ``on_step_end`` puts back the ``s_t`` of the absent tasks as they were before the optimizer
    step (which momentum would otherwise still move). The present tasks' ``s`` follow exactly
    the trajectory of the method built for them alone: the tasks do not interact.
    """

    name = "uncertainty"
    reference = "Kendall, Gal & Cipolla, CVPR 2018, arXiv:1705.07115; code: torchjd 0.18 UW"
    summary = "Learned per-task log-variances s: sum_t 0.5 exp(-s_t) L_t + 0.5 s_t (Kendall 2018)."
    Hyperparameters = UncertaintyHyperparameters

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.log_var = torch.nn.Parameter(torch.zeros(num_tasks, dtype=torch.float32))
        #: (present, s before the step), from ``objective`` to ``on_step_end``
        self._held: tuple[Tensor, Tensor] | None = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_var]

    def optimizer_group(self) -> dict[str, Any]:
        return {"params": [self.log_var], "lr": self.hp.lr, "weight_decay": 0.0}

    def _check_device(self, losses: Tensor) -> None:
        if self.log_var.device != losses.device:
            raise self._error(
                f"parameters are on {self.log_var.device} but the losses on {losses.device}; "
                "call method.to(device) before building the optimizer"
            )

    def compute_weights(self, losses: Tensor) -> Tensor:
        self._check_device(losses)
        return uncertainty_weights(self.log_var.detach())

    def objective(
        self, losses: Tensor, *, reduced: Tensor, weights: Tensor, present: Tensor | None = None
    ) -> Tensor:
        """``sum_t 0.5 exp(-s_t) L~_t + 0.5 s_t`` with ``L~ = losses - losses.detach() + reduced``,
        summed over the ``present`` tasks (default ``reduced > 0``).

        ``L~`` has the value of the reduced losses (so the gradient w.r.t. ``s``,
        ``0.5 - 0.5 exp(-s_t) Lbar_t``, is the same on every DDP worker and ``s`` stays in sync)
        and the gradient of this worker's losses w.r.t. the model (``0.5 exp(-s_t) dL_t``, which
        DDP averages). Without ``reduce`` ``L~ == losses`` exactly (x - x + x == x in floats).
        """
        self._check_device(losses)
        present = self._present(reduced, present)
        self._held = (present, self.log_var.detach().clone())
        mixed = losses - losses.detach() + reduced.to(dtype=losses.dtype)
        return uncertainty_objective(mixed, self.log_var, present)

    def on_step_end(self, losses_after: Tensor | None = None) -> None:
        """Put back the ``s_t`` of the tasks absent in this step (no device synchronisation)."""
        if self._held is None:
            return
        present, before = self._held
        self._held = None
        with torch.no_grad():
            self.log_var.copy_(torch.where(present, self.log_var, before))

    def _state(self) -> dict[str, Any]:
        return {"log_var": self.log_var.detach().to("cpu").clone()}

    def _load_state(self, state: dict[str, Any]) -> None:
        s = state.get("log_var")
        if not isinstance(s, Tensor) or s.shape != (self.num_tasks,):
            shape = tuple(s.shape) if isinstance(s, Tensor) else repr(s)
            raise self._error(f"state_dict log_var must be a Tensor[{self.num_tasks}], got {shape}")
        with torch.no_grad():  # in place: the optimizer keeps the same Parameter
            self.log_var.copy_(s.to(device=self.log_var.device, dtype=self.log_var.dtype))
        self._held = None
