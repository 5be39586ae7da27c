"""Reader for ChestMNIST, the chest X-ray member of MedMNIST v2 (Yang et al., Scientific Data
2023), published on Zenodo as ``.npz`` files (the MedMNIST v2 record; the ``medmnist`` Python
package fetches the same files). ChestMNIST is NIH ChestX-ray14 resized to 28, 64, 128 or 224
pixels, with MedMNIST's patient-disjoint train/val/test split and the 14 NIH labels in NIH
order. Nothing is downloaded here: the reader only reads the file it is given.

Expected layout: ``root`` is either one ``.npz`` file, or a folder holding one or more of::

    chestmnist.npz        28 x 28
    chestmnist_64.npz     64 x 64
    chestmnist_128.npz    128 x 128
    chestmnist_224.npz    224 x 224

(``image_size`` picks among them; with ``image_size=None`` the folder must hold exactly one).
Each file holds the arrays ``train_images``, ``val_images``, ``test_images`` (uint8
``[N, S, S]``, one grey channel) and ``train_labels``, ``val_labels``, ``test_labels``
(integer ``[N, 14]``, values 0/1, columns in :data:`deepchest.findings.FINDINGS` order).
Other arrays in the file are ignored.

Unlike the other readers this one returns the images themselves: the arrays are already
decoded and small enough to load (``.npz`` members cannot be memory-mapped).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import lazy_loader
import numpy as np

from deepchest.data import DatasetError
from deepchest.data.base import LabeledImages
from deepchest.findings import FINDINGS

if TYPE_CHECKING:
    import torch
else:  # pre-flight (chestmnist_split_sizes) runs without torch
    torch = lazy_loader.load("torch")

__all__ = ["FILE_NAMES", "SPLITS", "chestmnist_split_sizes", "read_chestmnist"]

# image size -> published file name
FILE_NAMES = {
    28: "chestmnist.npz",
    64: "chestmnist_64.npz",
    128: "chestmnist_128.npz",
    224: "chestmnist_224.npz",
}
SPLITS = ("train", "val", "test")


def _pick_file(root: Path, image_size: int | None) -> Path:
    if not root.exists():
        raise DatasetError(f"{root}: ChestMNIST file or folder does not exist")
    if root.is_file():
        return root
    if image_size is not None:
        path = root / FILE_NAMES[image_size]
        if not path.is_file():
            present = [n for n in FILE_NAMES.values() if (root / n).is_file()]
            raise DatasetError(
                f"{root}: no {FILE_NAMES[image_size]} for image_size {image_size}"
                + (f" (present: {', '.join(present)})" if present else "")
            )
        return path
    present = [n for n in FILE_NAMES.values() if (root / n).is_file()]
    if not present:
        raise DatasetError(
            f"{root}: no ChestMNIST file; looked for {', '.join(FILE_NAMES.values())}"
        )
    if len(present) > 1:
        raise DatasetError(
            f"{root}: several ChestMNIST files ({', '.join(present)}); choose one with image_size"
        )
    return root / present[0]


def _check_split(
    path: Path, split: str, shape: tuple[int, ...], dtype: np.dtype, labels: np.ndarray
) -> int:
    """Raise unless the split's arrays (the images' shape and dtype, the labels) are
    well-formed; return the image size."""
    key_i, key_l = f"{split}_images", f"{split}_labels"
    if dtype != np.uint8:
        raise DatasetError(f"{path}: {key_i} must be uint8, got {dtype}")
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] not in FILE_NAMES:
        raise DatasetError(
            f"{path}: {key_i} must be [N, S, S] with S in {tuple(FILE_NAMES)}, got {list(shape)}"
        )
    if labels.dtype.kind not in "uib":
        raise DatasetError(f"{path}: {key_l} must be integer 0/1, got {labels.dtype}")
    if labels.ndim != 2 or labels.shape[1] != len(FINDINGS):
        raise DatasetError(
            f"{path}: {key_l} must be [N, {len(FINDINGS)}], got {list(labels.shape)}"
        )
    if labels.shape[0] != shape[0]:
        raise DatasetError(
            f"{path}: {key_l} has {labels.shape[0]} rows but {key_i} has {shape[0]} images"
        )
    bad = (labels != 0) & (labels != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DatasetError(
            f"{path}: {key_l}[{row}, {col}] is {labels[row, col]}; labels must be 0 or 1"
        )
    return int(shape[1])


def _check_sizes(path: Path, sizes: dict[str, int], image_size: int | None) -> None:
    if len(set(sizes.values())) > 1:
        raise DatasetError(
            f"{path}: splits disagree in image size "
            f"({', '.join(f'{s}_images {sizes[s]}' for s in SPLITS)})"
        )
    size = sizes["train"]
    if image_size is not None and size != image_size:
        raise DatasetError(f"{path}: images are {size} px, but image_size is {image_size}")


def _npz_file(root: str | os.PathLike, image_size: int | None) -> Path:
    if image_size is not None and (isinstance(image_size, bool) or image_size not in FILE_NAMES):
        raise DatasetError(
            f"image_size: ChestMNIST comes in {', '.join(map(str, FILE_NAMES))} pixels; "
            f"got {image_size!r}"
        )
    path = _pick_file(Path(os.path.abspath(os.fspath(root))), image_size)
    if not zipfile.is_zipfile(path):
        raise DatasetError(f"{path}: not a .npz file (not a zip archive of arrays)")
    return path


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_READ_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, zlib.error)


def _missing(path: Path, keys: set[str]) -> None:
    for split in SPLITS:
        for kind in ("images", "labels"):
            if f"{split}_{kind}" not in keys:
                raise DatasetError(
                    f"{path}: missing array {split}_{kind} "
                    f"(found: {', '.join(sorted(keys)) or 'none'})"
                )


def chestmnist_split_sizes(
    root: str | os.PathLike, *, image_size: int | None = None
) -> dict[str, int]:
    """The number of images of each split of the ChestMNIST file that ``read_chestmnist``
    would read, with the same one-line ``DatasetError`` checks, cheaply: the images' ``.npy``
    headers are read, not their pixels (only the small label arrays are read whole)."""
    path = _npz_file(root, image_size)
    sizes, counts = {}, {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {name.removesuffix(".npy"): name for name in archive.namelist()}
            _missing(path, set(members))
            for split in SPLITS:
                key = f"{split}_images"
                try:
                    with archive.open(members[key]) as f:
                        version = np.lib.format.read_magic(f)
                        if version == (1, 0):
                            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                        else:
                            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    key = f"{split}_labels"
                    with archive.open(members[key]) as f:
                        labels = np.lib.format.read_array(f, allow_pickle=False)
                except _READ_ERRORS as exc:
                    raise DatasetError(
                        f"{path}: array {key} cannot be read ({_reason(exc)})"
                    ) from None
                sizes[split] = _check_split(path, split, shape, dtype, labels)
                counts[split] = int(shape[0])
    except DatasetError:
        raise
    except _READ_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({_reason(exc)})") from None
    _check_sizes(path, sizes, image_size)
    return counts


def read_chestmnist(
    root: str | os.PathLike, *, image_size: int | None = None
) -> dict[str, LabeledImages]:
    """ChestMNIST's ``train``/``val``/``test`` splits from ``root`` (a ``.npz`` file, or a
    folder of the published files; layout in the module docstring).

    ``image_size`` (28, 64, 128 or 224) picks the file in a folder and, for a file, must match
    its images. Returns ``LabeledImages`` with images uint8 ``[N, 1, S, S]``, labels float32,
    mask all True and ``task_names`` = :data:`deepchest.findings.FINDINGS`. Every problem is a
    one-line ``DatasetError`` naming the file (and array) and the problem.
    """
    path = _npz_file(root, image_size)
    try:
        # mmap_mode applies to .npy files only; .npz members are read into memory
        with np.load(path, mmap_mode="r", allow_pickle=False) as archive:
            _missing(path, set(archive.files))
            arrays = {}
            for split in SPLITS:
                for kind in ("images", "labels"):
                    key = f"{split}_{kind}"
                    try:
                        arrays[key] = archive[key]
                    except _READ_ERRORS as exc:
                        raise DatasetError(
                            f"{path}: array {key} cannot be read ({_reason(exc)})"
                        ) from None
    except DatasetError:
        raise
    except _READ_ERRORS as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({_reason(exc)})") from None

    sizes = {}
    for split in SPLITS:
        images = arrays[f"{split}_images"]
        labels = arrays[f"{split}_labels"]
        sizes[split] = _check_split(path, split, images.shape, images.dtype, labels)
    _check_sizes(path, sizes, image_size)
    out = {}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        out[split] = LabeledImages(
            images=torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1),
            labels=torch.from_numpy(labels.astype(np.float32)),
            mask=torch.ones(labels.shape, dtype=torch.bool),
            task_names=FINDINGS,
        )
    return out
