"""SDMGrad: stochastic direction-oriented multi-objective gradient (Xiao, Ban & Ji, NeurIPS 2023).

*Direction-oriented Multi-objective Learning: Simple and Provable Stochastic Algorithms*,
P. Xiao, H. Ban, K. Ji, NeurIPS 2023, arXiv:2305.18409 (Algorithm 1; the scale normalisation of
section 6.1). Reference code: github.com/OptMN-Lab/SDMGrad (``methods/weight_methods.py``);
reference implementation used for the tests: ``torchjd.aggregation.SDMGradWeighting`` (torchjd
0.18.0).

The weights solve ``min_{w in simplex} 1/2 ||J^T (w + lambda w~)||^2`` (the direction closest
to the preference direction ``J^T w~`` among MGDA-like ones, ``lambda`` pulling towards it) by
a few steps of projected SGD with momentum, whose stochastic gradient ``A (w + lambda w~)``
uses ``A = J_1 J_2^T`` from two independent mini-batches (unbiased for ``J J^T (w + lambda
w~)``). Masked tasks and the state: ``methods.modo.SimplexPairAggregator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

from methods.base import HyperparameterError, check_number, set_field
from methods.gradient import check_positive_int, project_onto_simplex
from methods.modo import SimplexPairAggregator

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

#: Added to the squared scale before dividing ``A`` by it, as the reference code.
SCALE_EPS = 1e-8


def sdmgrad_step(
    cross: Tensor,
    w: Tensor,
    *,
    lr: float,
    momentum: float,
    n_iter: int,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """``(w', weights)``: ``n_iter`` steps of projected SGD with momentum from ``w``, then the
    weights of the update, ``(w' + lam w~) / (1 + lam)`` with ``w~ = 1/T`` (the mean gradient as
    preference direction).

    ``A = cross / (s^2 + 1e-8)`` with ``s = mean_t sqrt(max(A_tt, 0))`` (about the typical
    gradient norm, so that ``lr`` does not depend on the gradients' scale); then, with ``v``
    starting at the first gradient, ``g = A (w + lam w~)``, ``v <- momentum v + g``,
    ``w <- Pi_simplex(w - lr v)``. ``cross``: ``J_1 J_2^T`` (Tensor[T, T], not symmetric in
    general); ``w``: Tensor[T] on the simplex, the previous step's ``w'`` (warm start).
    """
    num_tasks = cross.shape[0]
    preference = torch.full((num_tasks,), 1.0 / num_tasks, dtype=cross.dtype)
    scale = cross.diagonal().clamp(min=0.0).sqrt().mean()
    a = cross / (scale * scale + SCALE_EPS)
    velocity: Tensor | None = None
    for _ in range(n_iter):
        grad = a @ (w + lam * preference)
        velocity = grad if velocity is None else momentum * velocity + grad
        w = project_onto_simplex(w - lr * velocity)
    return w, (w + lam * preference) / (1.0 + lam)


@dataclass(frozen=True)
class SDMGradHyperparameters:
    lr: float = 10.0
    momentum: float = 0.5
    n_iter: int = 20
    lam: float = 0.3

    def __post_init__(self) -> None:
        set_field(self, "lr", check_number("lr", self.lr, gt=0))
        momentum = check_number("momentum", self.momentum, ge=0)
        if not momentum < 1.0:
            raise HyperparameterError(
                f"momentum must be a finite number >= 0 and < 1, got {self.momentum!r}"
            )
        set_field(self, "momentum", momentum)
        set_field(self, "n_iter", check_positive_int("n_iter", self.n_iter))
        set_field(self, "lam", check_number("lam", self.lam, ge=0))


class SDMGrad(SimplexPairAggregator):
    """SDMGrad: MGDA's simplex weights pulled towards the mean gradient by ``lam``, found by
    ``n_iter`` steps of projected SGD with momentum on two independent mini-batches' ``J_1
    J_2^T``, warm-started from the previous step's ``w`` (uniform at first); the update is
    ``((w + lam / T) / (1 + lam))^T (J_1 + J_2) / 2``.

    Defaults as torchjd's ``SDMGradWeighting``: ``lr = 10`` (inner step size, on ``A`` divided
    by the squared mean gradient norm), ``momentum = 0.5``, ``n_iter = 20``, ``lam = 0.3`` (the
    authors' experiments; torchjd's ``lambda_``). Reported weights: ``(w + lam / T) / (1 + lam)``
    (sums to 1 over the present tasks: the update is on the scale of the mean gradient).
    Deviations: no preference vector (``w~`` is the mean, torchjd's default, over the present
    tasks); the update uses the two batches' mean gradient (the engine's two-batch step), not
    the gradient of a third batch ``zeta`` as in the paper's Algorithm 1 (and torchjd's
    example). Masked tasks: see ``SimplexPairAggregator``; ``w~`` is then
    uniform over the present tasks, as for the method built for them alone.
    """

    name = "sdmgrad"
    summary = (
        "Projected SGD on two batches' J1 J2^T for MGDA weights pulled to the mean (Xiao 2023)."
    )
    reference = (
        "P. Xiao, H. Ban, K. Ji, NeurIPS 2023, arXiv:2305.18409; "
        "code: torchjd 0.18 SDMGradWeighting"
    )
    Hyperparameters = SDMGradHyperparameters
    STATE_KEY = "w"

    def simplex_step(self, cross: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        return sdmgrad_step(
            cross, start, lr=hp.lr, momentum=hp.momentum, n_iter=hp.n_iter, lam=hp.lam
        )
