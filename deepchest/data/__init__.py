"""Data sources. Each yields a dict of ``LabeledImages`` splits (``train``, ``val``, ``test``).

``load_splits`` is the one entry point the training loop calls; ``to_model_input`` is the one
place uint8 images become model input, so training, evaluation and prediction agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepchest.data.base import LabeledImages

__all__ = [
    "READABLE",
    "DatasetError",
    "LabeledImages",
    "check_source",
    "load_splits",
    "to_model_input",
]

# the data sets this version reads
READABLE = ("synthetic",)

# uint8 / 255 is mapped to roughly zero mean, unit spread for grey radiographs
_MEAN, _STD = 0.5, 0.25


class DatasetError(ValueError):
    """A data set that cannot be read; the message is one line naming the path or key."""


def to_model_input(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> normalised float ``[B, C, H, W]`` on the images' device."""
    return (images.to(dtype) / 255.0 - _MEAN) / _STD


def _select_tasks(splits: dict[str, LabeledImages], tasks: Any) -> dict[str, LabeledImages]:
    if tasks in (None, "all"):
        return splits
    names = next(iter(splits.values())).task_names
    missing = [t for t in tasks if t not in names]
    if missing:
        raise DatasetError(
            f"data.tasks: unknown task {missing[0]!r}; available: {', '.join(names)}"
        )
    index = torch.tensor([names.index(t) for t in tasks])
    return {
        split: LabeledImages(d.images, d.labels[:, index], d.mask[:, index], tuple(tasks))
        for split, d in splits.items()
    }


def check_source(dataset: str, root: str | None) -> None:
    """Raise ``DatasetError`` unless ``dataset`` can be read from ``root`` by this version."""
    if dataset == "synthetic":
        return
    if root is None or not Path(root).exists():
        raise DatasetError(f"data.root: {root} does not exist (data set {dataset!r})")
    if dataset not in READABLE:
        raise DatasetError(
            f"data.dataset: reading {dataset!r} from files is not supported by this version; "
            f"readable: {', '.join(READABLE)} (the real-data loaders are planned)"
        )


def load_splits(data: dict[str, Any]) -> dict[str, LabeledImages]:
    """Build the splits that ``data`` (the experiment file's ``data`` section) describes."""
    dataset = data["dataset"]
    if dataset == "synthetic":
        from deepchest.data.synthetic import synthetic_splits

        splits = synthetic_splits(
            data["num_samples"],
            data["image_size"],
            seed=data["seed"],
            val_fraction=data["val_fraction"],
            test_fraction=data["test_fraction"],
            prevalence_floor=data["prevalence_floor"],
            noise_tasks=data["noise_tasks"],
            label_noise=data["label_noise"],
        )
        return _select_tasks(splits, data["tasks"])
    check_source(dataset, data.get("root"))
    raise AssertionError(f"check_source let {dataset!r} through")  # pragma: no cover
