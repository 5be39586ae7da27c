"""Reader for CheXpert (Stanford ML Group's chest radiograph data set, Irvin et al., AAAI 2019),
in its two published forms: ``CheXpert-v1.0`` (original resolution) and
``CheXpert-v1.0-small`` (downsampled), as distributed by the Stanford ML Group / Stanford AIMI
after registration. Nothing is downloaded here: the reader only reads what sits under ``root``.

Expected layout (``root`` is the data set folder, the one holding the two CSVs)::

    CheXpert-v1.0-small/                    <- root (or CheXpert-v1.0/, or any other name)
      train.csv
      valid.csv
      train/patient00001/study1/view1_frontal.jpg
      ...
      valid/patient64541/study1/view1_frontal.jpg
      ...

The CSVs have the published columns ``Path``, ``Sex``, ``Age``, ``Frontal/Lateral``,
``AP/PA`` and the 14 observations of :data:`CHEXPERT_FINDINGS`. ``Path`` is relative to the
parent of ``root``, as published (``CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg``); its first component is taken to be the data set folder whatever its name,
so a renamed ``root`` still works (a ``Path`` that starts at ``train/`` or ``valid/`` is taken
relative to ``root``). The patient id is the ``patientNNNNN`` component of ``Path``. Extra
columns are ignored; ``Sex``, ``Age`` and ``AP/PA`` are not needed, nor ``Frontal/Lateral``
with ``views="all"``.

Labels: ``1`` positive; ``0`` and blank negative (blank = not mentioned in the report);
``-1`` uncertain, handled by the ``uncertain`` policy: ``"ignore"`` (masked out: label 0, mask
False), ``"zeros"`` (negative) or ``"ones"`` (positive). Every other label is known (mask True).
Values may be written ``1``/``1.0`` etc.; anything else is an error naming the file, line and
column. ``views``: ``"frontal"`` keeps the rows whose ``Frontal/Lateral`` is ``Frontal``;
``"all"`` keeps every row.

Splits: ``train`` and ``val`` come from ``train.csv``, divided by patient: a seeded,
deterministic ``val_fraction`` of its patients (rounded to the nearest whole patient; drawn
from all of ``train.csv``'s patients before the ``views`` filter, so the division does not
depend on ``views``) goes to ``val``. ``test`` is the official validation set ``valid.csv``
(200 studies, labelled by radiologists): the official CheXpert test set is not public.
Patients of ``valid.csv`` must not occur in ``train.csv`` (checked).

Image files are neither opened nor checked here; the packer (``harness data prepare``)
reports missing files with a count and fails above its threshold.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from deepchest.data import DatasetError
from deepchest.data.index import ImageIndex
from deepchest.data.nih import (
    check_root,
    check_seed,
    check_val_fraction,
    read_csv_columns,
    split_train_val,
)

__all__ = ["CHEXPERT_FINDINGS", "CSV_FILES", "UNCERTAIN_POLICIES", "VIEWS", "read_chexpert"]

# the 14 observations, in the published column order of train.csv / valid.csv
CHEXPERT_FINDINGS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

CSV_FILES = {"train": "train.csv", "test": "valid.csv"}
UNCERTAIN_POLICIES = ("ignore", "zeros", "ones")
VIEWS = ("frontal", "all")

_FOLDERS_AT_ROOT = ("train", "valid", "test")
# spelling -> value (blank = negative); anything else goes through float()
_VALUES = {"": 0, "1.0": 1, "0.0": 0, "-1.0": -1, "1": 1, "0": 0, "-1": -1}


def _label_value(text: str, where: str) -> int:
    """1, 0 or -1 (blank = 0); ``DatasetError`` naming ``where`` for anything else."""
    text = text.strip()
    if text in _VALUES:
        return _VALUES[text]
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value in (1.0, 0.0, -1.0):
        return int(value)
    raise DatasetError(f"{where}: label {text!r} is not 1, 0, -1 or blank")


def _image_path(base: str, text: str, path: Path, line: int) -> tuple[str, str]:
    """(absolute image path, patient id) for the ``Path`` cell on ``line`` of ``path``."""
    parts = text.strip().replace("\\", "/").split("/")
    inside = parts if parts[0] in _FOLDERS_AT_ROOT else parts[1:]
    if not parts[0] or not inside or "" in inside or ".." in parts:
        raise DatasetError(f"{path}: line {line}: 'Path' {text!r} is not a relative image path")
    patient = next((p for p in inside if p.startswith("patient") and p[7:].isdigit()), None)
    if patient is None:
        raise DatasetError(f"{path}: line {line}: 'Path' {text!r} has no patientNNNNN folder")
    return base + os.sep + os.sep.join(inside), patient


def _read_csv(
    base: Path, file: str, uncertain: str, views: str
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, list[bool]]:
    """paths, patients, labels, mask and a keep-flag (the views filter) for every row."""
    path = base / file
    if not path.is_file():
        raise DatasetError(
            f"{base}: no {file}; looked for {' and '.join(CSV_FILES.values())} in the "
            "CheXpert folder (the one that holds train/ and valid/)"
        )
    required = ["Path", *(["Frontal/Lateral"] if views == "frontal" else []), *CHEXPERT_FINDINGS]
    columns, rows = read_csv_columns(path, required)
    c_path = columns["Path"]
    c_view = columns.get("Frontal/Lateral")
    c_labels = [columns[name] for name in CHEXPERT_FINDINGS]
    n, t = len(rows), len(CHEXPERT_FINDINGS)
    codes = np.zeros((n, t), dtype=np.int8)  # 1, 0 (or blank), -1
    paths: list[str] = []
    patients: list[str] = []
    keep: list[bool] = []
    for i, (line, row) in enumerate(rows):
        image, patient = _image_path(str(base), row[c_path], path, line)
        paths.append(image)
        patients.append(patient)
        if c_view is None:
            keep.append(True)
        else:
            view = row[c_view].strip()
            if view not in ("Frontal", "Lateral"):
                raise DatasetError(
                    f"{path}: line {line}, column 'Frontal/Lateral': {view!r} is not "
                    "Frontal or Lateral"
                )
            keep.append(view == "Frontal")
        values = [_VALUES.get(row[c]) for c in c_labels]
        if None in values:  # another spelling, or a bad value
            values = [
                _label_value(row[c], f"{path}: line {line}, column {name!r}")
                for c, name in zip(c_labels, CHEXPERT_FINDINGS, strict=True)
            ]
        codes[i] = values
    uncertain_entries = codes == -1
    labels = (codes == 1) | (uncertain_entries & (uncertain == "ones"))
    mask = ~(uncertain_entries & (uncertain == "ignore"))
    return paths, patients, labels.astype(np.float32), mask, keep


def read_chexpert(
    root: str | os.PathLike,
    *,
    uncertain: str = "ignore",
    views: str = "frontal",
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageIndex:
    """Index CheXpert-v1.0 or CheXpert-v1.0-small under ``root`` (layout in the module
    docstring).

    ``uncertain``: ``"ignore"`` (mask False), ``"zeros"`` or ``"ones"`` for ``-1`` labels.
    ``views``: ``"frontal"`` or ``"all"``. ``train``/``val``: ``train.csv`` divided by patient
    (a seeded ``val_fraction`` of its patients to ``val``); ``test``: ``valid.csv`` (the
    official test set is not public). Rows keep the CSVs' order, train.csv first. Every problem
    is a one-line ``DatasetError`` naming the file (and line and column) and the problem.
    """
    if uncertain not in UNCERTAIN_POLICIES:
        raise DatasetError(
            f"uncertain: must be one of {', '.join(UNCERTAIN_POLICIES)}; got {uncertain!r}"
        )
    if views not in VIEWS:
        raise DatasetError(f"views: must be one of {', '.join(VIEWS)}; got {views!r}")
    val_fraction = check_val_fraction(val_fraction)
    seed = check_seed(seed)
    base = check_root(root, "CheXpert")

    train = _read_csv(base, CSV_FILES["train"], uncertain, views)
    test = _read_csv(base, CSV_FILES["test"], uncertain, views)
    train_patients = set(train[1])
    shared = sorted(set(test[1]) & train_patients)
    if shared:
        raise DatasetError(
            f"{base / CSV_FILES['test']}: patient {shared[0]} is also in {CSV_FILES['train']} "
            f"({len(shared)} shared patients in all); test and training must not share patients"
        )
    val_patients = split_train_val(train_patients, val_fraction, seed)

    paths: list[str] = []
    patients: list[str] = []
    splits: list[str] = []
    labels: list[np.ndarray] = []
    mask: list[np.ndarray] = []
    for name, (p, pat, lab, msk, keep) in (("train", train), ("test", test)):
        rows = np.flatnonzero(np.asarray(keep, dtype=bool))
        paths.extend(p[i] for i in rows)
        patients.extend(pat[i] for i in rows)
        if name == "test":
            splits.extend("test" for _ in rows)
        else:
            splits.extend("val" if pat[i] in val_patients else "train" for i in rows)
        labels.append(lab[rows])
        mask.append(msk[rows])
    return ImageIndex(
        paths=tuple(paths),
        patients=tuple(patients),
        splits=tuple(splits),
        labels=np.concatenate(labels),
        mask=np.concatenate(mask),
        task_names=CHEXPERT_FINDINGS,
        dataset="chexpert",
        root=str(base),
    )
