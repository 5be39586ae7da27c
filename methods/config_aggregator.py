"""ConFIG: conflict-free training (Liu, Chen & Thuerey, 2024).

*ConFIG: Towards Conflict-free Training of Physics Informed Neural Networks*, Q. Liu, M. Chu,
N. Thuerey, ICLR 2025, arXiv:2408.11104 (eq. 2; the authors' code: github.com/tum-pbs/ConFIG,
``conflictfree``). Reference implementation used for the tests: ``torchjd.aggregation.ConFIG``
(torchjd 0.18.0, default preference vector: ones).

The module is ``config_aggregator``, not ``config``: the project's configuration module is
``harness.config`` (and ``tests/test_config.py`` tests it); the method's name is ``config``.

With the unit task gradients ``u_t = g_t / ||g_t||`` (rows of ``U``; a zero row stays 0)::

    b  = U^+ 1                      (the direction with equal cosine to every task gradient)
    d  = (sum_t g_t . b / ||b||) b / ||b||

i.e. ``d`` points along the conflict-free direction ``b`` and its length is the sum of the
projections of the task gradients on it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

from methods.gradient import GradientAggregator, combine

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


def config_weights(g: Tensor, *, rank_rtol: float) -> Tensor:
    """The weights ``w`` (Tensor[T]) with ``d = w^T J`` the ConFIG update, from ``G = J J^T``.

    With ``D = diag(1 / ||g_t||)`` (0 for a zero row), ``U = D J`` and its Gramian, the
    gradients' correlation matrix ``C = D G D``: ``U^+ = U^T (U U^T)^+``, so
    ``b = U^+ 1 = J^T v`` with ``v = D C^+ 1``; ``||b||^2 = v^T G v`` and
    ``sum_t g_t . b = 1^T G v``, hence::

        w = (1^T G v / v^T G v) v

    This is exact: the same ``d`` as computing ``U^+`` from ``J``'s entries, except for the
    rank cut-off of the pseudo-inverse. Here ``C^+`` keeps the eigenvalues of ``C`` above
    ``rank_rtol`` times the largest (the caller passes ``10 T eps`` of ``J``'s dtype, the
    round-off of an eigenvalue of the Gramian; the others are 0 up to that round-off); torch's
    ``pinv(U)`` (torchjd) keeps the singular values of ``U`` above ``max(T, n) eps`` times the
    largest. They differ only when ``U`` has singular values between the two cut-offs
    (``sqrt(rank_rtol)`` and ``max(T, n) eps``, relative), i.e. almost linearly dependent unit
    gradients. ``b = 0`` (a zero ``J``, or ``1`` orthogonal to the range of ``U``, e.g. two
    opposite gradients) gives ``w = 0`` (``d = 0``, as torchjd); ``1`` counts as orthogonal to
    it when its projection there has a squared norm ``<= rank_rtol T`` (round-off: otherwise
    ``d`` would be ``||J||``-sized along a direction made of round-off).
    """
    num_tasks = g.shape[0]
    weights = torch.zeros(num_tasks, dtype=g.dtype)
    norms2 = g.diagonal()
    alive = norms2 > 0.0
    if not bool(alive.any()):
        return weights
    inv = norms2[alive].rsqrt()
    c = inv[:, None] * g[alive][:, alive] * inv[None, :]
    eigenvalues, vectors = torch.linalg.eigh(c)
    keep = eigenvalues > rank_rtol * eigenvalues[-1]
    kept = vectors[:, keep]
    along = kept.T @ torch.ones_like(inv)  # 1 in the eigenbasis of the range of U
    if not float(along @ along) > rank_rtol * inv.shape[0]:
        return weights  # 1 is orthogonal to the range of U (up to round-off): b = 0
    v = torch.zeros(num_tasks, dtype=g.dtype)
    v[alive] = inv * (kept @ (along / eigenvalues[keep]))
    gv = g @ v
    norm2 = float(v @ gv)
    if not norm2 > 0.0:
        return weights
    return (float(gv.sum()) / norm2) * v


class ConFIG(GradientAggregator):
    """ConFIG: the update along ``b = U^+ 1`` (``U``: the unit task gradients), the direction
    with the same cosine to every task gradient (the least-squares one when they are linearly
    dependent), with length ``sum_t g_t . b / ||b||``.

    No hyperparameters (torchjd's ``pref_vector`` is fixed to its default, ones). Reported
    weights: the effective ``w`` with ``d = w^T J`` (``config_weights``; not normalised, may be
    negative). Computed from the Gramian only (exact, see ``config_weights``; the pseudo-inverse
    cut-off is on the eigenvalues of the correlation matrix instead of the singular values of
    ``U``). A task with a zero gradient gets weight 0 and does not change the others (as
    torchjd's zero row of ``U``).
    """

    name = "config"
    summary = "Update along the direction with equal cosine to every task gradient (Liu 2024)."
    reference = "Q. Liu, M. Chu, N. Thuerey, ICLR 2025, arXiv:2408.11104; code: torchjd 0.18 ConFIG"

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        eps = torch.finfo(jacobian.dtype).eps
        weights = config_weights(gramian, rank_rtol=10.0 * gramian.shape[0] * eps)
        return combine(weights, jacobian), weights
