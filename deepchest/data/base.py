"""The one in-memory form every data source produces: uint8 images, float labels, a mask."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import lazy_loader

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")


@dataclass(frozen=True)
class LabeledImages:
    """``images`` uint8 ``[N, C, H, W]``; ``labels`` float32 ``[N, T]`` in {0, 1};
    ``mask`` bool ``[N, T]``, False where a label is unknown (left out of loss and metrics)."""

    images: Tensor
    labels: Tensor
    mask: Tensor
    task_names: tuple[str, ...]

    def __post_init__(self) -> None:
        n, t = self.labels.shape
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.images.shape[0] != n or self.mask.shape != (n, t) or len(self.task_names) != t:
            raise ValueError("images, labels, mask and task_names disagree in size")

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def num_tasks(self) -> int:
        return self.labels.shape[1]

    def subset(self, index: Tensor) -> LabeledImages:
        return LabeledImages(
            self.images[index], self.labels[index], self.mask[index], self.task_names
        )
