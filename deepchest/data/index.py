"""What a real data set's reader produces: where each image is, whose it is, its split and its
labels. The images themselves are decoded later, once, by ``harness data prepare``
(``deepchest.data.packed``), so that training reads packed arrays and never decodes a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ImageIndex:
    """One row per image, in a fixed order (the reader's).

    ``paths``: absolute file paths; ``patients``: patient ids (splits never share one);
    ``splits``: ``"train"`` | ``"val"`` | ``"test"`` per image; ``labels``: float32 ``[N, T]``
    in {0, 1}; ``mask``: bool ``[N, T]``, False where a label is unknown (masked out of loss
    and metrics); ``task_names``: the data set's findings in its canonical order;
    ``dataset``/``root``: provenance.
    """

    paths: tuple[str, ...]
    patients: tuple[str, ...]
    splits: tuple[str, ...]
    labels: np.ndarray
    mask: np.ndarray
    task_names: tuple[str, ...]
    dataset: str
    root: str

    def __post_init__(self) -> None:
        n = len(self.paths)
        t = len(self.task_names)
        if len(self.patients) != n or len(self.splits) != n:
            raise ValueError("paths, patients and splits disagree in length")
        if self.labels.shape != (n, t) or self.mask.shape != (n, t):
            raise ValueError(
                f"labels {self.labels.shape} and mask {self.mask.shape} must be ({n}, {t})"
            )
        if self.labels.dtype != np.float32 or self.mask.dtype != np.bool_:
            raise ValueError("labels must be float32 and mask bool")
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split names {sorted(unknown)}; allowed: {SPLITS}")

    def __len__(self) -> int:
        return len(self.paths)

    def split_sizes(self) -> dict[str, int]:
        return {s: sum(1 for x in self.splits if x == s) for s in SPLITS}
