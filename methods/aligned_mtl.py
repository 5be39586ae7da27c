"""Aligned-MTL: aligning the principal components of the gradient system (Senushkin et al.,
CVPR 2023).

*Independent Component Alignment for Multi-Task Learning*, D. Senushkin, N. Patakin,
A. Kuznetsov, A. Konushin, CVPR 2023, arXiv:2305.19000 (Algorithm 1; rank cut-off, ``scale_mode``
and the sum of the aligned gradients from the authors' code, ``ProcrustesSolver`` and
``AlignedMTLBalancer`` in ``code/optim/aligned`` of github.com/SamsungLabs/MTL). Reference
implementation used for the tests: ``torchjd.aggregation.AlignedMTL`` (torchjd 0.18.0, which
takes the MEAN of the aligned gradients: its update is ours divided by ``T``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

from methods.base import check_choice, check_number, set_field
from methods.gradient import GradientAggregator, combine

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

SCALE_MODES: tuple[str, ...] = ("min", "median", "rmse")


def balance_transformation(
    g: Tensor, *, scale_mode: str = "min", rank_rtol: float = 0.0, dtype_eps: float = 2.0**-52
) -> Tensor:
    """``B = sqrt(lambda_s) V Lambda^-1/2 V^T`` (Tensor[T, T]) from ``G = V Lambda V^T``.

    The aligned gradients ``J^ = B J`` (``B`` symmetric) have the Gramian
    ``B G B = lambda_s V V^T``: orthogonal, all of norm ``sqrt(lambda_s)``, spanning the same space
    as the rows of ``J``. Only the eigenvalues ``lambda_i > tol`` are kept (rank deficiency),
    ``tol = lambda_max * max(rank_rtol, T * dtype_eps)``; ``dtype_eps`` is the machine epsilon of
    the dtype the Gramian was computed in (the authors' and torchjd's cut-off with
    ``rank_rtol = 0``). ``lambda_s`` (``scale_mode``): the smallest kept eigenvalue (``min``, the
    paper), their median (``median``, ``torch.median``: the lower middle one) or their mean
    (``rmse``). No eigenvalue kept (``J = 0``): ``B = I``.
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {', '.join(SCALE_MODES)}")
    num_tasks = g.shape[0]
    # the upper triangle, as torchjd (G = J J^T is symmetric up to round-off only)
    eigenvalues, vectors = torch.linalg.eigh(g, UPLO="U")
    tol = float(eigenvalues.max()) * max(rank_rtol, num_tasks * dtype_eps)
    keep = eigenvalues > tol
    if not bool(keep.any()):
        return torch.eye(num_tasks, dtype=g.dtype)
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
    scale = {
        "min": eigenvalues.min(),
        "median": torch.median(eigenvalues),
        "rmse": eigenvalues.mean(),
    }[scale_mode]
    return scale.sqrt() * (vectors * eigenvalues.rsqrt()) @ vectors.T


def aligned_mtl_weights(
    g: Tensor, *, scale_mode: str = "min", rank_rtol: float = 0.0, dtype_eps: float = 2.0**-52
) -> Tensor:
    """``w = B 1``: the update ``w^T J = sum_t g^_t`` is the sum of the aligned gradients (the
    authors' code, equal task preferences; torchjd uses ``B 1/T``)."""
    b = balance_transformation(g, scale_mode=scale_mode, rank_rtol=rank_rtol, dtype_eps=dtype_eps)
    return b.sum(dim=1)


@dataclass(frozen=True)
class AlignedMTLHyperparameters:
    scale_mode: str = "min"
    rank_rtol: float = 0.0

    def __post_init__(self) -> None:
        set_field(self, "scale_mode", check_choice("scale_mode", self.scale_mode, SCALE_MODES))
        set_field(self, "rank_rtol", check_number("rank_rtol", self.rank_rtol, ge=0, le=1))


class AlignedMTL(GradientAggregator):
    """Aligned-MTL: replace the task gradients by the orthogonal, equal-norm ``J^ = B J`` closest
    to them (``B = sqrt(lambda_s) G^-1/2`` on the range of ``G``) and sum them, ``d = (B 1)^T J``.

    ``scale_mode``: the common norm ``sqrt(lambda_s)`` of the aligned gradients is that of the
    smallest singular value of ``J`` (``min``, default), the median one or the root mean square
    (``rmse``). ``rank_rtol``: eigenvalues of ``G`` below ``max(rank_rtol, T eps) lambda_max``
    are dropped (``eps`` of ``J``'s dtype). Reported weights: ``B 1``.
    """

    name = "aligned_mtl"
    reference = "Senushkin et al., CVPR 2023, arXiv:2305.19000; code: SamsungLabs/MTL"
    summary = "Sum of the orthogonalised, equal-norm task gradients (Senushkin 2023)."
    Hyperparameters = AlignedMTLHyperparameters

    def compute(self, jacobian: Tensor, losses: Tensor, gramian: Tensor) -> tuple[Tensor, Tensor]:
        hp = self.hp
        weights = aligned_mtl_weights(
            gramian,
            scale_mode=hp.scale_mode,
            rank_rtol=hp.rank_rtol,
            dtype_eps=torch.finfo(jacobian.dtype).eps,
        )
        return combine(weights, jacobian), weights
