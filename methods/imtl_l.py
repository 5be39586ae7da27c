"""IMTL-L: impartial multi-task learning, loss part (Liu et al., ICLR 2021).

*Towards Impartial Multi-task Learning*, L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang,
Q. Liao, W. Zhang, ICLR 2021 (openreview.net/forum?id=IMPnRXEWpvr). Reference code: LibMTL
``LibMTL/weighting/IMTL.py`` (its ``loss_scale``, combined there with IMTL-G); reference
implementation used for the tests: ``torchjd.scalarization.IMTLL`` (torchjd 0.18.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import LossWeighting, check_number, set_field


def imtl_l_objective(losses: Tensor, log_scale: Tensor, present: Tensor | None = None) -> Tensor:
    """``sum_t exp(s_t) L_t - s_t`` with the learnable scales ``s`` (``log_scale``), summed over
    the ``present`` tasks only (all when None): an absent task's ``s_t`` gets gradient 0, not the
    ``-1`` of its ``-s_t`` term (which would raise its weight without bound while its loss is 0).

    ``d/ds_t = exp(s_t) L_t - 1``: zero at ``exp(s_t) = 1 / L_t``, where every scaled loss is 1.
    ``d/dL_t = exp(s_t)`` (``imtl_l_weights``)."""
    terms = torch.exp(log_scale) * losses - log_scale
    if present is None:
        return terms.sum()
    return torch.where(present, terms, torch.zeros_like(terms)).sum()


def imtl_l_weights(log_scale: Tensor, present: Tensor) -> Tensor:
    """The effective weights ``dObjective/dL_t = exp(s_t)`` on the ``present`` tasks, else 0."""
    weights = torch.exp(log_scale)
    return torch.where(present.to(weights.device), weights, torch.zeros_like(weights))


@dataclass(frozen=True)
class IMTLLHyperparameters:
    lr: float = 0.025

    def __post_init__(self) -> None:
        set_field(self, "lr", check_number("lr", self.lr, gt=0))


class IMTLL(LossWeighting):
    """IMTL-L: learnable log-scales ``s_t`` (init 0), objective ``sum_t exp(s_t) L_t - s_t``; ``s``
    is optimised with its own ``lr`` (default 0.025, as uncertainty's) and no weight decay.
    Reported weights: ``exp(s_t)``, the effective ``dObjective/dL_t`` (0 for an absent task).

    The training loop must call ``to(device)`` and add ``optimizer_group()`` to its optimizer.
    Equal to ``2 * uncertainty`` at ``s = -log sigma^2`` (torchjd's docstring): the same optima,
    weights twice uncertainty's, and under Adam the same ``s`` trajectory up to its sign and
    Adam's ``eps``. The paper and LibMTL learn ``s`` with the network's optimizer and learning
    rate; here ``lr`` is its own, as for uncertainty.

    Masked tasks: the objective sums over the tasks present in the step only, so an absent
    task's ``s_t`` gets gradient 0, and ``on_step_end`` puts back the ``s_t`` of the absent
    tasks as they were before the optimizer step (which momentum would otherwise still move).
    The tasks do not interact: the present tasks' ``s`` follow exactly the trajectory of the
    method built for them alone.
    """

    name = "imtl_l"
    summary = "Learned per-task log-scales s: sum_t exp(s_t) L_t - s_t (IMTL-L, Liu 2021)."
    Hyperparameters = IMTLLHyperparameters
    reference = "Liu et al., ICLR 2021; code: torchjd 0.18 IMTLL"

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.log_scale = torch.nn.Parameter(torch.zeros(num_tasks, dtype=torch.float32))
        #: (present, s before the step), from ``objective`` to ``on_step_end``
        self._held: tuple[Tensor, Tensor] | None = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.log_scale]

    def optimizer_group(self) -> dict[str, Any]:
        return {"params": [self.log_scale], "lr": self.hp.lr, "weight_decay": 0.0}

    def _check_device(self, losses: Tensor) -> None:
        if self.log_scale.device != losses.device:
            raise self._error(
                f"parameters are on {self.log_scale.device} but the losses on {losses.device}; "
                "call method.to(device) before building the optimizer"
            )

    def compute_present_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        self._check_device(losses)
        return imtl_l_weights(self.log_scale.detach(), present)

    def objective(
        self, losses: Tensor, *, reduced: Tensor, weights: Tensor, present: Tensor | None = None
    ) -> Tensor:
        """``sum_t exp(s_t) L~_t - s_t`` with ``L~ = losses - losses.detach() + reduced``, summed
        over the ``present`` tasks (default ``reduced > 0``).

        ``L~`` has the value of the reduced losses (so the gradient w.r.t. ``s``,
        ``exp(s_t) Lbar_t - 1``, is the same on every DDP worker and ``s`` stays in sync) and the
        gradient of this worker's losses w.r.t. the model (``exp(s_t) dL_t``, which DDP
        averages). Without ``reduce`` ``L~ == losses`` exactly.
        """
        self._check_device(losses)
        present = self._present(reduced, present)
        self._held = (present, self.log_scale.detach().clone())
        mixed = losses - losses.detach() + reduced.to(dtype=losses.dtype)
        return imtl_l_objective(mixed, self.log_scale, present)

    def on_step_end(self, losses_after: Tensor | None = None) -> None:
        """Put back the ``s_t`` of the tasks absent in this step (no device synchronisation)."""
        if self._held is None:
            return
        present, before = self._held
        self._held = None
        with torch.no_grad():
            self.log_scale.copy_(torch.where(present, self.log_scale, before))

    def _state(self) -> dict[str, Any]:
        return {"log_scale": self.log_scale.detach().to("cpu").clone()}

    def _load_state(self, state: dict[str, Any]) -> None:
        s = state.get("log_scale")
        if not isinstance(s, Tensor) or s.shape != (self.num_tasks,):
            shape = tuple(s.shape) if isinstance(s, Tensor) else repr(s)
            raise self._error(
                f"state_dict log_scale must be a Tensor[{self.num_tasks}], got {shape}"
            )
        with torch.no_grad():  # in place: the optimizer keeps the same Parameter
            self.log_scale.copy_(s.to(device=self.log_scale.device, dtype=self.log_scale.dtype))
        self._held = None
