"""The real-data readers (NIH ChestX-ray14, CheXpert, ChestMNIST) on tiny data sets built on
the fly in each published layout: parsing, label order, masks, uncertain policies, views,
patient-disjoint seeded splits, and a one-line ``DatasetError`` for every bad input."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepchest.data import DatasetError
from deepchest.data.chestmnist import read_chestmnist
from deepchest.data.chexpert import CHEXPERT_FINDINGS, read_chexpert
from deepchest.data.index import ImageIndex
from deepchest.data.nih import read_nih, split_train_val
from deepchest.data.readers import TASK_NAMES, read_index
from deepchest.findings import FINDINGS


def _image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (4, 4), 128).save(buffer, format=fmt)
    return buffer.getvalue()


PNG = _image_bytes("PNG")
JPEG = _image_bytes("JPEG")


def _raises(match: str, fn, *args, **kwargs) -> str:
    """Call ``fn``; it must raise a one-line ``DatasetError`` containing every part of
    ``match`` (separated by ``|``). Returns the message."""
    with pytest.raises(DatasetError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    for part in match.split("|"):
        assert part in message, (part, message)
    return message


def _patients_by_split(index: ImageIndex) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for patient, split in zip(index.patients, index.splits, strict=True):
        out[split].add(patient)
    return out


def _assert_patient_disjoint(index: ImageIndex) -> dict[str, set[str]]:
    by_split = _patients_by_split(index)
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    return by_split


# --------------------------------------------------------------------------------------- NIH

NIH_LABELS = [
    "No Finding",
    "Atelectasis",
    "Cardiomegaly|Effusion",
    "Pleural_Thickening",
    "Hernia|Mass|Nodule",
    "Infiltration",
    "Pneumonia|Pneumothorax|Consolidation",
    "Edema|Emphysema|Fibrosis",
]
NIH_PATIENTS = 30
NIH_TEST_PATIENTS = range(26, 31)  # the official test list: patients 26 to 30
HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
)
HEADER_2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
)


def _nih_rows() -> list[tuple[str, str, int]]:
    """(image name, finding labels, patient) for patients 1..30, 1 to 3 images each."""
    rows = []
    for patient in range(1, NIH_PATIENTS + 1):
        for k in range(patient % 3 + 1):
            labels = NIH_LABELS[len(rows) % len(NIH_LABELS)]
            rows.append((f"{patient:08d}_{k:03d}.png", labels, patient))
    return rows


def _nih_csv(rows, version: str = "2017") -> str:
    if version == "2017":  # unnamed trailing column, as in Data_Entry_2017.csv
        lines = [f"{n},{lab},0,{p},58,M,PA,2682,2749,0.143,0.143,\n" for n, lab, p in rows]
        return HEADER_2017 + "".join(lines)
    lines = [f"{n},{lab},0,{p},58,M,AP,2500,2048,0.168,0.168\n" for n, lab, p in rows]
    return HEADER_2020 + "".join(lines)


def make_nih(root: Path, layout: str = "flat", csv_name: str = "Data_Entry_2017.csv") -> Path:
    """A tiny NIH ChestX-ray14 in its published layout: ``flat`` (``images/``) or
    ``archives`` (``images_001/images/``, ``images_002/images/``)."""
    rows = _nih_rows()
    root.mkdir(parents=True, exist_ok=True)
    (root / csv_name).write_text(_nih_csv(rows, "2020" if "v2020" in csv_name else "2017"))
    test = [n for n, _, p in rows if p in NIH_TEST_PATIENTS]
    train_val = [n for n, _, p in rows if p not in NIH_TEST_PATIENTS]
    (root / "train_val_list.txt").write_text("\n".join(train_val) + "\n")
    (root / "test_list.txt").write_text("\n".join(test) + "\n")
    for i, (name, _, _) in enumerate(rows):
        if layout == "flat":
            folder = root / "images"
        else:
            folder = root / f"images_{1 + 2 * i // len(rows):03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(PNG)
    return root


@pytest.fixture
def nih(tmp_path) -> Path:
    return make_nih(tmp_path / "nih")


def test_nih_parses_labels_in_findings_order(nih):
    index = read_nih(nih)
    rows = _nih_rows()
    assert isinstance(index, ImageIndex)
    assert len(index) == len(rows)
    assert index.task_names == FINDINGS
    assert index.dataset == "nih" and index.root == str(nih)
    assert index.labels.dtype == np.float32 and index.mask.all()
    assert [os.path.basename(p) for p in index.paths] == [n for n, _, _ in rows]
    assert index.patients == tuple(str(p) for _, _, p in rows)
    for i, (_, labels, _) in enumerate(rows):
        expected = np.zeros(len(FINDINGS), dtype=np.float32)
        for finding in labels.split("|"):
            if finding != "No Finding":
                expected[FINDINGS.index(finding)] = 1.0
        np.testing.assert_array_equal(index.labels[i], expected)
    # No Finding = all negative; the underscore spelling lands in its column
    assert rows[0][1] == "No Finding" and not index.labels[0].any()
    assert rows[3][1] == "Pleural_Thickening"
    assert np.flatnonzero(index.labels[3]).tolist() == [FINDINGS.index("Pleural_Thickening")]
    # every finding occurs, in its own column
    assert index.labels.any(axis=0).all()


@pytest.mark.parametrize("layout", ["flat", "archives"])
def test_nih_finds_images_in_both_layouts(tmp_path, layout):
    root = make_nih(tmp_path / "nih", layout)
    index = read_nih(root)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in index.paths)
    folders = {Path(p).parent.relative_to(root).as_posix() for p in index.paths}
    if layout == "flat":
        assert folders == {"images"}
    else:
        assert folders == {"images_001/images", "images_002/images"}


def test_nih_prefers_v2020_csv(tmp_path):
    root = make_nih(tmp_path / "nih", csv_name="Data_Entry_2017.csv")
    rows = _nih_rows()
    changed = [(n, "Hernia" if i == 0 else lab, p) for i, (n, lab, p) in enumerate(rows)]
    (root / "Data_Entry_2017_v2020.csv").write_text(_nih_csv(changed, "2020"))
    index = read_nih(root)
    assert np.flatnonzero(index.labels[0]).tolist() == [FINDINGS.index("Hernia")]
    (root / "Data_Entry_2017.csv").unlink()
    assert np.array_equal(read_nih(root).labels, index.labels)


def test_nih_official_test_split_and_patient_split(nih):
    index = read_nih(nih)
    rows = _nih_rows()
    test_names = {n for n, _, p in rows if p in NIH_TEST_PATIENTS}
    assert {
        os.path.basename(p) for p, s in zip(index.paths, index.splits, strict=True) if s == "test"
    } == test_names
    by_split = _assert_patient_disjoint(index)
    assert by_split["test"] == {str(p) for p in NIH_TEST_PATIENTS}
    # 25 train_val patients: 10 % -> round(2.5) -> 3 val patients, whatever their image count
    assert len(by_split["val"]) == 3 and len(by_split["train"]) == 22
    wide = _patients_by_split(read_nih(nih, val_fraction=0.4))
    assert len(wide["val"]) == 10 and len(wide["train"]) == 15
    assert not _patients_by_split(read_nih(nih, val_fraction=0.0))["val"]


def test_nih_split_is_deterministic_under_the_seed(nih):
    a, b = read_nih(nih, seed=5), read_nih(nih, seed=5)
    assert a.splits == b.splits and a.paths == b.paths
    others = {read_nih(nih, seed=s).splits for s in range(6, 10)}
    assert any(s != a.splits for s in others)


def test_split_train_val_depends_only_on_the_patient_set():
    patients = [f"p{i}" for i in range(50)]
    chosen = split_train_val(patients, 0.2, seed=3)
    assert len(chosen) == 10
    assert split_train_val(reversed(patients + patients), 0.2, seed=3) == chosen
    assert len(split_train_val(patients[:3], 0.01, seed=0)) == 1  # at least one
    assert len(split_train_val(patients[:2], 0.9, seed=0)) == 1  # at most n - 1
    assert not split_train_val(patients[:1], 0.5, seed=0)


def test_nih_keeps_rows_whose_image_is_missing(nih):
    gone = nih / "images" / "00000002_000.png"
    gone.unlink()
    index = read_nih(nih)
    assert len(index) == len(_nih_rows())
    assert str(gone) in index.paths


def test_nih_duplicate_file_name_names_both_folders(nih):
    (nih / "images_002" / "images").mkdir(parents=True)
    (nih / "images_002" / "images" / "00000001_000.png").write_bytes(PNG)
    message = _raises("00000001_000.png", read_nih, nih)
    assert str(nih / "images" / "00000001_000.png") in message
    assert str(nih / "images_002" / "images" / "00000001_000.png") in message


def _rewrite(path: Path, old: str, new: str, count: int = 1) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, count))


NIH_CSV = "Data_Entry_2017.csv"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: (r / NIH_CSV).unlink(), "Data_Entry_2017_v2020.csv|Data_Entry_2017.csv"),
        (
            lambda r: (r / NIH_CSV).rename(r / "Data_Entry.csv"),
            "looked for Data_Entry_2017_v2020.csv and Data_Entry_2017.csv",
        ),
        (lambda r: _rewrite(r / NIH_CSV, "Patient ID", "PatientID"), "missing column 'Patient ID'"),
        (
            lambda r: _rewrite(r / NIH_CSV, "Finding Labels", "Labels"),
            "missing column 'Finding Labels'",
        ),
        (
            lambda r: _rewrite(r / NIH_CSV, "Pleural_Thickening", "Pleural Thickening"),
            "line 5: label 'Pleural Thickening' of '00000002_001.png'",
        ),
        (
            lambda r: _rewrite(r / NIH_CSV, "Atelectasis", "Atelectasis|Covid"),
            "line 3: label 'Covid'",
        ),
        (lambda r: (r / NIH_CSV).write_bytes(PNG * 3), f"{NIH_CSV}: not a CSV text file"),
        (lambda r: (r / NIH_CSV).write_text(""), "empty file"),
        (
            lambda r: (r / NIH_CSV).write_text("Image Index\tFinding Labels\tPatient ID\n"),
            "not a comma-separated table",
        ),
        (
            lambda r: _rewrite(
                r / NIH_CSV,
                "00000001_000.png,No Finding,0,1,58,M,PA,2682,2749,0.143,0.143,",
                "00000001_000.png,No Finding",
            ),
            "line 2 has 2 fields, the header needs at least 4",
        ),
        (lambda r: (r / "test_list.txt").unlink(), "test_list.txt: official split list not found"),
        (
            lambda r: _rewrite(r / "test_list.txt", "00000026_000.png\n", ""),
            f"{NIH_CSV}: image '00000026_000.png' is in neither",
        ),
        (
            lambda r: _rewrite(r / "test_list.txt", "00000026_000.png", "00000099_000.png"),
            f"test_list.txt: image '00000099_000.png' is not in {NIH_CSV}",
        ),
        (
            lambda r: _rewrite(r / "test_list.txt", "00000026_000.png", "00000001_000.png"),
            "test_list.txt: image '00000001_000.png' is also in train_val_list.txt",
        ),
        (
            # patient 26's second image moves to train_val: the official lists then share it
            lambda r: (
                _rewrite(r / "test_list.txt", "00000026_001.png\n", ""),
                _rewrite(
                    r / "train_val_list.txt",
                    "00000001_000.png",
                    "00000001_000.png\n00000026_001.png",
                ),
            ),
            "patient '26' ('00000026_001.png') also has images in test_list.txt",
        ),
        (
            lambda r: _rewrite(r / NIH_CSV, "00000002_000.png", "00000001_000.png"),
            "line 4: image '00000001_000.png' already on line 2",
        ),
    ],
)
def test_nih_bad_input_is_one_line_error(nih, mutate, match):
    mutate(nih)
    _raises(match, read_nih, nih)


def test_nih_missing_root_and_bad_fraction(tmp_path, nih):
    _raises(
        f"{tmp_path / 'absent'}: NIH ChestX-ray14 data set root does not exist",
        read_nih,
        tmp_path / "absent",
    )
    _raises("not a folder", read_nih, nih / NIH_CSV)
    _raises("val_fraction: must be in [0, 1), got 1.5", read_nih, nih, val_fraction=1.5)
    _raises("val_fraction", read_nih, nih, val_fraction="0.1")


# ---------------------------------------------------------------------------------- CheXpert

CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
# the first row of train.csv, in CHEXPERT_FINDINGS order
FIRST_ROW = ["", "1.0", "-1.0", "0.0", "", "1", "-1", "0", "", "", "", "", "", "1.0"]


def _chexpert_rows(split: str, patients: range, rng: random.Random) -> list[list[str]]:
    rows = []
    for patient in patients:
        for study in range(1, patient % 2 + 2):
            views = ["frontal", "lateral"] if (patient + study) % 2 else ["frontal"]
            for v, view in enumerate(views, 1):
                path = f"{split}/patient{patient:05d}/study{study}/view{v}_{view}.jpg"
                labels = [rng.choice(["", "1.0", "0.0", "-1.0"]) for _ in CHEXPERT_FINDINGS]
                rows.append([path, "Female", "68", view.capitalize(), "AP", *labels])
    return rows


def make_chexpert(parent: Path, name: str = "CheXpert-v1.0-small") -> Path:
    """A tiny CheXpert in its published layout, ``Path`` relative to ``root``'s parent."""
    root = parent / name
    prefix = name if name.startswith("CheXpert") else "CheXpert-v1.0-small"  # renamed: as published
    rng = random.Random(0)
    train = _chexpert_rows("train", range(1, 25), rng)
    train[0][5:] = FIRST_ROW
    tables = {"train.csv": train, "valid.csv": _chexpert_rows("valid", range(64541, 64545), rng)}
    for file, rows in tables.items():
        lines = [",".join(CHEXPERT_HEADER)]
        for row in rows:
            image = root / row[0]
            image.parent.mkdir(parents=True, exist_ok=True)
            image.write_bytes(JPEG)
            lines.append(",".join([f"{prefix}/{row[0]}", *row[1:]]))
        (root / file).write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def chexpert(tmp_path) -> Path:
    return make_chexpert(tmp_path)


def _read_rows(root: Path, file: str) -> list[list[str]]:
    return [line.split(",") for line in (root / file).read_text().splitlines()[1:]]


def test_chexpert_findings_match_the_published_columns():
    assert CHEXPERT_FINDINGS == (
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


def test_chexpert_parses_paths_patients_labels(chexpert):
    index = read_chexpert(chexpert, views="all")
    rows = _read_rows(chexpert, "train.csv") + _read_rows(chexpert, "valid.csv")
    assert len(index) == len(rows)
    assert index.task_names == CHEXPERT_FINDINGS and index.dataset == "chexpert"
    assert all(os.path.isfile(p) for p in index.paths)
    assert index.paths[0] == str(chexpert / "train/patient00001/study1/view1_frontal.jpg")
    assert index.patients[0] == "patient00001"
    assert [p.split("/")[2] for p in (r[0] for r in rows)] == list(index.patients)
    for i, row in enumerate(rows):
        values = row[5:]
        np.testing.assert_array_equal(index.labels[i], [v in ("1.0", "1") for v in values])
        np.testing.assert_array_equal(index.mask[i], [v not in ("-1.0", "-1") for v in values])


def test_chexpert_uncertain_policies(chexpert):
    first = {
        policy: read_chexpert(chexpert, uncertain=policy) for policy in ("ignore", "zeros", "ones")
    }
    k = {name: i for i, name in enumerate(CHEXPERT_FINDINGS)}
    uncertain = [k["Cardiomegaly"], k["Consolidation"]]  # "-1.0" and "-1"
    positive = [k["Enlarged Cardiomediastinum"], k["Edema"], k["Support Devices"]]
    blank_or_zero = [k["No Finding"], k["Lung Opacity"], k["Lung Lesion"], k["Pneumonia"]]
    ignore, zeros, ones = (first[p] for p in ("ignore", "zeros", "ones"))
    assert np.flatnonzero(~ignore.mask[0]).tolist() == uncertain
    assert ignore.labels[0, uncertain].tolist() == [0, 0]
    assert zeros.mask.all() and ones.mask.all()
    assert zeros.labels[0, uncertain].tolist() == [0, 0]
    assert ones.labels[0, uncertain].tolist() == [1, 1]
    for index in first.values():
        assert index.labels[0, positive].tolist() == [1, 1, 1]
        assert index.labels[0, blank_or_zero].tolist() == [0, 0, 0, 0]
        assert index.mask[0, blank_or_zero].all()
    # elsewhere too: ones = ignore's positives plus the masked entries
    np.testing.assert_array_equal(ones.labels, np.maximum(ignore.labels, ~ignore.mask))
    np.testing.assert_array_equal(zeros.labels, ignore.labels)


def test_chexpert_views(chexpert):
    frontal = read_chexpert(chexpert)
    every = read_chexpert(chexpert, views="all")
    assert all(p.endswith("_frontal.jpg") for p in frontal.paths)
    assert any(p.endswith("_lateral.jpg") for p in every.paths)
    assert len(frontal) == sum(p.endswith("_frontal.jpg") for p in every.paths) < len(every)
    # the patient division does not depend on the views
    split_of = dict(zip(every.patients, every.splits, strict=True))
    assert all(split_of[p] == s for p, s in zip(frontal.patients, frontal.splits, strict=True))


def test_chexpert_splits_by_patient(chexpert):
    index = read_chexpert(chexpert, views="all")
    by_split = _assert_patient_disjoint(index)
    assert by_split["test"] == {f"patient{p}" for p in range(64541, 64545)}
    # 24 train.csv patients: 10 % -> round(2.4) -> 2 val patients
    assert len(by_split["val"]) == 2 and len(by_split["train"]) == 22
    wide = _patients_by_split(read_chexpert(chexpert, views="all", val_fraction=0.25))
    assert len(wide["val"]) == 6
    test_rows = _read_rows(chexpert, "valid.csv")
    assert index.splits[-len(test_rows) :] == ("test",) * len(test_rows)
    assert read_chexpert(chexpert, seed=1).splits == read_chexpert(chexpert, seed=1).splits
    assert any(read_chexpert(chexpert, seed=s).splits != index.splits for s in range(1, 5))


@pytest.mark.parametrize("name", ["CheXpert-v1.0", "renamed"])
def test_chexpert_full_and_renamed_folder(tmp_path, name):
    root = make_chexpert(tmp_path, name)
    index = read_chexpert(root)
    assert all(p.startswith(str(root) + os.sep) and os.path.isfile(p) for p in index.paths)


def test_chexpert_path_relative_to_root(chexpert):
    _rewrite(chexpert / "train.csv", "CheXpert-v1.0-small/train/", "train/", count=-1)
    assert all(os.path.isfile(p) for p in read_chexpert(chexpert).paths)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda r: (r / "train.csv").unlink(), "no train.csv; looked for train.csv and valid.csv"),
        (lambda r: (r / "valid.csv").unlink(), "no valid.csv"),
        (
            lambda r: _rewrite(r / "train.csv", "Pleural Effusion", "Effusion"),
            "train.csv: missing column 'Pleural Effusion'",
        ),
        (
            lambda r: _rewrite(r / "valid.csv", "Frontal/Lateral", "View"),
            "valid.csv: missing column 'Frontal/Lateral'",
        ),
        (
            lambda r: _rewrite(r / "train.csv", "AP,,1.0,-1.0", "AP,,2.0,-1.0"),
            "train.csv: line 2, column 'Enlarged Cardiomediastinum': label '2.0'",
        ),
        (
            lambda r: _rewrite(r / "train.csv", "AP,,1.0,-1.0", "AP,,yes,-1.0"),
            "line 2, column 'Enlarged Cardiomediastinum': label 'yes' is not 1, 0, -1 or blank",
        ),
        (
            lambda r: _rewrite(r / "train.csv", "Female,68,Frontal", "Female,68,Side"),
            "train.csv: line 2, column 'Frontal/Lateral': 'Side'",
        ),
        (
            lambda r: _rewrite(r / "train.csv", "patient00001/", "p1/"),
            "train.csv: line 2: 'Path' 'CheXpert-v1.0-small/train/p1/study1/view1_frontal.jpg'",
        ),
        (
            lambda r: _rewrite(r / "valid.csv", "patient64541", "patient00003", count=-1),
            "valid.csv: patient patient00003 is also in train.csv",
        ),
        (
            lambda r: _rewrite(r / "train.csv", "CheXpert-v1.0-small/train/", "/data/train/"),
            "train.csv: line 2: 'Path' '/data/train/patient00001/study1/view1_frontal.jpg' is "
            "not a relative image path",
        ),
        (lambda r: (r / "train.csv").write_bytes(JPEG), "train.csv: not a CSV text file"),
    ],
)
def test_chexpert_bad_input_is_one_line_error(chexpert, mutate, match):
    mutate(chexpert)
    _raises(match, read_chexpert, chexpert)


def test_chexpert_bad_options_and_root(tmp_path, chexpert):
    _raises(
        "uncertain: must be one of ignore, zeros, ones; got 'maybe'",
        read_chexpert,
        chexpert,
        uncertain="maybe",
    )
    _raises(
        "views: must be one of frontal, all; got 'lateral'",
        read_chexpert,
        chexpert,
        views="lateral",
    )
    _raises("val_fraction", read_chexpert, chexpert, val_fraction=-0.1)
    _raises(
        f"{tmp_path / 'nope'}: CheXpert data set root does not exist",
        read_chexpert,
        tmp_path / "nope",
    )
    # without the view filter, Frontal/Lateral is not needed
    _rewrite(chexpert / "valid.csv", "Frontal/Lateral", "View")
    assert len(read_chexpert(chexpert, views="all"))


# -------------------------------------------------------------------------------- ChestMNIST

SIZES = {"train": 12, "val": 4, "test": 5}


def _chestmnist_arrays(size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in SIZES.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (n, len(FINDINGS)), dtype=np.uint8)
    return arrays


def test_chestmnist_reads_a_file(tmp_path):
    arrays = _chestmnist_arrays()
    path = tmp_path / "chestmnist.npz"
    np.savez_compressed(path, **arrays)
    splits = read_chestmnist(path)
    assert set(splits) == {"train", "val", "test"}
    for split, data in splits.items():
        assert data.images.dtype == torch.uint8 and data.images.shape == (SIZES[split], 1, 28, 28)
        assert data.task_names == FINDINGS and bool(data.mask.all())
        assert data.labels.dtype == torch.float32
        np.testing.assert_array_equal(data.images[:, 0].numpy(), arrays[f"{split}_images"])
        np.testing.assert_array_equal(data.labels.numpy(), arrays[f"{split}_labels"])


def test_chestmnist_folder_picks_by_image_size(tmp_path):
    np.savez(tmp_path / "chestmnist.npz", **_chestmnist_arrays(28))
    assert read_chestmnist(tmp_path)["val"].images.shape[-1] == 28  # the only file
    np.savez(tmp_path / "chestmnist_64.npz", **_chestmnist_arrays(64))
    _raises(
        "several ChestMNIST files (chestmnist.npz, chestmnist_64.npz)|image_size",
        read_chestmnist,
        tmp_path,
    )
    assert read_chestmnist(tmp_path, image_size=64)["test"].images.shape == (5, 1, 64, 64)
    assert read_chestmnist(tmp_path, image_size=28)["test"].images.shape == (5, 1, 28, 28)
    _raises(
        "no chestmnist_128.npz for image_size 128 (present: chestmnist.npz, chestmnist_64.npz)",
        read_chestmnist,
        tmp_path,
        image_size=128,
    )
    _raises(
        "images are 64 px, but image_size is 28",
        read_chestmnist,
        tmp_path / "chestmnist_64.npz",
        image_size=28,
    )


def _bad(key: str, value) -> dict[str, np.ndarray]:
    arrays = _chestmnist_arrays()
    if value is None:
        del arrays[key]
    else:
        arrays[key] = value
    return arrays


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (_bad("val_labels", None), "missing array val_labels"),
        (_bad("test_images", None), "missing array test_images"),
        (_bad("train_images", np.zeros((12, 28, 28), np.float32)), "train_images must be uint8"),
        (
            _bad("train_images", np.zeros((12, 28, 28, 1), np.uint8)),
            "train_images must be [N, S, S]",
        ),
        (_bad("val_images", np.zeros((4, 30, 30), np.uint8)), "val_images must be [N, S, S]"),
        (_bad("val_images", np.zeros((4, 64, 64), np.uint8)), "splits disagree in image size"),
        (_bad("val_labels", np.zeros((4, 14), np.float32)), "val_labels must be integer 0/1"),
        (_bad("val_labels", np.zeros((4, 13), np.uint8)), "val_labels must be [N, 14]"),
        (_bad("test_labels", np.full((5, 14), 2, np.uint8)), "test_labels[0, 0] is 2"),
        (
            _bad("test_labels", np.zeros((6, 14), np.uint8)),
            "test_labels has 6 rows but test_images",
        ),
    ],
)
def test_chestmnist_bad_arrays_are_one_line_errors(tmp_path, arrays, match):
    path = tmp_path / "chestmnist.npz"
    np.savez(path, **arrays)
    _raises(f"{path}: |{match}", read_chestmnist, path)


def test_chestmnist_bad_files_and_options(tmp_path):
    _raises(
        f"{tmp_path / 'gone.npz'}: ChestMNIST file or folder does not exist",
        read_chestmnist,
        tmp_path / "gone.npz",
    )
    _raises(
        "no ChestMNIST file; looked for chestmnist.npz, chestmnist_64.npz",
        read_chestmnist,
        tmp_path,
    )
    text = tmp_path / "chestmnist.npz"
    text.write_text("train_images,train_labels\n")
    _raises(f"{text}: not a .npz file", read_chestmnist, text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 28, 28), np.uint8))
    _raises(f"{single}: not a .npz file", read_chestmnist, single)
    _raises(
        "image_size: ChestMNIST comes in 28, 64, 128, 224 pixels; got 32",
        read_chestmnist,
        tmp_path,
        image_size=32,
    )


# ----------------------------------------------------------------------------------- readers


def test_read_index_dispatches(tmp_path):
    nih = make_nih(tmp_path / "nih")
    chexpert = make_chexpert(tmp_path)
    assert read_index("nih", nih, seed=3).splits == read_nih(nih, seed=3).splits
    a = read_index("chexpert", chexpert, uncertain="ones", views="all")
    b = read_chexpert(chexpert, uncertain="ones", views="all")
    assert a.paths == b.paths and np.array_equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="read_chestmnist"):
        read_index("chestmnist", tmp_path)
    with pytest.raises(ValueError, match="'mimic'"):
        read_index("mimic", tmp_path)
    _raises("nih: unknown option 'views'", read_index, "nih", nih, views="all")
    assert TASK_NAMES == {
        "nih": FINDINGS,
        "chexpert": CHEXPERT_FINDINGS,
        "chestmnist": FINDINGS,
    }
