"""Smooth Tchebycheff scalarization (STCH) of the task losses (Lin et al., ICML 2024).

*Smooth Tchebycheff Scalarization for Multi-Objective Optimization*, X. Lin, X. Zhang, Z. Yang,
F. Liu, Z. Wang, Q. Zhang, ICML 2024, arXiv:2402.19078. Reference implementation used for the
tests: ``torchjd.scalarization.STCH`` (torchjd 0.18.0). The authors' multi-task code
(github.com/Xi-L/STCH, ``STCH_MTL/LibMTL/weighting/STCH.py``, also in LibMTL) adds a warm-up
that estimates a nadir point and scalarizes ``log(L_t / nadir_t)``; torchjd has no warm-up, and
neither has this method (see the class docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lazy_loader

from methods.base import LossWeighting, check_number, check_task_values, set_field

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


@dataclass(frozen=True)
class STCHHyperparameters:
    mu: float = 1.0
    # the preference vector lambda: a list (one positive number per task, in task order) or a
    # mapping task name -> number (tasks not named keep 1.0); None: all 1. Normalised to mean 1.
    preference: list[float] | dict[str, float] | None = None

    def __post_init__(self) -> None:
        set_field(self, "mu", check_number("mu", self.mu, gt=0))
        set_field(
            self, "preference", check_task_values("preference", self.preference, positive=True)
        )


def normalised_preference(preference: Tensor, present: Tensor) -> Tensor:
    """``lambda_t = p_t / mean_{k in P} p_k`` on the ``present`` tasks ``P``, 0 elsewhere (all 0
    when ``P`` is empty). Only the ratios of a preference matter: its scale would be a change of
    ``mu``. Default (all 1): exactly 1 on ``P``."""
    p = torch.where(present, preference, torch.zeros_like(preference))
    k = present.sum().to(p.dtype)
    return p * (k / p.sum().clamp(min=torch.finfo(p.dtype).tiny))


def stch_objective(losses: Tensor, preference: Tensor, mu: float, present: Tensor) -> Tensor:
    """``k mu log sum_{t in P} exp(lambda_t L_t / mu)`` over the ``k`` ``present`` tasks ``P``,
    with ``lambda = normalised_preference(preference, present)``; 0 when ``k = 0``.

    This is ``k`` times ``torchjd.scalarization.STCH(mu, weights=lambda)`` (no ideal point) on
    ``P``, a smooth maximum of ``k lambda_t L_t``: between ``k max_t lambda_t L_t`` and that plus
    ``k mu log k``. As in the paper's Appendix B.1, the exponents are shifted by their maximum
    ``c`` (and ``c`` added back) so nothing overflows for large losses or a small ``mu``; ``c``
    is detached, since its gradient cancels exactly. The gradient w.r.t. ``L_t`` is
    ``k lambda_t softmax_P(lambda L / mu)_t`` (``stch_weights``).
    """
    lam = normalised_preference(preference, present)
    k = present.sum().to(losses.dtype)
    y = lam * losses
    shift = torch.where(present, y.detach(), torch.full_like(y, -torch.inf)).max()
    shift = torch.where(k > 0, shift, torch.zeros_like(shift))  # no task present: any constant
    # an absent task's exponent is 0 before exp and its term dropped after: no inf or NaN
    # reaches the gradient through torch.where
    z = torch.where(present, (y - shift) / mu, torch.zeros_like(y))
    total = torch.where(present, torch.exp(z), torch.zeros_like(z)).sum()
    return k * (mu * torch.log(total + (k == 0).to(total.dtype)) + shift)


def stch_weights(losses: Tensor, preference: Tensor, mu: float, present: Tensor) -> Tensor:
    """The effective weights ``dObjective/dL_t = k lambda_t softmax_P(lambda L / mu)_t`` on the
    ``present`` tasks, 0 elsewhere. They sum to ``k`` for the default preference; as ``mu -> 0``
    they go to ``k`` on the task with the largest ``lambda_t L_t``, as ``mu -> inf`` to
    ``lambda`` (a fixed weighting)."""
    lam = normalised_preference(preference, present)
    y = lam * losses
    shift = torch.where(present, y, torch.full_like(y, -torch.inf)).max()
    z = torch.where(present, (y - shift) / mu, torch.full_like(y, -torch.inf))
    softmax = torch.softmax(z, dim=0).nan_to_num(0.0)  # no task present: all -inf, NaN -> 0
    return present.sum().to(y.dtype) * lam * softmax


class STCH(LossWeighting):
    """Smooth Tchebycheff scalarization: objective ``T mu log sum_t exp(lambda_t L_t / mu)``, a
    smooth version of ``T max_t lambda_t L_t`` that trains the currently worst task most.
    Defaults: ``mu = 1.0`` (the authors' code and LibMTL), ``preference`` all 1 (``lambda``,
    normalised to mean 1). Stateless. Reported weights: the effective weights
    ``dObjective/dL_t = T lambda_t softmax_t(lambda L / mu)`` (they sum to ``T`` for the default
    preference; ``objective`` is overridden).

    Relation to torchjd's ``STCH(mu, weights, reference)``: ours is ``T * STCH(mu,
    weights=lambda)``; torchjd's default preference ``1/T`` with ``mu'`` equals ours with
    ``mu = T mu'`` divided by ``T^2``. The ``T`` factor (the authors' code has it too) is the
    sum-``T`` convention of RLW, DWA and FAMO. No ideal point ``z*`` (torchjd's ``reference``):
    the losses' lower bound is 0. No warm-up and no nadir normalisation (the authors' code runs
    ``sum_t log L_t`` for ``STCH_warmup_epoch`` epochs, averages the losses of the last one into
    a nadir point ``n`` and then scalarizes ``log(L_t / n_t)``): torchjd, which this follows,
    has neither. On raw losses ``mu`` is in loss units, so it must be tuned to their scale.

    Masked tasks: the scalarization runs over the ``k`` tasks present in the step (their
    preference renormalised to mean 1 over them) and is multiplied by ``k``: exactly the method
    built for those tasks alone (an absent task's loss 0 would otherwise still count as a term
    ``exp(0)`` of the smooth maximum). The others get weight 0.
    """

    name = "stch"
    summary = "Smooth Tchebycheff: T mu logsumexp(lambda_t L_t / mu), a soft max (Lin 2024)."
    Hyperparameters = STCHHyperparameters
    reference = "Lin et al., ICML 2024, arXiv:2402.19078; code: torchjd 0.18 STCH"

    def __init__(
        self, num_tasks: int, task_names: Sequence[str] | None = None, **hyperparameters: Any
    ) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self._preference = self._task_values("preference", self.hp.preference)

    def _check_arguments(self) -> None:
        self._task_value_list("preference", self.hp.preference)

    def _preference_for(self, losses: Tensor) -> Tensor:
        return self._preference.to(device=losses.device, dtype=losses.dtype)

    def compute_present_weights(self, losses: Tensor, present: Tensor) -> Tensor:
        present = present.to(losses.device)
        return stch_weights(losses, self._preference_for(losses), self.hp.mu, present)

    def objective(
        self, losses: Tensor, *, reduced: Tensor, weights: Tensor, present: Tensor | None = None
    ) -> Tensor:
        """``stch_objective`` of ``L~ = losses - losses.detach() + reduced``: the value of the
        reduced losses and the gradient ``sum_t w_t grad L_t`` of this worker's losses with the
        weights of the reduced ones (DDP then averages it). Single-process ``L~ == losses``."""
        present = self._present(reduced, present).to(losses.device)
        mixed = losses - losses.detach() + reduced.to(dtype=losses.dtype)
        return stch_objective(mixed, self._preference_for(mixed), self.hp.mu, present)
