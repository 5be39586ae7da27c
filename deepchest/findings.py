"""The 14 NIH ChestX-ray14 findings in one canonical order, with real label statistics.

Every table and figure in the harness uses ``FINDINGS`` order.

Source of every number below: statistics of the NIH ChestX-ray14 label table
(112,120 images, 30,805 patients; Wang et al., CVPR 2017), computed from the public
``Data_Entry_2017_v2020.csv``; per-finding difficulty is CheXNet's test AUROC
(Rajpurkar et al. 2017, DenseNet-121 at 224 px). Copied here so that the project never
needs the original file at run time.

- ``PREVALENCE``: fraction of images with the finding.
- ``COPULA_THRESHOLDS`` / ``COPULA_CORRELATION``: a Gaussian copula, ``z ~ N(0, R)`` and
  finding ``k`` present when ``z_k > threshold_k``, reproduces every prevalence to within
  0.07 points and the pairwise joint frequencies to within 6.5 %.
- ``BOX_CENTRE_SIZE``: mean normalised bounding-box centre ``(x, y)`` and size ``(w, h)`` of
  the findings that NIH annotated with boxes (8 of the 14).
- ``CHEXNET_AUROC``: how hard each finding is for a strong model.
"""

from __future__ import annotations

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

NUM_FINDINGS = len(FINDINGS)

TOTAL_IMAGES = 112120
PATIENTS = 30805
NO_FINDING_FRACTION = 0.5384

POSITIVE_COUNTS: dict[str, int] = {
    "Atelectasis": 11559,
    "Cardiomegaly": 2776,
    "Effusion": 13317,
    "Infiltration": 19894,
    "Mass": 5782,
    "Nodule": 6331,
    "Pneumonia": 1431,
    "Pneumothorax": 5302,
    "Consolidation": 4667,
    "Edema": 2303,
    "Emphysema": 2516,
    "Fibrosis": 1686,
    "Pleural_Thickening": 3385,
    "Hernia": 227,
}

PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.10309,
    "Cardiomegaly": 0.02476,
    "Effusion": 0.11877,
    "Infiltration": 0.17743,
    "Mass": 0.05157,
    "Nodule": 0.05647,
    "Pneumonia": 0.01276,
    "Pneumothorax": 0.04729,
    "Consolidation": 0.04163,
    "Edema": 0.02054,
    "Emphysema": 0.02244,
    "Fibrosis": 0.01504,
    "Pleural_Thickening": 0.03019,
    "Hernia": 0.00202,
}

COPULA_THRESHOLDS: dict[str, float] = {
    "Atelectasis": 1.2641,
    "Cardiomegaly": 1.9641,
    "Effusion": 1.1811,
    "Infiltration": 0.9252,
    "Mass": 1.6298,
    "Nodule": 1.5851,
    "Pneumonia": 2.2333,
    "Pneumothorax": 1.6717,
    "Consolidation": 1.7321,
    "Edema": 2.0427,
    "Emphysema": 2.0058,
    "Fibrosis": 2.1691,
    "Pleural_Thickening": 1.878,
    "Hernia": 2.8743,
}

# Rows and columns in FINDINGS order.
# fmt: off
COPULA_CORRELATION: tuple[tuple[float, ...], ...] = (
    (1.0, 0.066, 0.369, 0.207, 0.063, -0.028, 0.143,
     0.103, 0.306, -0.017, 0.131, 0.056, 0.096, 0.107),
    (0.066, 1.0, 0.386, 0.053, -0.067, -0.074, 0.025,
     -0.173, 0.081, 0.16, -0.059, 0.038, 0.055, 0.03),
    (0.369, 0.386, 1.0, 0.248, 0.201, 0.06, 0.117,
     0.145, 0.284, 0.226, 0.048, -0.015, 0.232, -0.045),
    (0.207, 0.053, 0.248, 1.0, 0.042, 0.118, 0.286,
     0.002, 0.137, 0.31, 0.002, 0.04, 0.071, -0.041),
    (0.063, -0.067, 0.201, 0.042, 1.0, 0.301, -0.007,
     0.116, 0.252, 0.017, 0.113, 0.06, 0.242, 0.131),
    (-0.028, -0.074, 0.06, 0.118, 0.301, 1.0, -0.027,
     0.032, 0.123, 0.002, -0.043, 0.12, 0.193, -0.038),
    (0.143, 0.025, 0.117, 0.286, -0.007, -0.027, 1.0,
     -0.086, 0.147, 0.557, -0.052, -0.095, 0.018, 0.004),
    (0.103, -0.173, 0.145, 0.002, 0.116, 0.032, -0.086,
     1.0, 0.002, -0.198, 0.506, 0.001, 0.138, -0.026),
    (0.306, 0.081, 0.284, 0.137, 0.252, 0.123, 0.147,
     0.002, 1.0, 0.111, -0.003, 0.022, 0.131, -0.114),
    (-0.017, 0.16, 0.226, 0.31, 0.017, 0.002, 0.557,
     -0.198, 0.111, 1.0, -0.088, -0.186, -0.015, -0.055),
    (0.131, -0.059, 0.048, 0.002, 0.113, -0.043, -0.052,
     0.506, -0.003, -0.088, 1.0, -0.008, 0.142, -0.031),
    (0.056, 0.038, -0.015, 0.04, 0.06, 0.12, -0.095,
     0.001, 0.022, -0.186, -0.008, 1.0, 0.262, 0.117),
    (0.096, 0.055, 0.232, 0.071, 0.242, 0.193, 0.018,
     0.138, 0.131, -0.015, 0.142, 0.262, 1.0, 0.022),
    (0.107, 0.03, -0.045, -0.041, 0.131, -0.038, 0.004,
     -0.026, -0.114, -0.055, -0.031, 0.117, 0.022, 1.0),
)
# fmt: on

# centre (x, y) and size (w, h), normalised to the image; only the findings NIH boxed.
BOX_CENTRE_SIZE: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "Atelectasis": ((0.5, 0.57), (0.17, 0.11)),
    "Cardiomegaly": ((0.57, 0.57), (0.47, 0.37)),
    "Effusion": ((0.38, 0.56), (0.2, 0.27)),
    "Infiltration": ((0.56, 0.52), (0.22, 0.26)),
    "Mass": ((0.44, 0.45), (0.12, 0.14)),
    "Nodule": ((0.63, 0.47), (0.07, 0.07)),
    "Pneumonia": ((0.52, 0.56), (0.22, 0.27)),
    "Pneumothorax": ((0.34, 0.25), (0.2, 0.2)),
}

CHEXNET_AUROC: dict[str, float] = {
    "Atelectasis": 0.8094,
    "Cardiomegaly": 0.9248,
    "Effusion": 0.8638,
    "Infiltration": 0.7345,
    "Mass": 0.8676,
    "Nodule": 0.7802,
    "Pneumonia": 0.768,
    "Pneumothorax": 0.8887,
    "Consolidation": 0.7901,
    "Edema": 0.8878,
    "Emphysema": 0.9371,
    "Fibrosis": 0.8047,
    "Pleural_Thickening": 0.8062,
    "Hernia": 0.9164,
}

# Mean per-finding accuracy of a classifier that always says "absent".
ALL_NEGATIVE_MEAN_ACCURACY = 0.948


def canonical_order(names: list[str]) -> list[str]:
    """Sort finding names into the canonical order; names that are not NIH findings go last,
    in the order given (extra tasks such as synthetic noise tasks)."""
    rank = {name: i for i, name in enumerate(FINDINGS)}
    return sorted(names, key=lambda n: (rank.get(n, len(FINDINGS)), names.index(n)))
