"""Data sources. Each yields a dict of ``LabeledImages`` splits (``train``, ``val``, ``test``).

``load_splits`` is the one entry point the training loop calls; ``to_model_input`` is the one
place uint8 images become model input, so training, evaluation and prediction agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lazy_loader

from deepchest.data.base import LabeledImages

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

__all__ = [
    "READABLE",
    "DatasetError",
    "LabeledImages",
    "check_source",
    "check_tasks",
    "default_cache_dir",
    "load_splits",
    "to_model_input",
]

# the data sets this version reads
READABLE = ("synthetic", "nih", "chexpert", "chestmnist")

# uint8 / 255 is mapped to roughly zero mean, unit spread for grey radiographs
_MEAN, _STD = 0.5, 0.25


class DatasetError(ValueError):
    """A data set that cannot be read; the message is one line naming the path or key."""


def default_cache_dir() -> Path:
    """This machine's cache folder for data (``data.cache_dir`` when unset):
    ``$XDG_CACHE_HOME/deepchest-harness``, else ``~/.cache/deepchest-harness``. It holds the
    prepared data sets staged from object storage (``prepared/``) and the records of verified
    copies in read-only folders (``verified/``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepchest-harness"


def to_model_input(images: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> normalised float ``[B, C, H, W]`` (``dtype``, float32 when
    None) on the images' device."""
    return (images.to(torch.float32 if dtype is None else dtype) / 255.0 - _MEAN) / _STD


def _select_tasks(splits: dict[str, LabeledImages], tasks: Any) -> dict[str, LabeledImages]:
    if tasks in (None, "all"):
        return splits
    names = next(iter(splits.values())).task_names
    check_tasks(names, tasks)
    index = torch.tensor([names.index(t) for t in tasks])
    return {
        split: LabeledImages(d.images, d.labels[:, index], d.mask[:, index], tuple(tasks))
        for split, d in splits.items()
    }


def _chestmnist_choice(data: dict[str, Any]) -> tuple[Path, int | None]:
    """ChestMNIST from ``data.root``: the .npz file, or a folder holding one per size (the one
    of ``data.image_size`` when present; the model input is resized on the device anyway).
    Returns the root and the image size to ask the reader for."""
    from deepchest.data.chestmnist import FILE_NAMES

    root = Path(data["root"])
    size = data["image_size"]
    if not root.is_dir():
        return root, None
    if (root / FILE_NAMES.get(size, "")).is_file():
        return root, size
    present = [name for name in FILE_NAMES.values() if (root / name).is_file()]
    if len(present) > 1:
        raise DatasetError(
            f"data.root: {root} holds {', '.join(present)} and none of data.image_size {size} "
            "px; set data.root to the file to read (the images are resized to "
            "data.image_size on the training device)"
        )
    return root, None


def _chestmnist(data: dict[str, Any]) -> dict[str, LabeledImages]:
    from deepchest.data.chestmnist import read_chestmnist

    root, size = _chestmnist_choice(data)
    return read_chestmnist(root, image_size=size)


def _prepared(data: dict[str, Any], *, verify: bool = False) -> dict[str, LabeledImages]:
    from deepchest.data.packed import load_packed

    splits, info = load_packed(data["prepared"], verify=verify, cache_dir=data.get("cache_dir"))
    if info.dataset != data["dataset"]:
        raise DatasetError(
            f"data.prepared: {data['prepared']} holds data set {info.dataset!r}, not "
            f"{data['dataset']!r}"
        )
    for split, n in splits.items():
        if len(n) == 0:
            raise DatasetError(f"data.prepared: {data['prepared']} has no {split} images")
    return splits


def _keyed(key: str, exc: DatasetError) -> DatasetError:
    """The error with the experiment file's key in front, unless it names a key already."""
    message = str(exc)
    return exc if message.startswith("data.") else DatasetError(f"{key}: {message}")


def check_source(data: dict[str, Any]) -> dict[str, int]:
    """The number of images of each split (``train``, ``val``, ``test``) of the data set
    that ``data`` (the experiment file's ``data`` section) names, after the checks that
    ``load_splits`` makes: the prepared folder matches its manifest and the data set, the
    .npz holds well-formed arrays, the tasks exist. Cheap, for pre-flight: a prepared folder's
    manifest and index are read and its images only mapped; of a ChestMNIST .npz, the images'
    headers and the labels. Raises ``DatasetError`` (one line, naming the key and the file);
    an empty split is not an error here (the caller says why it needs one)."""
    dataset = data["dataset"]
    if dataset == "synthetic":
        from deepchest.data.synthetic import split_sizes

        sizes = split_sizes(data["num_samples"], data["val_fraction"], data["test_fraction"])
        return dict(zip(("train", "val", "test"), sizes, strict=True))
    if dataset == "chestmnist":
        from deepchest.data.chestmnist import chestmnist_split_sizes
        from deepchest.findings import FINDINGS

        try:
            root, size = _chestmnist_choice(data)
            counts = chestmnist_split_sizes(root, image_size=size)
        except DatasetError as exc:
            raise _keyed("data.root", exc) from None
        check_tasks(FINDINGS, data["tasks"])
        return counts
    if dataset not in READABLE:
        raise DatasetError(f"data.dataset: {dataset!r} is not readable; readable: {READABLE}")
    from deepchest.data.packed import inspect_packed

    try:
        # cheap: a copy with another modification time is verified by the trials, not here
        info = inspect_packed(data["prepared"], cache_dir=data.get("cache_dir"), check_copy=False)
    except DatasetError as exc:
        raise _keyed("data.prepared", exc) from None
    if info.dataset != dataset:
        raise DatasetError(
            f"data.prepared: {data['prepared']} holds data set {info.dataset!r}, not {dataset!r}"
        )
    check_tasks(info.task_names, data["tasks"])
    return dict(info.counts)


def check_tasks(names: tuple[str, ...], tasks: Any) -> None:
    """Raise ``DatasetError`` (one line) when ``tasks`` (``data.tasks``: a list, ``all`` or
    None) names a task that is not among ``names``."""
    missing = [t for t in tasks if t not in names] if tasks not in (None, "all") else []
    if missing:
        raise DatasetError(
            f"data.tasks: unknown task {missing[0]!r}; available: {', '.join(names)}"
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
    elif dataset == "chestmnist":
        splits = _chestmnist(data)
    elif dataset in READABLE:
        splits = _prepared(data)
    else:
        raise DatasetError(f"data.dataset: {dataset!r} is not readable; readable: {READABLE}")
    return _select_tasks(splits, data["tasks"])
