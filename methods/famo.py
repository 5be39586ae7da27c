"""FAMO: fast adaptive multitask optimization (Liu, Liang, Stone & Liu, NeurIPS 2023).

*FAMO: Fast Adaptive Multitask Optimization*, B. Liu, Y. Feng, P. Stone, Q. Liu, NeurIPS 2023,
arXiv:2306.03792 (Algorithm 2). Reference code: https://github.com/Cranial-XIX/FAMO
(``FAMO`` in ``methods/weight_methods.py``); reference implementation used for the tests:
``torchjd.scalarization.FAMO`` (torchjd 0.18.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import LossWeighting, check_number, set_field

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: Added to ``L_t - b_t`` before the logarithm, as in the reference code.
EPSILON = 1e-8


def famo_coefficients(logits: Tensor, losses: Tensor, min_losses: Tensor, active: Tensor) -> Tensor:
    """The gradient coefficients of FAMO's objective, ``w_t = c z_t / (L_t - b_t + eps)``.

    FAMO's objective is ``c sum_t z_t log(L_t - b_t + eps)`` with ``z = softmax(logits)`` and the
    constant ``c = (sum_t z_t / (L_t - b_t + eps))^-1``; its gradient is ``sum_t w_t grad L_t``
    with the ``w`` returned here (they sum to 1). Tasks where ``active`` is False (no labels in
    this batch, loss 0) get weight 0 and are left out of ``z`` and ``c``: their ``1/eps`` would
    otherwise take all the weight from the others.
    """
    # no host synchronisation (this runs every step): a task left out gets z_t = 0 through the
    # mask, and a batch without any labels gives all zeros through the clamped denominator
    z = torch.softmax(logits.masked_fill(~active, -torch.inf), dim=0).nan_to_num(0.0)
    inverse = torch.where(active, 1.0 / (losses - min_losses + EPSILON), torch.zeros_like(losses))
    scaled = z * inverse
    return scaled / scaled.sum().clamp(min=torch.finfo(scaled.dtype).tiny)


def famo_logit_gradient(logits: Tensor, before: Tensor, after: Tensor, active: Tensor) -> Tensor:
    """The direction FAMO's logits step along: ``J_softmax(logits)^T delta`` with
    ``delta_t = log(L_t^before - b_t + eps) - log(L_t^after - b_t + eps)``, over the ``active``
    tasks only (the softmax of their logits; 0 for the others, as for FAMO without them).

    ``J_softmax^T delta = z * (delta - z . delta)``. Minimising this as a gradient raises the
    weight of the tasks whose loss fell least over the step.
    """
    delta = torch.where(active, torch.log(before) - torch.log(after), torch.zeros_like(before))
    z = torch.softmax(logits.masked_fill(~active, -torch.inf), dim=0).nan_to_num(0.0)
    return z * (delta - (z * delta).sum())


@dataclass(frozen=True)
class FAMOHyperparameters:
    lr: float = 0.025
    gamma: float = 1e-3

    def __post_init__(self) -> None:
        set_field(self, "lr", check_number("lr", self.lr, gt=0))
        set_field(self, "gamma", check_number("gamma", self.gamma, ge=0))


class FAMO(LossWeighting):
    """FAMO: the update ``sum_t w_t grad L_t`` with ``w_t ~ z_t / L_t`` (``z = softmax(xi)``)
    decreases every loss at about the same log-rate; after each optimizer step the losses of the
    same batch are measured again and ``xi`` takes an Adam step (``lr`` 0.025, weight decay
    ``gamma`` 1e-3) along ``J_softmax^T (log L^before - log L^after)``.

    Needs the losses after the step: the training loop re-forwards the batch (no grad,
    BatchNorm statistics restored) and passes them to ``on_step_end``. Reported weights: ``k w``
    with ``k`` the number of active tasks (``T`` when every task has labels: they sum like equal
    weighting's 1s over those tasks; the reference's sum to 1, so this is the reference's update
    times ``k``). ``b = 0`` (cross-entropy losses are positive).

    Masked tasks: a task is active in a step when it is present and its loss is positive (its
    log is needed). An inactive task gets weight 0 and is left out of ``z``, ``c`` and the
    logits' softmax; after the Adam step its logit and its Adam moments are put back as they
    were, so the active tasks follow FAMO built for them alone and the inactive ones do not move.
    """

    name = "famo"
    reference = "Liu et al., NeurIPS 2023, arXiv:2306.03792; code: Cranial-XIX/FAMO"
    summary = (
        "Equal log-rate loss decrease from loss values only; re-forwards each batch (Liu 2023)."
    )
    Hyperparameters = FAMOHyperparameters
    needs_losses_after: ClassVar[bool] = True

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.logits = torch.zeros(num_tasks, dtype=torch.float32, requires_grad=True)
        self.min_losses = torch.zeros(num_tasks, dtype=torch.float32)
        self._optimizer = self._make_optimizer()
        self._before: Tensor | None = None
        self._active: Tensor | None = None

    def _make_optimizer(self) -> torch.optim.Adam:
        return torch.optim.Adam([self.logits], lr=self.hp.lr, weight_decay=self.hp.gamma)

    def to(self, device: torch.device | str) -> FAMO:
        # the logits are FAMO's own (its own Adam steps them), not the training loop's
        with torch.no_grad():
            self.logits.data = self.logits.data.to(device)
            self.min_losses = self.min_losses.to(device)
        state = self._optimizer.state_dict()
        self._optimizer = self._make_optimizer()
        self._optimizer.load_state_dict(state)
        return self

    def compute_present_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        losses = losses.to(self.logits.device, torch.float32)
        self._before = losses.clone()
        self._active = present.to(losses.device) & (losses > 0)
        w = famo_coefficients(self.logits.detach(), losses, self.min_losses, self._active)
        return self._active.sum().to(w.dtype) * w

    def on_step_end(self, losses_after: Tensor | None = None) -> None:
        """One Adam step on the logits from the losses before and after the optimizer step."""
        if losses_after is None:
            raise self._error(
                "on_step_end needs the losses of the same batch after the optimizer step"
            )
        if self._before is None:
            raise self._error("on_step_end called before the weights of the step were computed")
        after = losses_after.detach().to(self.logits.device, torch.float32)
        before, self._before = self._before, None
        active, self._active = self._active & (after > 0), None
        shifted_before = before - self.min_losses + EPSILON
        shifted_after = after - self.min_losses + EPSILON
        grad = famo_logit_gradient(self.logits.detach(), shifted_before, shifted_after, active)
        # the inactive tasks' logits and Adam moments, to put back after the step (Adam's
        # momentum and weight decay would move them even with a zero gradient)
        moments = self._optimizer.state.get(self.logits, {})
        kept = {k: moments[k].clone() for k in ("exp_avg", "exp_avg_sq") if k in moments}
        logits_before = self.logits.detach().clone()
        self.logits.grad = grad
        self._optimizer.step()
        self.logits.grad = None
        with torch.no_grad():
            self.logits.copy_(torch.where(active, self.logits, logits_before))
            moments = self._optimizer.state[self.logits]
            for k in ("exp_avg", "exp_avg_sq"):
                old = kept.get(k, torch.zeros_like(moments[k]))
                moments[k].copy_(torch.where(active, moments[k], old))

    def _state(self) -> dict[str, Any]:
        optimizer = self._optimizer.state_dict()
        return {
            "logits": self.logits.detach().to("cpu").clone(),
            "adam_state": {
                # copies: Adam updates its moments in place
                k: {
                    n: (v.to("cpu").clone() if isinstance(v, torch.Tensor) else v)
                    for n, v in s.items()
                }
                for k, s in optimizer["state"].items()
            },
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        logits = state.get("logits")
        if not isinstance(logits, torch.Tensor) or logits.shape != (self.num_tasks,):
            raise self._error(f"state_dict logits must be a Tensor[{self.num_tasks}]")
        with torch.no_grad():
            self.logits.copy_(logits.to(self.logits.device))
        optimizer = self._optimizer.state_dict()
        optimizer["state"] = state.get("adam_state", {})
        self._optimizer = self._make_optimizer()
        self._optimizer.load_state_dict(optimizer)
