"""Auto-Lambda: task weights learned by one-step look-ahead on validation batches.

*Auto-Lambda: Disentangling Dynamic Task Relationships*, S. Liu, S. James, A. J. Davison,
E. Johns, TMLR 2022, arXiv:2202.03091. Reference code: https://github.com/lorenmt/auto-lambda
(``AutoLambda`` in ``auto_lambda.py``: ``virtual_step``, ``unrolled_backward``,
``compute_hessian``; the meta weights start at ``autol_init`` and take Adam steps of
``autol_lr``). Not in torchjd; the tests derive the look-ahead by hand.

The bilevel problem: the weights ``lambda`` minimise the validation loss after one training step
taken with them, ``min_lambda L_val(theta - alpha grad_theta sum_t lambda_t L_t^train(theta))``.
``methods.engine.lookahead_hypergradient`` computes its gradient by the reference code's
finite-difference approximation of the second-order term; this module keeps ``lambda`` and
steps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import LossWeighting, check_number, set_field

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def adam_step(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    steps: Tensor,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    active: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Adam step (Kingma & Ba 2015, Algorithm 1; ``torch.optim.Adam`` without weight decay)
    on the ``active`` entries only, each with its own step count::

        k = steps + 1;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
        p = p - lr (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)

    An inactive entry keeps its value, moments and count (an absent task's weight must not
    drift on Adam's momentum). All tensors Tensor[T]; returns the new
    ``(param, exp_avg, exp_avg_sq, steps)``.
    """
    b1, b2 = betas
    k = steps + 1
    m = b1 * exp_avg + (1 - b1) * grad
    v = b2 * exp_avg_sq + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**k)
    v_hat = v / (1 - b2**k)
    new = param - lr * m_hat / (v_hat.sqrt() + eps)
    keep = ~active
    return (
        torch.where(keep, param, new),
        torch.where(keep, exp_avg, m),
        torch.where(keep, exp_avg_sq, v),
        torch.where(keep, steps, k),
    )


@dataclass(frozen=True)
class AutoLambdaHyperparameters:
    #: the meta weights' initial value (the reference's ``autol_init``)
    initial_weight: float = 0.1
    #: Adam's learning rate for the meta weights (the reference's ``autol_lr``)
    lr: float = 1e-4

    def __post_init__(self) -> None:
        set_field(self, "initial_weight", check_number("initial_weight", self.initial_weight, gt=0))
        set_field(self, "lr", check_number("lr", self.lr, gt=0))


class AutoLambda(LossWeighting):
    """Auto-Lambda: ``L = sum_t lambda_t L_t`` with ``lambda`` learned on validation batches.

    Before each training step the training loop draws one batch of the **validation split**
    (never the test split) and ``methods.engine.lookahead_hypergradient`` returns
    ``h = dL_val(theta')/dlambda`` for the look-ahead ``theta' = theta - alpha (m + g + wd theta)``
    (``g`` the gradient of ``sum_t lambda_t L_t`` on the training batch, ``alpha`` the
    optimizer's current learning rate, ``m`` SGD's momentum buffer times its momentum, 0 for
    Adam, ``wd`` the weight decay; all tasks are primary, so ``L_val`` sums every task's loss);
    ``meta_step(h, present)`` then takes one Adam step on ``lambda``. The training step that
    follows uses the new ``lambda``.

    Defaults as the reference code's dense-prediction experiments (``autol_init`` 0.1,
    ``autol_lr`` 1e-4). ``lambda`` is not clipped or normalised (the reference's is not either).
    Masked tasks: a task without labels in the training batch has a zero hypergradient; its
    ``lambda_t`` and Adam moments stay as they were (per-task step counts), so the others follow
    Auto-Lambda built for them alone.
    """

    name = "auto_lambda"
    reference = (
        "Liu, James, Davison & Johns, TMLR 2022, arXiv:2202.03091; code: lorenmt/auto-lambda"
    )
    summary = "Weights learned by one-step look-ahead on validation batches (Liu 2022)."
    cost = "look-ahead: 3 backward + 4 forward passes, 1 validation batch"
    Hyperparameters = AutoLambdaHyperparameters
    #: the training loop passes one validation batch per step to the look-ahead
    needs_validation_batch: ClassVar[bool] = True

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.meta_weights = torch.full((num_tasks,), self.hp.initial_weight)
        self._exp_avg = torch.zeros(num_tasks)
        self._exp_avg_sq = torch.zeros(num_tasks)
        self._steps = torch.zeros(num_tasks)

    def to(self, device: torch.device | str) -> AutoLambda:
        self.meta_weights = self.meta_weights.to(device)
        self._exp_avg = self._exp_avg.to(device)
        self._exp_avg_sq = self._exp_avg_sq.to(device)
        self._steps = self._steps.to(device)
        return self

    def compute_weights(self, losses: Tensor) -> Tensor:
        return self.meta_weights.clone()

    def meta_step(self, hypergradient: Tensor, present: Tensor | None = None) -> None:
        """One Adam step on ``lambda`` along ``hypergradient`` (Tensor[T]: ``dL_val/dlambda``)
        for the ``present`` tasks (Tensor[T] of bool: labelled in the training batch; None:
        every task)."""
        if not isinstance(hypergradient, torch.Tensor) or hypergradient.shape != (self.num_tasks,):
            raise self._error(f"hypergradient must be a Tensor of shape ({self.num_tasks},)")
        device = self.meta_weights.device
        if present is None:
            present = torch.ones(self.num_tasks, dtype=torch.bool)
        grad = hypergradient.detach().to(device, torch.float32)
        active = present.to(device) & torch.isfinite(grad)
        self.meta_weights, self._exp_avg, self._exp_avg_sq, self._steps = adam_step(
            self.meta_weights,
            torch.where(active, grad, 0.0),
            self._exp_avg,
            self._exp_avg_sq,
            self._steps,
            lr=self.hp.lr,
            active=active,
        )

    def _state(self) -> dict[str, Any]:
        return {
            "meta_weights": self.meta_weights.cpu().clone(),
            "exp_avg": self._exp_avg.cpu().clone(),
            "exp_avg_sq": self._exp_avg_sq.cpu().clone(),
            "steps": self._steps.cpu().clone(),
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        device = self.meta_weights.device
        for key, attr in (
            ("meta_weights", "meta_weights"),
            ("exp_avg", "_exp_avg"),
            ("exp_avg_sq", "_exp_avg_sq"),
            ("steps", "_steps"),
        ):
            value = state.get(key)
            if not isinstance(value, torch.Tensor) or value.shape != (self.num_tasks,):
                raise self._error(f"state_dict {key} must be a Tensor[{self.num_tasks}]")
            setattr(self, attr, value.to(device, torch.float32).clone())
