"""MoDo: multi-objective gradient with double sampling (Chen, Fernando, Ying & Chen, 2023).

*Three-Way Trade-Off in Multi-Objective Learning: Optimization, Generalization and
Conflict-Avoidance*, L. Chen, H. Fernando, Y. Ying, T. Chen, NeurIPS 2023 / JMLR 2024,
arXiv:2305.20057 (Algorithm 1, eqs. 2.9a-b). Reference code: github.com/heshandevaka/Trade-Off-MOL;
reference implementation used for the tests: ``torchjd.aggregation.MoDoWeighting`` (torchjd
0.18.0).

Also the shared machinery of the two-batch simplex methods (MoDo and SDMGrad,
``methods.sdmgrad``): ``SimplexPairAggregator``, which keeps the simplex state across steps
and applies the masked-task rule to it (the projection, ``project_onto_simplex``, is in
``methods.gradient``: MoCo uses it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import lazy_loader

from methods.base import check_number, set_field
from methods.gradient import GradientAggregator, project_onto_simplex

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def modo_step(cross: Tensor, lam: Tensor, *, gamma: float, rho: float) -> Tensor:
    """One MoDo update of the simplex weights (eq. 2.9a):
    ``lambda' = Pi_simplex(lambda - gamma (A lambda + rho lambda))``.

    ``A = J_1 J_2^T`` (Tensor[T, T]) from two independent mini-batches, so that ``A lambda`` is
    an unbiased estimate of the gradient ``J J^T lambda`` of ``1/2 ||J^T lambda||^2``
    (``J_1 J_1^T`` is not: it adds the covariance of the batch's gradients). ``lam``:
    Tensor[T] on the simplex. Returns ``lambda'`` (Tensor[T]), the weights of the step.
    """
    return project_onto_simplex(lam - gamma * (cross @ lam + rho * lam))


# --------------------------------------------------------------------------------------------
# Two-batch simplex methods: state and masked tasks
# --------------------------------------------------------------------------------------------


class SimplexPairAggregator(GradientAggregator):
    """A two-batch method whose state is a point of the simplex, warm-started every step.

    Subclasses implement ``simplex_step(cross, start) -> (state, weights)``: from ``A = J_1
    J_2^T`` (float64 [P, P], the present tasks' block) and the state ``start`` (on the simplex
    of those ``P`` tasks), the next state and the weights of the step (both on that simplex).

    State as masses: the checkpointed state (``STATE_KEY``) is a non-negative vector ``m``
    (initially 1 per task); the simplex point is ``m / sum(m)``. A step in which the tasks
    ``P`` are present:

    * starts from ``m_P / sum(m_P)``: the simplex point conditioned on ``P``, which is exactly
      the state of the same method built for the tasks ``P`` alone (whose masses are ``m_P``);
    * writes back ``m_P' = sum(m_P) * state``: an absent task's mass is unchanged and the present
      tasks keep their total mass, so ``m / sum(m)`` stays on the simplex and the absent tasks'
      share of it is kept for when they come back;
    * gives weight 0 to the absent tasks (the reported weights of the present ones sum to 1).

    With every task present (``sum(m) = T`` initially) it is the method itself, up to round-off.
    If the present tasks' masses are all 0 (the projection can zero a task), their conditional
    point is undefined: they restart from the initial state (mass 1 each), as the method built
    for them alone would from that state.

    Single batch: ``aggregate(J, losses)`` (and ``compute``) raise ``ValueError``. With one
    batch ``A`` would be ``J J^T``, a biased estimate of the quantity the method's guarantee
    rests on (the reason for the second batch); the engine calls ``aggregate_pair``.
    """

    batches_per_step: ClassVar[int] = 2
    #: the second mini-batch only makes sense where the gradients are unbiased per batch:
    #: the shared parameters (at the representation the rows differ per batch)
    AGGREGATION_LEVELS: ClassVar[tuple[str, ...]] = ("parameters",)
    #: the name of the masses in the checkpointed state
    STATE_KEY: ClassVar[str] = "masses"

    def __init__(self, num_tasks: int, task_names=None, **hyperparameters: Any) -> None:
        super().__init__(num_tasks, task_names, **hyperparameters)
        self._masses = torch.ones(self.num_tasks, dtype=torch.float64)

    def simplex_step(self, cross: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def pair_weights(self, cross: Tensor, present: Tensor) -> Tensor:
        weights = torch.zeros(self.num_tasks, dtype=torch.float64)
        if not bool(present.any()):
            return weights
        idx = present.nonzero().flatten()
        masses = self._masses[idx]
        total = masses.sum()
        if not float(total) > 0.0:  # every present task at mass 0: restart them
            masses = torch.ones_like(masses)
            total = masses.sum()
        state, sub = self.simplex_step(cross[idx][:, idx].to(torch.float64), masses / total)
        self._masses[idx] = total * state
        weights[idx] = sub
        return weights

    def _single_batch(self) -> ValueError:
        return self._error(
            "needs two independent mini-batches per step (batches_per_step = 2): call "
            "aggregate_pair(J_1, J_2, losses); a single batch's J J^T would bias its weight update"
        )

    def aggregate(
        self, jacobian: Tensor, losses: Tensor, *, present: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        raise self._single_batch()

    def compute_present(
        self, jacobian: Tensor, losses: Tensor, gramian: Tensor, present: Tensor
    ) -> tuple[Tensor, Tensor]:
        raise self._single_batch()

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        raise self._single_batch()

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), self.STATE_KEY: self._masses.clone()}

    def _load_state(self, state: dict[str, Any]) -> None:
        super()._load_state(state)
        masses = state.get(self.STATE_KEY)
        if not isinstance(masses, torch.Tensor) or masses.shape != (self.num_tasks,):
            raise self._error(f"state_dict {self.STATE_KEY} must be a Tensor[{self.num_tasks}]")
        masses = masses.to("cpu", torch.float64).clone()
        if not bool((torch.isfinite(masses) & (masses >= 0)).all()):
            raise self._error(f"state_dict {self.STATE_KEY} must be finite and >= 0")
        self._masses = masses


# --------------------------------------------------------------------------------------------
# MoDo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MoDoHyperparameters:
    gamma: float = 0.1
    rho: float = 0.1

    def __post_init__(self) -> None:
        set_field(self, "gamma", check_number("gamma", self.gamma, gt=0))
        set_field(self, "rho", check_number("rho", self.rho, ge=0))


class MoDo(SimplexPairAggregator):
    """MoDo: one projected-gradient step per optimisation step on MGDA's simplex weights,
    ``lambda <- Pi_simplex(lambda - gamma (J_1 J_2^T lambda + rho lambda))``, from two independent
    mini-batches, warm-started from the previous step's ``lambda`` (uniform at first); the update
    is ``lambda^T (J_1 + J_2) / 2`` (eq. 2.9b: the mean of both batches' gradients).

    Defaults as torchjd's ``MoDoWeighting``: ``gamma = 0.1`` (the weights' step size), ``rho =
    0.1`` (the l2 regularisation, which keeps ``lambda`` away from the vertices). Reported
    weights: ``lambda`` (sums to 1 over the present tasks: the update is on the scale of the
    mean gradient). As torchjd, the two-batch form; the authors' ``three_grads`` variant (a third
    batch for the update) is not offered. Masked tasks: see ``SimplexPairAggregator``.
    """

    name = "modo"
    summary = "MGDA weights by one warm-started projected step on two batches' J1 J2^T (Chen 2023)."
    reference = (
        "L. Chen, H. Fernando, Y. Ying, T. Chen, NeurIPS 2023 / JMLR 2024, arXiv:2305.20057; "
        "code: torchjd 0.18 MoDoWeighting"
    )
    Hyperparameters = MoDoHyperparameters
    STATE_KEY = "lambda"

    def simplex_step(self, cross: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
        lam = modo_step(cross, start, gamma=self.hp.gamma, rho=self.hp.rho)
        return lam, lam
