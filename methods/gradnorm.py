"""GradNorm: gradient normalisation for adaptive loss balancing (Chen et al., ICML 2018).

*GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep Multitask Networks*,
Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich, ICML 2018, arXiv:1711.02257. Reference
code: LibMTL ``weighting/GradNorm.py`` (no reference implementation in torchjd; the tests check
the closed form against a double-backward autograd computation of the GradNorm objective).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import Method, check_number, resolve_present, set_field

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def _all_present(values: Tensor, present: Tensor | None) -> Tensor:
    if present is None:
        return torch.ones(values.shape, dtype=torch.bool, device=values.device)
    return present.to(values.device)


def _present_mean(values: Tensor, present: Tensor) -> Tensor:
    """The mean of ``values`` over the ``present`` entries (NaN when there are none)."""
    return torch.where(present, values, torch.zeros_like(values)).sum() / present.sum()


def relative_inverse_rates(
    losses: Tensor, initial: Tensor, present: Tensor | None = None
) -> Tensor:
    """``r_t = Ltilde_t / mean(Ltilde)`` with ``Ltilde_t = L_t / L_t(0)``, the mean over the
    ``present`` tasks (all when None); 1 for an absent task.

    A present task without a usable ratio (no first loss yet, or a loss of 0) gets
    ``Ltilde_t = 1`` (on track), so it neither drags the mean nor gets a target of its own.
    """
    present = _all_present(losses, present)
    ratio = losses / initial
    ratio = torch.where(torch.isfinite(ratio) & (losses > 0), ratio, torch.ones_like(ratio))
    return torch.where(present, ratio / _present_mean(ratio, present), torch.ones_like(ratio))


def gradnorm_weight_gradient(
    weights: Tensor, norms: Tensor, rates: Tensor, alpha: float, present: Tensor | None = None
) -> Tensor:
    """The gradient of the GradNorm objective w.r.t. the task weights, in closed form.

    With ``G_t = ||grad_W (w_t L_t)|| = w_t n_t`` (``n_t = ||grad_W L_t||``, ``w_t > 0``) and the
    target ``G*_t = mean(G) r_t^alpha`` held constant (as in the paper),
    ``L_grad = sum_t |G_t - G*_t|`` has ``dL_grad / dw_t = sign(G_t - G*_t) n_t``. The sum and
    the mean run over the ``present`` tasks (all when None); an absent task's gradient is 0.
    """
    present = _all_present(weights, present)
    g = weights * norms
    target = _present_mean(g, present) * rates.pow(alpha)
    return torch.where(present, torch.sign(g - target) * norms, torch.zeros_like(g))


@dataclass(frozen=True)
class GradNormHyperparameters:
    alpha: float = 1.5
    lr: float = 0.025

    def __post_init__(self) -> None:
        set_field(self, "alpha", check_number("alpha", self.alpha, ge=0))
        set_field(self, "lr", check_number("lr", self.lr, gt=0))


class GradNorm(Method):
    """GradNorm: learnable task weights ``w`` (init 1) that pull each task's gradient norm at the
    last shared layer, ``G_t = w_t ||grad_W L_t||``, towards ``mean(G) r_t^alpha`` (``r_t``:
    the task's loss ratio ``L_t / L_t(0)`` relative to the mean; ``alpha`` 1.5).

    Per step the engine hands over ``J_W`` (the per-task gradients at the last shared layer's
    parameters); ``weights_from_jacobian`` returns this step's ``w`` (the network is trained on
    ``sum_t w_t L_t``) and sets ``w.grad`` to the closed-form gradient of the GradNorm objective,
    so the network's gradients are never touched by it. The training loop optimises ``w`` with
    its own ``lr`` (default 0.025, no weight decay); ``on_step_end`` then clips ``w`` at a small
    positive floor and renormalises it to sum ``T``. ``L_t(0)``: the loss at the first step with
    labels for task ``t``.

    Masked tasks: the rates, ``mean(G)`` and the objective run over the tasks present in the
    step; an absent task's weight gets gradient 0 and ``on_step_end`` leaves it as it was
    before the optimizer step (momentum would otherwise move it), clipping and rescaling the
    present tasks' weights to fill the rest of the sum, ``T - sum(absent weights)``. The present
    tasks' weights are then those of the method built for them alone, up to that common factor
    (exactly them while the absent tasks' weights are still 1, e.g. a task never labelled).
    """

    name = "gradnorm"
    reference = "Chen et al., ICML 2018, arXiv:1711.02257; code: LibMTL GradNorm"
    level: ClassVar[str] = "last_shared_layer"
    summary = "Learned weights equalising gradient norms at the last shared layer (Chen 2018)."
    Hyperparameters = GradNormHyperparameters

    #: ``w`` never drops below this before renormalising (a weight of 0 could not recover).
    MIN_WEIGHT = 1e-4

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.task_weights = torch.nn.Parameter(torch.ones(num_tasks, dtype=torch.float32))
        self.initial_losses = torch.full((num_tasks,), torch.nan, dtype=torch.float64)
        #: (present, w before the step), from ``weights_from_jacobian`` to ``on_step_end``
        self._held: tuple[Tensor, Tensor] | None = None

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.task_weights]

    def optimizer_group(self) -> dict[str, Any]:
        return {"params": [self.task_weights], "lr": self.hp.lr, "weight_decay": 0.0}

    def weights_from_jacobian(
        self, jacobian: Tensor, losses: Tensor, *, present: Tensor | None = None
    ) -> Tensor:
        """This step's weights ``w`` [T]; sets ``w.grad`` to the GradNorm objective's gradient.

        ``jacobian`` [T, n_W]: per-task gradients at the last shared layer; ``losses`` [T]:
        detached (all-reduced) losses; ``present`` [T] bool: the tasks with labels in this step
        (default ``losses > 0``).
        """
        if (
            not isinstance(jacobian, torch.Tensor)
            or jacobian.ndim != 2
            or (jacobian.shape[0] != self.num_tasks)
        ):
            raise self._error(f"jacobian must be a Tensor of shape ({self.num_tasks}, n)")
        if not isinstance(losses, torch.Tensor) or losses.shape != (self.num_tasks,):
            raise self._error(f"losses must be a Tensor of shape ({self.num_tasks},)")
        try:
            present = resolve_present(losses, present)
        except ValueError as exc:
            raise self._error(str(exc)) from None
        # all on the Jacobian's device: no host synchronisation in the middle of the backward
        device = jacobian.device
        present = present.to(device)
        norms = jacobian.detach().to(torch.float64).norm(dim=1)
        losses = losses.detach().to(device, torch.float64)
        initial = self.initial_losses.to(device)
        first = torch.isnan(initial) & present & (losses > 0)
        self.initial_losses = torch.where(first, losses, initial)
        rates = relative_inverse_rates(losses, self.initial_losses, present)
        weights = self.task_weights.detach().to(device, torch.float64)
        grad = gradnorm_weight_gradient(weights, norms, rates, self.hp.alpha, present)
        self.task_weights.grad = grad.to(self.task_weights.device, self.task_weights.dtype)
        before = self.task_weights.detach().clone()
        self._held = (present.to(before.device), before)
        return before.clone()

    def on_step_end(self, losses_after: Tensor | None = None) -> None:
        """Present tasks ``P`` (all when no step was seen): ``w_P <- (T - sum(w_absent))
        max(w_P, MIN_WEIGHT) / sum(max(w_P, MIN_WEIGHT))``, the absent tasks' weights as they
        were before the step (in place; ``T w / sum(w)`` when every task is present)."""
        with torch.no_grad():
            w = self.task_weights
            present, before = self._held or (torch.ones_like(w, dtype=torch.bool), w)
            self._held = None
            zero = torch.zeros_like(w)
            kept = torch.where(present, w.clamp(min=self.MIN_WEIGHT), before)
            share = self.num_tasks - torch.where(present, zero, kept).sum()
            scaled = kept * share / torch.where(present, kept, zero).sum()
            self.task_weights.copy_(torch.where(present, scaled, kept))

    def _state(self) -> dict[str, Any]:
        return {
            "task_weights": self.task_weights.detach().to("cpu").clone(),
            "initial_losses": self.initial_losses.to("cpu").clone(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        for key in ("task_weights", "initial_losses"):
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != (self.num_tasks,):
                raise self._error(f"state_dict {key} must be a Tensor[{self.num_tasks}]")
        with torch.no_grad():
            self.task_weights.copy_(state["task_weights"].to(self.task_weights.device))
        self.initial_losses = state["initial_losses"].to(torch.float64).clone()
        self._held = None
