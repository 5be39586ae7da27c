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
READABLE = ("synthetic", "nih", "chexpert", "chestmnist")

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


def _chestmnist(data: dict[str, Any]) -> dict[str, LabeledImages]:
    """ChestMNIST from ``data.root``: the .npz file, or a folder holding one per size (the one
    of ``data.image_size`` when present; the model input is resized on the device anyway)."""
    from deepchest.data.chestmnist import FILE_NAMES, read_chestmnist

    root = Path(data["root"])
    size = data["image_size"]
    if not root.is_dir():
        return read_chestmnist(root)
    if (root / FILE_NAMES.get(size, "")).is_file():
        return read_chestmnist(root, image_size=size)
    present = [name for name in FILE_NAMES.values() if (root / name).is_file()]
    if len(present) > 1:
        raise DatasetError(
            f"data.root: {root} holds {', '.join(present)} and none of data.image_size {size} "
            "px; set data.root to the file to read (the images are resized to "
            "data.image_size on the training device)"
        )
    return read_chestmnist(root)


def _prepared(data: dict[str, Any], *, verify: bool = False) -> dict[str, LabeledImages]:
    from deepchest.data.packed import load_packed

    splits, info = load_packed(data["prepared"], verify=verify)
    if info.dataset != data["dataset"]:
        raise DatasetError(
            f"data.prepared: {data['prepared']} holds data set {info.dataset!r}, not "
            f"{data['dataset']!r}"
        )
    for split, n in splits.items():
        if len(n) == 0:
            raise DatasetError(f"data.prepared: {data['prepared']} has no {split} images")
    return splits


def check_source(data: dict[str, Any]) -> None:
    """Raise ``DatasetError`` unless the data set that ``data`` (the experiment file's ``data``
    section) names can be read: the prepared folder matches its manifest, the .npz is sound.
    Cheap: the images are memory-mapped or, for ChestMNIST, read once."""
    dataset = data["dataset"]
    if dataset == "synthetic":
        return
    if dataset not in READABLE:
        raise DatasetError(f"data.dataset: {dataset!r} is not readable; readable: {READABLE}")
    _select_tasks(_chestmnist(data) if dataset == "chestmnist" else _prepared(data), data["tasks"])


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
    elif dataset == "chestmnist":
        splits = _chestmnist(data)
    elif dataset in READABLE:
        splits = _prepared(data)
    else:
        raise DatasetError(f"data.dataset: {dataset!r} is not readable; readable: {READABLE}")
    return _select_tasks(splits, data["tasks"])
