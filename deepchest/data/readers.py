"""One entry point for the readers of real data sets, and each data set's task names.

``read_index("nih", root, ...)`` -> :func:`deepchest.data.nih.read_nih`;
``read_index("chexpert", root, ...)`` -> :func:`deepchest.data.chexpert.read_chexpert`.
Both return an :class:`~deepchest.data.index.ImageIndex` (file paths, patients, splits,
labels) and never open an image. ChestMNIST is already decoded arrays, so it has no index:
:func:`deepchest.data.chestmnist.read_chestmnist` returns ``LabeledImages`` splits directly.
The expected layouts and official sources are in each reader's module docstring.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

from deepchest.data import DatasetError
from deepchest.data.chexpert import CHEXPERT_FINDINGS, read_chexpert
from deepchest.data.index import ImageIndex
from deepchest.data.nih import read_nih
from deepchest.findings import FINDINGS

__all__ = ["INDEX_READERS", "TASK_NAMES", "read_index"]

TASK_NAMES: dict[str, tuple[str, ...]] = {
    "nih": FINDINGS,
    "chexpert": CHEXPERT_FINDINGS,
    "chestmnist": FINDINGS,
}

INDEX_READERS: dict[str, Callable[..., ImageIndex]] = {
    "nih": read_nih,
    "chexpert": read_chexpert,
}


def read_index(dataset: str, root: str | os.PathLike, **options: Any) -> ImageIndex:
    """The ``ImageIndex`` of ``dataset`` (``"nih"`` or ``"chexpert"``) under ``root``;
    ``options`` go to the reader (``val_fraction``, ``seed``; for CheXpert also
    ``uncertain``, ``views``). ``ValueError`` for another data set; ``DatasetError`` (a
    ``ValueError``) for an option the reader does not take, or for bad data."""
    reader = INDEX_READERS.get(dataset)
    if reader is None:
        hint = (
            "; ChestMNIST is arrays, read it with deepchest.data.chestmnist.read_chestmnist"
            if dataset == "chestmnist"
            else ""
        )
        raise ValueError(
            f"no image-index reader for data set {dataset!r}; "
            f"readers: {', '.join(INDEX_READERS)}{hint}"
        )
    accepted = [
        name
        for name, p in inspect.signature(reader).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(
            f"{dataset}: unknown option {unknown[0]!r}; options: {', '.join(accepted)}"
        )
    return reader(root, **options)
