"""Reader for NIH ChestX-ray14 (the NIH Clinical Center's chest X-ray data set, Wang et al.,
CVPR 2017), as published on the NIH Clinical Center's Box download page (the same files are
mirrored by the NIH on Kaggle as "NIH Chest X-rays"). Nothing is downloaded here: the reader
only reads what sits under ``root``.

Expected layout (``root`` is the folder that holds the label table)::

    root/
      Data_Entry_2017_v2020.csv   the label table (or Data_Entry_2017.csv; with both, v2020 wins)
      train_val_list.txt          official train+validation images, one file name a line
      test_list.txt               official test images, one file name a line
      images/00000001_000.png     the images, either all in one folder ...
      images_001/images/00000001_000.png   ... or as the official archives unpack:
      images_002/images/...       images_001/images/ ... images_012/images/
      ...

The images are found by scanning ``root`` once, recursively (hidden files and folders are
skipped; symbolic links are followed), for ``*.png`` files, so any folder structure works as
long as each file name occurs once; the same file name in two folders is an error naming both.

The label table needs the columns ``Image Index`` (file name), ``Finding Labels``
(pipe-separated findings, ``No Finding`` = all 14 negative; next to other findings it adds
nothing) and ``Patient ID``. Other columns
(``View Position``, ``Follow-up #``, ..., the unquoted ``OriginalImage[Width,Height]``
headers and the unnamed trailing column of some releases) are ignored. Finding names are
spelled as in the table (``Pleural_Thickening`` with an underscore); labels come out in
:data:`deepchest.findings.FINDINGS` order, and every label is known (mask all True).

Splits: ``test`` is ``test_list.txt``; ``train`` and ``val`` are ``train_val_list.txt``
divided by patient: a seeded, deterministic ``val_fraction`` of its patients (rounded to the
nearest whole patient) goes to ``val``, so no patient is in two splits. The official lists are
patient-disjoint; that is checked. Every image of the table must be in exactly one list and
every listed image must be in the table (otherwise a ``DatasetError`` names the list file and
the first offending name).

An image in the table whose file is not under ``root`` is kept, with the path where it would
be (``root/images/<Image Index>``); the packer (``harness data prepare``) reports missing files
with a count and fails above its threshold. Images are never opened here.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from deepchest.data import DatasetError
from deepchest.data.index import ImageIndex
from deepchest.findings import FINDINGS

__all__ = [
    "CSV_NAMES",
    "NO_FINDING",
    "SPLIT_FILES",
    "check_root",
    "check_seed",
    "check_val_fraction",
    "read_csv_columns",
    "read_nih",
    "split_train_val",
]

# looked for in this order: the first that exists is read
CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
SPLIT_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
NO_FINDING = "No Finding"
_COLUMNS = ("Image Index", "Finding Labels", "Patient ID")


def check_root(root: str | os.PathLike, dataset: str) -> Path:
    """``root`` as an absolute ``Path``; ``DatasetError`` unless it is an existing folder."""
    path = Path(os.path.abspath(os.fspath(root)))
    if not path.exists():
        raise DatasetError(f"{path}: {dataset} data set root does not exist")
    if not path.is_dir():
        raise DatasetError(f"{path}: {dataset} data set root is not a folder")
    return path


def check_val_fraction(val_fraction: float) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, int | float):
        raise DatasetError(f"val_fraction: must be a number in [0, 1), got {val_fraction!r}")
    if not math.isfinite(val_fraction):
        raise DatasetError(f"val_fraction: must be a finite number in [0, 1), got {val_fraction}")
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"val_fraction: must be in [0, 1), got {val_fraction}")
    return float(val_fraction)


MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> int:
    """The seed of the train/val split: an integer 0 .. 2**32 - 1, like the experiment file's
    seeds (NumPy's seeding range)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise DatasetError(f"seed: must be an integer from 0 to {MAX_SEED}, got {seed!r}")
    return seed


def read_csv_columns(
    path: Path, required: Sequence[str]
) -> tuple[dict[str, int], list[tuple[int, list[str]]]]:
    """Read a comma-separated table: (column name -> position for ``required``, [(line, row)]).

    Header names are stripped of spaces (and a byte-order mark). Blank lines are skipped.
    Raises a one-line ``DatasetError`` naming ``path`` for an unreadable file, a missing or
    repeated required column, or a row too short to hold the required columns.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader if row]
    except UnicodeDecodeError as exc:
        raise DatasetError(
            f"{path}: not a CSV text file ({exc.reason} at byte {exc.start})"
        ) from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable CSV file ({exc})") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not header:
        raise DatasetError(f"{path}: empty file, no CSV header")
    names = [name.strip() for name in header]
    if len(names) == 1 and len(required) > 1:
        raise DatasetError(
            f"{path}: not a comma-separated table (header has one column: {names[0][:60]!r})"
        )
    columns: dict[str, int] = {}
    for name in required:
        where = [i for i, n in enumerate(names) if n == name]
        if not where:
            raise DatasetError(f"{path}: missing column {name!r}")
        if len(where) > 1:
            raise DatasetError(f"{path}: column {name!r} appears {len(where)} times")
        columns[name] = where[0]
    width = max(columns.values()) + 1 if columns else 0
    for line, row in rows:
        if len(row) < width:
            raise DatasetError(
                f"{path}: line {line} has {len(row)} fields, the header needs at least {width}"
            )
    return columns, rows


def split_train_val(patients: Iterable[str], val_fraction: float, seed: int) -> frozenset[str]:
    """The patients that go to validation: ``round(val_fraction * n)`` of the ``n`` distinct
    patients (at least one when ``val_fraction > 0`` and at most ``n - 1``), drawn by a
    ``numpy.random.default_rng(seed)`` permutation of the sorted patient ids, so the choice
    depends only on the set of patients, the fraction and the seed."""
    unique = sorted(set(patients))
    n = len(unique)
    if val_fraction <= 0 or n < 2:
        return frozenset()
    count = min(max(int(np.floor(val_fraction * n + 0.5)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return frozenset(unique[i] for i in order[:count])


def _scan_pngs(root: Path) -> dict[str, str]:
    """File name -> absolute path of every ``*.png`` under ``root`` (hidden entries skipped)."""
    found: dict[str, str] = {}
    seen_dirs: set[str] = set()
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen_dirs:  # a symbolic link loop or a second link to the same folder
            continue
        seen_dirs.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            raise DatasetError(f"{folder}: cannot be listed ({exc.strerror or exc})") from None
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                stack.append(entry.path)
            elif entry.name.lower().endswith(".png") and entry.is_file():
                other = found.get(entry.name)
                if other is not None:
                    raise DatasetError(
                        f"{entry.path}: image file name also found at {other}; "
                        f"each image must occur once under {root}"
                    )
                found[entry.name] = entry.path
    return found


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: official split list not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a text file of image names") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DatasetError(f"{path}: image {name!r} is listed twice")
        seen.add(name)
    return names


def _find_csv(root: Path) -> Path:
    for name in CSV_NAMES:
        if (root / name).is_file():
            return root / name
    raise DatasetError(f"{root}: no NIH label table; looked for {' and '.join(CSV_NAMES)}")


def read_nih(root: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0) -> ImageIndex:
    """Index NIH ChestX-ray14 under ``root`` (layout in the module docstring).

    Reads ``Data_Entry_2017_v2020.csv`` if present, else ``Data_Entry_2017.csv``. Rows keep
    the table's order. ``test`` = ``test_list.txt``; ``val`` = a seeded ``val_fraction`` of the
    patients of ``train_val_list.txt`` (:func:`split_train_val`); ``train`` = the rest.
    An image whose file is not found under ``root`` is kept with the path
    ``root/images/<name>``; the packer counts and reports missing files.
    Every problem is a one-line ``DatasetError`` naming the file and the problem.
    """
    base = check_root(root, "NIH ChestX-ray14")
    val_fraction = check_val_fraction(val_fraction)
    seed = check_seed(seed)
    csv_path = _find_csv(base)
    columns, rows = read_csv_columns(csv_path, _COLUMNS)
    c_image, c_labels, c_patient = (columns[c] for c in _COLUMNS)
    rank = {name: k for k, name in enumerate(FINDINGS)}

    names: list[str] = []
    patients: list[str] = []
    labels = np.zeros((len(rows), len(FINDINGS)), dtype=np.float32)
    line_of: dict[str, int] = {}
    for i, (line, row) in enumerate(rows):
        name = row[c_image].strip()
        patient = row[c_patient].strip()
        if not name:
            raise DatasetError(f"{csv_path}: line {line}: empty 'Image Index'")
        if name in line_of:
            raise DatasetError(
                f"{csv_path}: line {line}: image {name!r} already on line {line_of[name]}"
            )
        if not patient:
            raise DatasetError(f"{csv_path}: line {line}: empty 'Patient ID' for {name!r}")
        line_of[name] = line
        findings = [f.strip() for f in row[c_labels].split("|")]
        if findings == [""]:
            raise DatasetError(
                f"{csv_path}: line {line}: empty 'Finding Labels' for {name!r} "
                f"(use {NO_FINDING!r} for an image without findings)"
            )
        for finding in findings:
            if finding == NO_FINDING:
                continue
            k = rank.get(finding)
            if k is None:
                raise DatasetError(
                    f"{csv_path}: line {line}: label {finding!r} of {name!r} is not one of the "
                    f"14 NIH findings ({', '.join(FINDINGS)}) or {NO_FINDING!r}"
                )
            labels[i, k] = 1.0
        names.append(name)
        patients.append(patient)

    lists = {key: _read_list(base / file) for key, file in SPLIT_FILES.items()}
    official: dict[str, str] = {}
    for key, listed in lists.items():
        list_path = base / SPLIT_FILES[key]
        for name in listed:
            if name not in line_of:
                raise DatasetError(
                    f"{list_path}: image {name!r} is not in {csv_path.name} "
                    f"({sum(n not in line_of for n in listed)} such images in all)"
                )
            if name in official:
                raise DatasetError(
                    f"{list_path}: image {name!r} is also in {SPLIT_FILES['train_val']}"
                )
            official[name] = key
    unlisted = [n for n in names if n not in official]
    if unlisted:
        raise DatasetError(
            f"{csv_path}: image {unlisted[0]!r} is in neither {SPLIT_FILES['train_val']} nor "
            f"{SPLIT_FILES['test']} ({len(unlisted)} such images in all)"
        )

    test_patients = {p for n, p in zip(names, patients, strict=True) if official[n] == "test"}
    for name, patient in zip(names, patients, strict=True):
        if official[name] == "train_val" and patient in test_patients:
            raise DatasetError(
                f"{base / SPLIT_FILES['train_val']}: patient {patient!r} ({name!r}) also has "
                f"images in {SPLIT_FILES['test']}; the official lists must be patient-disjoint"
            )
    val_patients = split_train_val(
        (p for n, p in zip(names, patients, strict=True) if official[n] == "train_val"),
        val_fraction,
        seed,
    )
    splits = tuple(
        "test" if official[n] == "test" else "val" if p in val_patients else "train"
        for n, p in zip(names, patients, strict=True)
    )

    found = _scan_pngs(base)
    missing_folder = str(base / "images")
    paths = tuple(found.get(n) or os.path.join(missing_folder, n) for n in names)
    return ImageIndex(
        paths=paths,
        patients=tuple(patients),
        splits=splits,
        labels=labels,
        mask=np.ones(labels.shape, dtype=bool),
        task_names=FINDINGS,
        dataset="nih",
        root=str(base),
    )
