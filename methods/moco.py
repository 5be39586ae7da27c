"""MoCo: stochastic multi-objective gradient correction (Fernando et al., ICLR 2023).

*Mitigating Gradient Bias in Multi-objective Learning: A Provably Convergent Approach*,
H. Fernando, H. Shen, M. Liu, S. Chaudhury, K. Murugesan, T. Chen, ICLR 2023, arXiv:2210.12624
(Algorithm 1). Reference code: LibMTL's ``LibMTL/weighting/MoCo.py``
(github.com/median-research-group/LibMTL, "implemented based on the authors' sharing code"),
whose hyperparameter names ``MoCo_beta``, ``MoCo_beta_sigma``, ``MoCo_gamma``,
``MoCo_gamma_sigma``, ``MoCo_rho`` (defaults 0.5, 0.5, 0.1, 0.5, 0) are kept without the prefix.
Not in torchjd: tested against hand-derived values and a transcription of LibMTL's update.

Stochastic MGDA is biased: the min-norm weights of a noisy Jacobian are not those of the true
one. MoCo tracks the Jacobian with an EMA ``Y`` (so the noise averages out) and follows the
MGDA weights with one projected gradient step per iteration instead of solving for them::

    Y      <- Y - beta_k (Y - H)                                   (H: this step's gradients)
    lambda <- Proj_simplex(lambda - gamma_k (Y Y^T + rho I) lambda)
    d       = Y^T lambda

with ``beta_k = beta / k^beta_sigma`` and ``gamma_k = gamma / k^gamma_sigma``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import check_choice, check_number, set_field
from methods.gradient import GradientAggregator, project_onto_simplex

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: added to the gradient norms (``normalization: l2_loss``), as in the reference code
EPSILON = 1e-8
#: ``normalization`` choices: ``g_t / ||g_t|| * L_t`` (the authors' code) or the raw gradient
NORMALIZATIONS: tuple[str, ...] = ("l2_loss", "none")
#: ``simplex`` choices: how ``lambda`` is brought back to the simplex after its gradient step
SIMPLEX_MAPS: tuple[str, ...] = ("projection", "softmax")


def tracked_gradients(
    jacobian: Tensor, losses: Tensor, normalization: str, out: Tensor | None = None
) -> Tensor:
    """``H`` [T, n], the gradients ``Y`` tracks: ``g_t / (||g_t|| + 1e-8) * L_t`` for
    ``l2_loss`` (LibMTL's and the authors' code), ``g_t`` for ``none`` (the paper; ``J``
    itself). ``losses`` [T] on ``J``'s device; ``out``: a [T, n] buffer for the result
    (``GradientAggregator.scratch``)."""
    if normalization == "none":
        return jacobian
    norms = jacobian.norm(dim=1)
    return torch.div(jacobian, (norms + EPSILON)[:, None], out=out).mul_(losses[:, None])


def moco_lambda_step(
    lam: Tensor, y_gramian: Tensor, *, gamma: float, rho: float, simplex: str
) -> Tensor:
    """``lambda' = S(lambda - gamma (Y Y^T + rho I) lambda)`` with ``S`` the projection onto
    the simplex (``projection``, the paper's eq. 8) or the softmax (``softmax``, LibMTL's code).
    ``y_gramian = Y Y^T`` [T, T] (float64, CPU), ``gamma`` this step's rate ``gamma_k``."""
    eye = torch.eye(lam.shape[0], dtype=lam.dtype)
    moved = lam - gamma * (y_gramian + rho * eye) @ lam
    if simplex == "softmax":
        return torch.softmax(moved, dim=0)
    return project_onto_simplex(moved)


@dataclass(frozen=True)
class MoCoHyperparameters:
    beta: float = 0.5
    beta_sigma: float = 0.5
    gamma: float = 0.1
    gamma_sigma: float = 0.5
    rho: float = 0.0
    normalization: str = "l2_loss"
    simplex: str = "projection"

    def __post_init__(self) -> None:
        set_field(self, "beta", check_number("beta", self.beta, gt=0, le=1))
        set_field(self, "beta_sigma", check_number("beta_sigma", self.beta_sigma, ge=0))
        set_field(self, "gamma", check_number("gamma", self.gamma, gt=0))
        set_field(self, "gamma_sigma", check_number("gamma_sigma", self.gamma_sigma, ge=0))
        set_field(self, "rho", check_number("rho", self.rho, ge=0))
        set_field(
            self,
            "normalization",
            check_choice("normalization", self.normalization, NORMALIZATIONS),
        )
        set_field(self, "simplex", check_choice("simplex", self.simplex, SIMPLEX_MAPS))


class MoCo(GradientAggregator):
    """MoCo: the update ``d = Y^T lambda``, ``Y`` [T, n] an EMA of the (normalised) task
    gradients and ``lambda`` on the simplex following the MGDA weights of ``Y`` by one step
    of projected gradient descent per iteration (see the module docstring).

    Defaults as LibMTL: ``beta = 0.5``, ``beta_sigma = 0.5``, ``gamma = 0.1``,
    ``gamma_sigma = 0.5``, ``rho = 0``, the gradients tracked as ``g_t / ||g_t|| * L_t``
    (``normalization: l2_loss``, the authors' code; ``none``: the raw gradients of the paper).
    ``simplex``: ``projection`` (default, the paper's Euclidean projection) or ``softmax``
    (LibMTL's ``softmax(lambda - step)``, which never reaches the simplex's boundary). ``Y``
    starts at 0 and ``lambda`` at ``1/T``; ``k`` counts the steps from 1.

    The direction is NOT ``weights @ J``: it is ``Y^T lambda`` (``direction_is_weighted_jacobian
    = False``); the reported weights are ``lambda``. Heads: their own gradients by default (as
    LibMTL and the authors' code), ``lambda_t grad L_t`` with ``heads: weighted``. So ``ema``
    and ``update_every`` (which replace the update by ``lambda^T J``) are refused by the base
    class. Level ``parameters`` only: at the representation ``Y`` would average the samples of
    a different batch every step (LibMTL refuses ``rep_grad`` too).

    State (the memory cost): ``Y`` [T, n], as large as ``J`` (on ``J``'s device, in its
    dtype, at least float32), ``lambda`` [T] (float64) and ``k``. Masked tasks: an absent
    task's row of ``Y`` and its ``lambda_t`` stay as they were and it is left out of ``d``; the
    present tasks' ``lambda`` take the step among themselves (their block of ``Y Y^T``) and are
    mapped to their own simplex. A task's ``lambda_t`` is NaN until it is first present; it then
    starts at ``1 / P`` (``P``: the tasks present in that step), so a task never present leaves
    the others exactly as MoCo without it. ``k`` counts the steps with any task present.
    """

    name = "moco"
    summary = "EMA-tracked Jacobian, MGDA weights by projected gradient steps (Fernando 2023)."
    reference = (
        "Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, ICLR 2023, arXiv:2210.12624; "
        "code: LibMTL weighting/MoCo.py"
    )
    Hyperparameters = MoCoHyperparameters
    AGGREGATION_LEVELS: ClassVar[tuple[str, ...]] = ("parameters",)
    direction_is_weighted_jacobian: ClassVar[bool] = False

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self.lam = torch.full((num_tasks,), torch.nan, dtype=torch.float64)
        self.tracked: Tensor | None = None  # Y [T, n], created by the first step
        self.steps = 0

    def _tracked(self, jacobian: Tensor) -> Tensor:
        self.tracked = self.coordinate_state(self.tracked, jacobian, "tracked Jacobian Y")
        return self.tracked

    def compute_present(
        self, jacobian: Tensor, losses: Tensor, gramian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = torch.zeros(self.num_tasks, dtype=torch.float64)
        if not bool(present.any()):
            return torch.zeros_like(jacobian[0]), weights
        tracked = self._tracked(jacobian)
        idx = present.nonzero().flatten()
        rows = idx.to(jacobian.device)
        sub_losses = losses[idx.to(losses.device)].to(jacobian.device, tracked.dtype)
        self.steps += 1
        k = self.steps
        rate = hp.beta / k**hp.beta_sigma
        # Y' = Y - beta_k (Y - H)
        if bool(present.all()):  # the usual step: in place, through kept buffers
            wide = jacobian.to(tracked.dtype)
            h = tracked_gradients(wide, sub_losses, hp.normalization, self.scratch("h", wide))
            gap = torch.sub(tracked, h, out=self.scratch("gap", wide)).mul_(rate)
            y = tracked.sub_(gap)
        else:
            h = tracked_gradients(jacobian[rows].to(tracked.dtype), sub_losses, hp.normalization)
            y = tracked[rows]
            y = y - rate * (y - h)
            tracked[rows] = y
        lam = self.lam[idx]
        lam = torch.where(torch.isnan(lam), 1.0 / len(idx), lam)
        y_gramian = (y @ y.T).to("cpu", torch.float64)
        lam = moco_lambda_step(
            lam, y_gramian, gamma=hp.gamma / k**hp.gamma_sigma, rho=hp.rho, simplex=hp.simplex
        )
        self.lam[idx] = lam
        weights[idx] = lam
        return lam.to(y.device, y.dtype) @ y, weights

    def _state(self) -> dict[str, Any]:
        state = {**super()._state(), "lambda": self.lam.clone(), "steps": self.steps}
        if self.tracked is not None:
            state["tracked"] = self.tracked.to("cpu", copy=True)
        return state

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        lam = state.get("lambda")
        if not isinstance(lam, torch.Tensor) or lam.shape != (self.num_tasks,):
            raise self._error(f"state_dict lambda must be a Tensor[{self.num_tasks}]")
        self.lam = lam.to("cpu", torch.float64).clone()
        tracked = state.get("tracked")
        if tracked is not None and (tracked.ndim != 2 or tracked.shape[0] != self.num_tasks):
            raise self._error(f"state_dict tracked must be a Tensor[{self.num_tasks}, n]")
        self.tracked = None if tracked is None else tracked.clone()
        self.steps = int(state.get("steps", 0))
