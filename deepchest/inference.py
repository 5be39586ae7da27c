"""The exported model bundle and prediction on image files. Knows nothing of HTTP or Ray.

A bundle is a folder of two files (written by ``harness export``, read by ``harness predict``
and ``harness serve``):

``model.safetensors``
    The network's state dict (``MultiTaskNet``: trunk and one head per finding) under its own
    names, plus ``ood.mean`` ``[d]`` and ``ood.precision`` ``[d, d]``, the training images'
    feature statistics for the out-of-distribution check. safetensors holds tensors only, so
    loading runs no pickle.
``model.json``
    The model card (:data:`CARD_KEYS`): backbone, finding names in head order, preprocessing,
    what the model was trained on and how, per-finding val and test AUROC, per-finding
    operating thresholds, the out-of-distribution check's threshold and error rates, the
    harness version and commit, and the sha256 of ``model.safetensors``.

Prediction repeats training's preprocessing exactly: a file is decoded to uint8 grey at the
prepared size with :func:`deepchest.data.prepare.decode_opened` (the function that prepared
the training images), then :func:`deepchest.data.augment.eval_batch` resizes and normalises
it as evaluation did. DICOM files are first turned into 16-bit grey pixels
(:func:`dicom_pixels`) and then take the 16-bit PNG path, so a DICOM and a 16-bit PNG of its
pixels give the same probabilities.

Operating thresholds (:func:`youden_thresholds`): per finding, the probability that maximises
Youden's J = sensitivity + specificity - 1 on the validation split (Youden, Cancer 1950), the
point of the ROC curve farthest above the diagonal.

Out-of-distribution check (:func:`fit_ood`, :func:`mahalanobis`): the Mahalanobis distance of
an image's representation (the trunk's output, ``[d]``) from the training images' mean, with
the Ledoit-Wolf shrunk covariance (scikit-learn; Lee et al., NeurIPS 2018, use class-wise
Gaussians on the same features; with multi-label findings one Gaussian is fitted). The
refusal threshold is a quantile of the validation images' distances, so about ``1 - q`` of
in-distribution images are refused; the card gives the rate measured on the test split.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deepchest.data.augment import eval_batch
from deepchest.data.prepare import decode_opened, one_line
from deepchest.models import MultiTaskNet

__all__ = [
    "CARD_FILE",
    "WEIGHTS_FILE",
    "Bundle",
    "BundleError",
    "ImageError",
    "dicom_pixels",
    "fit_ood",
    "load_bundle",
    "mahalanobis",
    "read_image",
    "write_bundle",
    "youden_thresholds",
]

FORMAT = "deepchest-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model.json"
OOD_KEYS = ("ood.mean", "ood.precision")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")  # what a folder is searched for
DEFAULT_MAX_BYTES = 25 * 2**20  # an upload over this is refused before it is decoded
MIN_SIDE = 32  # pixels: smaller is an icon, not a radiograph
DEFAULT_MAX_PIXELS = 50_000_000  # ~7,000 x 7,000; a CR/DX plate is at most ~4,300 x 3,500
# a grey radiograph stored as RGB has (almost) equal channels; JPEG chroma noise stays ~1-2
COLOUR_CHROMA = 10.0  # mean of max(R, G, B) - min(R, G, B) over the image, 0 .. 255

#: the keys every model.json holds (load_bundle refuses one without them)
CARD_KEYS = (
    "format",
    "version",
    "backbone",
    "in_channels",
    "findings",
    "preprocessing",
    "training",
    "metrics",
    "thresholds",
    "ood",
    "harness",
    "weights_sha256",
)


class BundleError(ValueError):
    """A model bundle that cannot be used; the message is one line naming the file."""


class ImageError(ValueError):
    """An input that is not a usable chest X-ray image; the message is one line."""


# ---- reading images -----------------------------------------------------------------------


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128 bytes of preamble, then ``DICM``."""
    return len(data) >= 132 and data[128:132] == b"DICM"


DEFLATED = "1.2.840.10008.1.2.1.99"  # the one transfer syntax pydicom inflates whole on read


@functools.cache
def _quiet_pydicom() -> None:
    """pydicom warns, and logs, with the values of tags it finds invalid: never for ours.
    Reading validation is off, and its logger and warnings are silenced (process-wide, once:
    the harness reads DICOM only here)."""
    import logging

    import pydicom

    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    logging.getLogger("pydicom").addFilter(lambda record: False)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")


def _transfer_syntax(data: bytes) -> str | None:
    """The Transfer Syntax UID of a DICOM file's meta group (always explicit VR little
    endian, right after ``DICM``), read without parsing the rest of the file."""
    at = data.find(b"\x02\x00\x10\x00UI", 132, 132 + 8192)
    if at < 0:
        return None
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    return data[at + 8 : at + 8 + length].rstrip(b"\x00 ").decode("ascii", "replace")


def dicom_pixels(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A single-frame grey DICOM file -> uint16 ``[rows, cols]`` where 0 is black.

    The modality LUT (rescale slope and intercept, or the LUT sequence) is applied, then the
    first VOI LUT (its output range: the smallest to the largest entry of the LUT) or else the
    first window (its output range: pydicom's ``apply_windowing`` probed at its extremes),
    mapped linearly to 0 .. 65535. A file without a usable VOI LUT or window, or whose range
    is empty, is mapped from its own minimum to its maximum. MONOCHROME1 (where a higher
    value is darker) is inverted. No tag value reaches a message or a log.

    Raises :class:`ImageError` (one line) for a file pydicom cannot read, a deflated file (it
    would be inflated whole before any check), one without pixel data, a colour or
    multi-frame file, one over ``max_pixels``, compressed pixel data without an installed
    decoder, unusable image attributes, and an image of a single value.
    """
    import pydicom

    _quiet_pydicom()
    if _transfer_syntax(data) == DEFLATED:
        raise ImageError("a deflated DICOM file: convert it to an uncompressed DICOM or PNG")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors, ...
        raise ImageError(f"not a readable DICOM file ({type(exc).__name__})") from None
    try:
        return _grey_pixels(ds, max_pixels)
    except ImageError:
        raise
    except Exception as exc:  # a malformed number, a window of width 0, a broken LUT, ...
        raise ImageError(
            f"a DICOM file whose image attributes cannot be used ({type(exc).__name__})"
        ) from None


def _grey_pixels(ds: Any, max_pixels: int) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    if "PixelData" not in ds:
        raise ImageError("a DICOM file without an image (no pixel data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"a multi-frame DICOM file ({frames} frames): give one radiograph")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        shown = repr(photometric[:16]) if photometric else "an unknown colour space"
        raise ImageError(
            f"a DICOM image in {shown}: a chest X-ray is grey (MONOCHROME1 or MONOCHROME2)"
        )
    _check_size(int(ds.get("Columns", 0)), int(ds.get("Rows", 0)), max_pixels)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or "its transfer syntax"
        raise ImageError(
            f"cannot decode this DICOM's pixel data ({name}; {type(exc).__name__}): install a "
            "decoder for it (pylibjpeg or GDCM) or convert the file to PNG"
        ) from None
    values = np.asarray(apply_modality_lut(pixels, ds))
    low = high = math.nan
    lut = ds.get("VOILUTSequence")
    item = lut[0] if lut else None
    if item is not None and "LUTDescriptor" in item and "LUTData" in item:
        entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        table = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, index=0)
        low, high = float(table.min()), float(table.max())
        values = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        probe = apply_windowing(np.array([-1e12, 1e12]), ds, index=0)
        low, high = float(probe.min()), float(probe.max())
        values = apply_windowing(values.astype(np.float64), ds, index=0)
    values = np.asarray(values, dtype=np.float64)
    if not high > low:  # no VOI transform, or one whose output range is empty
        low, high = float(values.min()), float(values.max())
    if not high > low:
        raise ImageError("a blank image: every pixel has the same value")
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        scaled = 1.0 - scaled
    return np.rint(scaled * 65535.0).astype(np.uint16)


def _check_size(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image over ``max_pixels`` or under :data:`MIN_SIDE` on a side, in one line."""
    if width * height > max_pixels:
        raise ImageError(f"{width} x {height} pixels is over the limit of {max_pixels:,} pixels")
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"{width} x {height} pixels is too small for a radiograph (at least {MIN_SIDE} on "
            "each side)"
        )


def read_image(data: bytes, size: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The bytes of a PNG, JPEG or DICOM file -> uint8 ``[size, size]`` grey, decoded exactly
    as ``harness data prepare`` decoded the training images (``size`` is the model's
    ``preprocessing.decode_size``). Works in memory; nothing is written.

    Raises :class:`ImageError` (one line) for an empty file, a file that is not a PNG, JPEG
    or DICOM image, an image over ``max_pixels`` or under :data:`MIN_SIDE` on a side, a
    colour image (mean chroma over
    :data:`COLOUR_CHROMA`: a photograph, not a radiograph), and an unreadable one.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageError("an empty file (0 bytes)")
    if is_dicom(data):
        return decode_opened(Image.fromarray(dicom_pixels(data, max_pixels)), size)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image: give a PNG, JPEG or DICOM file") from None
    except Exception as exc:  # a truncated header, Pillow's own limit
        raise ImageError(f"unreadable image ({type(exc).__name__})") from None
    if img.format not in ("PNG", "JPEG"):
        raise ImageError(f"a {img.format} image: give a PNG, JPEG or DICOM file")
    _check_size(*img.size, max_pixels)
    chroma = _chroma(img.mode, data)
    if chroma > COLOUR_CHROMA:
        raise ImageError(
            f"a colour image (mean chroma {chroma:.0f} of 255): a chest X-ray is grey, so this "
            "looks like a photograph or a chart, not a radiograph"
        )
    try:
        return decode_opened(img, size)  # still lazy: a JPEG's draft mode applies as in prepare
    except Exception as exc:  # truncated or corrupt data surfaces when decoding
        raise ImageError(f"unreadable image ({one_line(exc)})") from None


def _chroma(mode: str, data: bytes) -> float:
    """Mean of max(R, G, B) - min(R, G, B) over a small copy of a colour image (its own
    opening of ``data``, so the image decoded for the model stays untouched), 0 for a grey
    mode."""
    from PIL import Image

    if mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;"):
        return 0.0
    try:
        with Image.open(io.BytesIO(data)) as small:
            small.draft("RGB", (128, 128))  # JPEG: decode at a fraction of the size
            small.thumbnail((128, 128))
            rgb = np.asarray(small.convert("RGB"), dtype=np.int16)
    except Exception:  # decoding fails later, with its own message
        return 0.0
    return float((rgb.max(axis=2) - rgb.min(axis=2)).mean())


# ---- operating thresholds and the out-of-distribution check --------------------------------


def youden_thresholds(
    probabilities: np.ndarray, labels: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Per finding, the probability threshold maximising Youden's J = TPR - FPR of the rule
    ``p >= threshold`` over the labelled images (``mask``), from scikit-learn's ``roc_curve``.

    ``probabilities``, ``labels`` (0/1), ``mask`` (bool): ``[N, T]``. Returns ``[T]``
    thresholds and, per finding, the rule used: ``"youden_j"``, or ``"default_0.5"`` where
    the split has no positive or no negative to choose from, or where no cut does better
    than chance (J <= 0 everywhere: a score no better than a coin there). Ties go to the
    highest threshold (the most specific of the equally good points).
    """
    from sklearn.metrics import roc_curve

    num_tasks = probabilities.shape[1]
    thresholds = np.full(num_tasks, 0.5)
    rules = ["default_0.5"] * num_tasks
    for t in range(num_tasks):
        keep = mask[:, t].astype(bool)
        y, p = labels[keep, t], probabilities[keep, t]
        if y.size == 0 or y.min() == y.max():
            continue
        fpr, tpr, cut = roc_curve(y, p)
        j = tpr - fpr
        best = int(np.argmax(j))  # roc_curve orders by decreasing threshold: the highest first
        if j[best] <= 0:
            continue  # only the "nothing positive" point (cut = inf) or worse: no better cut
        thresholds[t] = float(cut[best])
        rules[t] = "youden_j"
    return thresholds, rules


def fit_ood(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training features' mean ``[d]`` and Ledoit-Wolf shrunk precision ``[d, d]``
    (scikit-learn's ``LedoitWolf``), from ``features`` ``[N, d]``, N >= 2."""
    from sklearn.covariance import LedoitWolf

    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, d], got shape {features.shape}")
    fitted = LedoitWolf().fit(features.astype(np.float64))
    return fitted.location_, fitted.precision_


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``sqrt((f - mean)^T precision (f - mean))`` per row of ``features`` ``[N, d]`` -> ``[N]``."""
    centred = features.astype(np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, precision, centred), 0.0))


# ---- the bundle ---------------------------------------------------------------------------


@dataclass
class Prediction:
    """One image's result: ``probabilities`` ``[T]`` in the model's finding order, the
    Mahalanobis ``distance`` of its features and whether it is ``in_distribution``."""

    probabilities: np.ndarray
    distance: float
    in_distribution: bool


@dataclass
class Bundle:
    """A loaded model bundle: the network (eval mode, CPU unless moved) and its card."""

    net: MultiTaskNet
    card: dict[str, Any]
    ood_mean: np.ndarray
    ood_precision: np.ndarray
    path: Path

    @property
    def findings(self) -> list[str]:
        return list(self.card["findings"])

    @property
    def decode_size(self) -> int:
        return int(self.card["preprocessing"]["decode_size"])

    @property
    def input_size(self) -> int:
        return int(self.card["preprocessing"]["input_size"])

    @property
    def thresholds(self) -> np.ndarray:
        values = self.card["thresholds"]["values"]
        return np.array([float(values[name]) for name in self.findings])

    @property
    def synthetic(self) -> bool:
        return self.card["training"].get("dataset") == "synthetic"

    def _input(self, images: np.ndarray) -> Tensor:
        # a copy: decoded images and memory-mapped splits may be read-only arrays
        batch = torch.from_numpy(np.array(images, dtype=np.uint8))[:, None]  # [N, 1, S, S]
        device = next(self.net.parameters()).device
        return eval_batch(batch.to(device), self.input_size)

    @torch.inference_mode()
    def features_and_probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[N, S, S]`` (S the decode size) -> (features ``[N, d]``, probabilities
        ``[N, T]``), in batches of 64."""
        feats, probs = [], []
        for i in range(0, len(images), 64):
            representation, logits = self.net(self._input(images[i : i + 64]))
            feats.append(representation.float().cpu().numpy())
            probs.append(torch.sigmoid(logits.float()).cpu().numpy())
        if not feats:
            d = self.net.representation_dim
            return np.zeros((0, d)), np.zeros((0, len(self.findings)))
        return np.concatenate(feats), np.concatenate(probs)

    def predict(self, images: np.ndarray) -> list[Prediction]:
        """uint8 ``[N, S, S]`` images from :func:`read_image` -> one :class:`Prediction` each."""
        features, probabilities = self.features_and_probabilities(images)
        distance = mahalanobis(features, self.ood_mean, self.ood_precision)
        limit = float(self.card["ood"]["threshold"])
        return [
            Prediction(p, float(d), bool(d <= limit))
            for p, d in zip(probabilities, distance, strict=True)
        ]

    def findings_json(self, prediction: Prediction) -> list[dict[str, Any]]:
        """``[{"name", "probability", "threshold", "above"}, ...]`` in the model's order."""
        return [
            {
                "name": name,
                "probability": float(p),
                "threshold": float(c),
                "above": bool(p >= c),
            }
            for name, p, c in zip(
                self.findings, prediction.probabilities, self.thresholds, strict=True
            )
        ]

    def saliency(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM (Selvaraju et al., ICCV 2017) of every finding for one uint8 ``[S, S]``
        image, with captum's ``LayerGradCam`` on :meth:`MultiTaskNet.saliency_layer`:
        float32 ``[T, input_size, input_size]``, each map scaled to 0 .. 1 by its own maximum
        (all zero where no region raises that finding's logit). One batched backward pass:
        the image repeated T times, finding t's logit as row t's target."""
        from captum.attr import LayerAttribution, LayerGradCam

        num = len(self.findings)
        x = self._input(np.repeat(image[None], num, axis=0))
        cam = LayerGradCam(lambda inputs: self.net(inputs)[1], self.net.saliency_layer())
        with torch.enable_grad():
            maps = cam.attribute(x, target=list(range(num)), relu_attributions=True)
        size = (self.input_size, self.input_size)
        maps = LayerAttribution.interpolate(maps.detach(), size, interpolate_mode="bilinear")
        maps = maps[:, 0].clamp_min(0).float().cpu().numpy()
        peak = maps.reshape(num, -1).max(axis=1)
        return (maps / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(
    out: str | Path,
    net: MultiTaskNet,
    card: dict[str, Any],
    ood_mean: np.ndarray,
    ood_precision: np.ndarray,
) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out`` (made if missing; existing
    bundle files are replaced) and return ``out``. ``card`` holds every :data:`CARD_KEYS`
    entry but ``format``, ``version`` and ``weights_sha256``, which are filled in here."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    # float64, as export computed the threshold with them: serving measures the same distances
    tensors["ood.mean"] = torch.from_numpy(np.asarray(ood_mean, dtype=np.float64))
    tensors["ood.precision"] = torch.from_numpy(np.asarray(ood_precision, dtype=np.float64))
    weights = out / WEIGHTS_FILE
    save_file(tensors, str(weights.with_suffix(".tmp")), metadata={"format": FORMAT})
    weights.with_suffix(".tmp").replace(weights)
    weights.chmod(0o644)  # safetensors writes 0600; a bundle is meant to be shared
    full = {"format": FORMAT, "version": FORMAT_VERSION, **card}
    full["weights_sha256"] = file_sha256(weights)
    missing = [k for k in CARD_KEYS if k not in full]
    if missing:
        raise ValueError(f"the model card lacks {', '.join(missing)}")
    text = json.dumps(full, indent=2, allow_nan=False)
    (out / CARD_FILE).with_suffix(".tmp").write_text(text + "\n", encoding="utf-8")
    (out / CARD_FILE).with_suffix(".tmp").replace(out / CARD_FILE)
    return out


def load_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Read a bundle folder (or its ``model.json``) without pickle and check that the card
    and the weights agree (:func:`bundle_from_bytes`).

    Raises :class:`BundleError` (one line naming the file) for a missing or unreadable file,
    a card of another format or version or without a required key, weights that changed
    after export, and weights that do not fit the card's network.
    """
    folder = Path(path)
    if folder.name == CARD_FILE:
        folder = folder.parent
    card_path, weights_path = folder / CARD_FILE, folder / WEIGHTS_FILE
    for needed in (card_path, weights_path):
        if not needed.is_file():
            raise BundleError(f"{needed}: no such file (a bundle is what harness export writes)")
    try:
        card_text, weights = card_path.read_text(encoding="utf-8"), weights_path.read_bytes()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"{folder}: not readable ({one_line(exc)})") from None
    return bundle_from_bytes(card_text, weights, folder, device)


def bundle_from_bytes(
    card_text: str, weights: bytes, source: str | Path = "bundle", device: str = "cpu"
) -> Bundle:
    """A bundle from the text of ``model.json`` and the bytes of ``model.safetensors`` (a
    Ray Serve replica gets them through the object store, with no shared file system),
    checked: the card's format, version and keys, the weights' sha256 against the card, and
    a network built from the card (backbone, findings, input channels) that takes every
    tensor with its shape. ``source`` names the bundle in errors (:class:`BundleError`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    card_path, weights_path = Path(source) / CARD_FILE, Path(source) / WEIGHTS_FILE
    try:
        card = json.loads(card_text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{card_path}: not readable JSON ({one_line(exc)})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise BundleError(f"{card_path}: not a {FORMAT} card")
    if card.get("version") != FORMAT_VERSION:
        raise BundleError(
            f"{card_path}: version {card.get('version')!r}; this harness reads version "
            f"{FORMAT_VERSION}"
        )
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise BundleError(f"{card_path}: lacks {', '.join(missing)}")
    if hashlib.sha256(weights).hexdigest() != card["weights_sha256"]:
        raise BundleError(
            f"{weights_path}: its sha256 is not the one {CARD_FILE} records (the weights "
            "changed after export, or the files come from two bundles)"
        )
    try:
        tensors = load_safetensors(weights)
    except (SafetensorError, ValueError) as exc:
        raise BundleError(f"{weights_path}: not readable safetensors ({one_line(exc)})") from None
    try:
        ood_mean, ood_precision = (tensors.pop(k).double().numpy() for k in OOD_KEYS)
    except KeyError:
        raise BundleError(f"{weights_path}: lacks the out-of-distribution statistics") from None
    try:
        net = MultiTaskNet(
            card["backbone"], len(card["findings"]), in_channels=int(card["in_channels"])
        )
        net.load_state_dict(tensors, strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise BundleError(
            f"{weights_path}: does not fit the network that {CARD_FILE} describes "
            f"({card.get('backbone')!r}, {len(card.get('findings') or [])} findings: "
            f"{one_line(exc)})"
        ) from None
    if ood_mean.shape != (net.representation_dim,):
        raise BundleError(f"{weights_path}: ood.mean does not fit {card['backbone']!r}")
    if problem := _card_problem(card):
        raise BundleError(f"{card_path}: {problem}")
    net.eval().to(device)
    return Bundle(net, card, ood_mean, ood_precision, Path(source))


def _card_problem(card: dict[str, Any]) -> str | None:
    """What prediction needs from a card and this one lacks, in a few words; None if whole:
    a finite threshold per finding, positive decode and input sizes, a finite OOD threshold."""

    def number(value: Any) -> bool:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )

    values = (card.get("thresholds") or {}).get("values")
    if not isinstance(values, dict) or not all(number(values.get(n)) for n in card["findings"]):
        return "thresholds.values needs a finite number for every finding"
    sizes = card.get("preprocessing") or {}
    for key in ("decode_size", "input_size"):
        if not (isinstance(sizes.get(key), int) and sizes[key] > 0):
            return f"preprocessing.{key} must be a positive whole number"
    if not number((card.get("ood") or {}).get("threshold")):
        return "ood.threshold must be a number"
    return None


def grey_png(image: np.ndarray) -> bytes:
    """A PNG of the grey uint8 ``[H, W]`` image (what the model saw, before its resize)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> bytes:
    """A PNG of the grey ``image`` (uint8 ``[H, W]``) with ``heat`` (0 .. 1, resized to the
    image) over it in matplotlib's ``inferno`` colour map, more opaque where it is hotter."""
    from matplotlib import colormaps
    from PIL import Image

    grey = Image.fromarray(image).convert("RGB")
    heat_img = Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize(
        grey.size, Image.Resampling.BILINEAR
    )
    level = np.asarray(heat_img, dtype=np.float32) / 255.0
    colour = colormaps["inferno"](level)[..., :3] * 255.0
    weight = (alpha * level)[..., None]
    mixed = (1.0 - weight) * np.asarray(grey, dtype=np.float32) + weight * colour
    buffer = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(np.rint(mixed), 0, 255))).save(buffer, format="PNG")
    return buffer.getvalue()
