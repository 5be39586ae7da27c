"""Synthetic chest-X-ray-like images with the label statistics of NIH ChestX-ray14.

``generate`` draws grayscale frontal "radiographs" (body outline, lung fields, ribs,
clavicles, mediastinum, heart, diaphragm, lung markings) with per-image variation in pose,
size, brightness and contrast, and paints each of the 14 NIH findings with its own visual
signature. Labels come from the Gaussian copula in :mod:`deepchest.findings`, so prevalences
and co-occurrence follow NIH; the strength of each finding's signature follows CheXNet's
per-finding AUROC, so the findings that are hard for a real model are hard here too.

Everything is deterministic from ``seed`` (CPU ``torch.Generator`` streams), vectorised in
torch, and fast: 3000 images at 64 px take about a second on one core.
See docs/synthetic-data.md for where every number comes from and the measured learnability.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import TYPE_CHECKING

import lazy_loader

from deepchest.data.base import LabeledImages
from deepchest.findings import (
    BOX_CENTRE_SIZE,
    CHEXNET_AUROC,
    COPULA_CORRELATION,
    COPULA_THRESHOLDS,
    FINDINGS,
)

if TYPE_CHECKING:
    import torch
    from torch import Tensor
else:
    torch = lazy_loader.load("torch")

__all__ = [
    "DEFAULT_LABEL_NOISE",
    "DEFAULT_PREVALENCE_FLOOR",
    "NOISE_TASK_PREVALENCE",
    "SIGNAL_STRENGTH",
    "generate",
    "synthetic_splits",
    "target_prevalences",
]

# A floor of 5 % gives every finding >= ~100 positives in a 2100-image training split and
# ~20 in a 450-image test split (the quickstart), enough for a stable per-task AUROC.
DEFAULT_PREVALENCE_FLOOR = 0.05
# 5 % of each finding's positives are relabelled negative (and as many negatives positive).
DEFAULT_LABEL_NOISE = 0.05
# Noise tasks are fair coins: the largest, least predictable gradients an extra task can give.
NOISE_TASK_PREVALENCE = 0.5

MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024
_CHUNK_PIXELS = 2**21  # pixels rendered at once (8 MB per float tensor): bounds memory

# Signature strength per finding = calibration x difficulty factor. The calibration says how
# visible each kind of signature is to a small CNN at 64 px; it was tuned with the quickstart
# recipe (docs/synthetic-data.md) towards a test AUROC of 0.835 + 0.8 (CheXNet AUROC - mean).
# The difficulty factor grows with CheXNet's AUROC: the findings that are hard for a real
# model get fainter signatures.
_CALIBRATION: dict[str, float] = {
    "Atelectasis": 1.47,
    "Cardiomegaly": 1.93,
    "Effusion": 0.89,
    "Infiltration": 3.02,
    "Mass": 1.61,
    "Nodule": 2.00,
    "Pneumonia": 2.01,
    "Pneumothorax": 1.36,
    "Consolidation": 1.02,
    "Edema": 0.63,
    "Emphysema": 0.91,
    "Fibrosis": 1.28,
    "Pleural_Thickening": 1.20,
    "Hernia": 2.39,
}
_DIFFICULTY_SLOPE = 0.5  # strength multiplier per 0.1 AUROC, as exp(slope * delta)
_AUROC_CENTRE = sum(CHEXNET_AUROC.values()) / len(CHEXNET_AUROC)


def _signal_strength() -> dict[str, float]:
    return {
        name: _CALIBRATION[name]
        * math.exp(_DIFFICULTY_SLOPE * (CHEXNET_AUROC[name] - _AUROC_CENTRE) / 0.1)
        for name in FINDINGS
    }


# read-only: the renderer reads it at call time
SIGNAL_STRENGTH: dict[str, float] = _signal_strength()

# Streams of random numbers, so that e.g. adding noise tasks or label noise leaves the images
# and the clean labels unchanged.
_STREAM_LABELS, _STREAM_IMAGES, _STREAM_FLIPS, _STREAM_NOISE_TASKS, _STREAM_PIXELS = range(5)


def _generator(seed: int, stream: int) -> torch.Generator:
    mixed = (seed * 0x9E3779B97F4A7C15 + (stream + 1) * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    return torch.Generator(device="cpu").manual_seed(mixed)


def _integer(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high], or a ValueError that names the argument."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {span}, got {value!r}")
    return number


def _fraction(name: str, value, low: float, high: float, *, high_open: bool = False) -> float:
    """``value`` as a float in [low, high] (or [low, high)), else a ValueError naming it."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    ok = low <= number < high if high_open else low <= number <= high
    if not ok:
        raise ValueError(
            f"{name} must be in [{low}, {high}{')' if high_open else ']'}, got {value!r}"
        )
    return number


def _thresholds(prevalence_floor: float) -> Tensor:
    """Copula thresholds, each lowered where needed so that P(z_k > t_k) >= floor."""
    real = torch.tensor([COPULA_THRESHOLDS[name] for name in FINDINGS], dtype=torch.float64)
    if prevalence_floor <= 0:
        return real
    floor = torch.special.ndtri(torch.tensor(1.0 - prevalence_floor, dtype=torch.float64))
    return torch.minimum(real, floor)


def target_prevalences(prevalence_floor: float = DEFAULT_PREVALENCE_FLOOR) -> dict[str, float]:
    """The prevalence each finding is drawn with: max(NIH prevalence, floor), as the copula
    gives it (within 0.07 points of NIH's table)."""
    t = _thresholds(prevalence_floor)
    return {name: float(1.0 - torch.special.ndtr(t[k])) for k, name in enumerate(FINDINGS)}


# ---------------------------------------------------------------------------------------
# drawing helpers; every shape tensor is [n, H, W], per-image parameters are [n, 1, 1]


def _col(x: Tensor) -> Tensor:
    return x.view(-1, 1, 1)


def _uniform(g: torch.Generator, n: int, low: float, high: float) -> Tensor:
    return _col(low + (high - low) * torch.rand(n, generator=g))


def _sign(g: torch.Generator, n: int) -> Tensor:
    return _col(torch.randint(0, 2, (n,), generator=g).float() * 2 - 1)


def _ramp(r: Tensor, power, edge: float) -> Tensor:
    """Inside-ness of a shape whose radius is ``rho = r ** (1 / power)``: exactly 1 inside,
    0 outside, and a linear ramp ``edge`` wide (in rho) across the boundary, using
    ``r ~ 1 + power * (rho - 1)`` near it. Resolution-independent contrast, anti-aliased."""
    return ((1 - r) / (power * edge) + 0.5).clamp(0, 1)


def _ellipse(u: Tensor, v: Tensor, cx, cy, ax, ay, edge: float, boxy: bool = False) -> Tensor:
    """Ellipse mask (a power-4 super-ellipse if ``boxy``): 1 inside, 0 outside, with a
    linear edge ``edge`` wide in units of the radius."""
    x = (u - cx) / ax
    y = (v - cy) / ay
    r = x * x + y * y
    power = 2.0
    if boxy:
        x = x * x
        y = y * y
        r = x * x + y * y
        power = 4.0
    return _ramp(r, power, edge)


def _gauss(u: Tensor, v: Tensor, cx, cy, sx, sy) -> Tensor:
    """Separable Gaussian bump (cheap when u and v are a row and a column)."""
    return torch.exp(-0.5 * ((u - cx) / sx) ** 2) * torch.exp(-0.5 * ((v - cy) / sy) ** 2)


def _field(g: torch.Generator, n: int, res: int, size: int) -> Tensor:
    """A smooth random field, ~N(0, 1) per pixel, correlated over 1 / res of the image (the
    same field at every image size)."""
    coarse = torch.randn(n, 1, res, res, generator=g)
    fine = torch.nn.functional.interpolate(
        coarse, size=(size, size), mode="bilinear", align_corners=False
    )
    return fine[:, 0] / 0.72  # bilinear upsampling shrinks the std to ~0.72


def _lung(u: Tensor, v: Tensor, cx, cy, ax, ay, edge: float) -> Tensor:
    """A lung field: narrow rounded apex, wide base with a flat diaphragm and sharp
    costophrenic angles (a super-ellipse whose power grows from 2 at the apex to 4 at the
    base, and whose width grows downwards)."""
    t = ((v - cy) / ay).clamp(-1, 1)
    power = 2.0 + 2.0 * torch.sigmoid(4 * t)
    x = ((u - cx) / (ax * (0.8 + 0.25 * t))).abs().clamp(min=1e-6)
    y = ((v - cy) / ay).abs().clamp(min=1e-6)
    r = torch.exp(power * torch.log(x)) + torch.exp(power * torch.log(y))
    return _ramp(r, power, edge)


class _Anatomy:
    """Per-image anatomy and exposure parameters for a chunk of ``n`` images, in normalised
    patient coordinates (u to the image's right, v down; the patient's right lung is on the
    image's left, as in a PA film)."""

    def __init__(self, g: torch.Generator, n: int):
        self.dx = _uniform(g, n, -0.04, 0.04)  # pose: shift, scale, aspect
        self.dy = _uniform(g, n, -0.04, 0.04)
        self.sx = _uniform(g, n, 0.9, 1.08)
        self.sy = self.sx * _uniform(g, n, 0.95, 1.05)
        self.body_w = _uniform(g, n, 0.42, 0.5)
        self.lung_ax = _uniform(g, n, 0.125, 0.145)
        self.lung_ay = _uniform(g, n, 0.26, 0.3)
        self.lung_gap = _uniform(g, n, 0.165, 0.185)  # lung centre to midline
        self.heart_ax = _uniform(g, n, 0.14, 0.19)
        self.heart_ay = _uniform(g, n, 0.105, 0.135)
        self.heart_cx = _uniform(g, n, 0.53, 0.56)
        self.rib_phase = _uniform(g, n, 0.0, 1.0)
        self.rib_spacing = _uniform(g, n, 0.065, 0.08)
        self.lung_dark = _uniform(g, n, 0.26, 0.34)
        self.markings = _uniform(g, n, 0.05, 0.08)
        self.brightness = _uniform(g, n, -0.06, 0.06)
        self.contrast = _uniform(g, n, 0.85, 1.15)
        self.gamma = _uniform(g, n, 0.85, 1.15)
        self.smooth_noise = _uniform(g, n, 0.02, 0.05)
        self.pixel_noise = _uniform(g, n, 0.015, 0.035)


def _coords(an: _Anatomy, size: int) -> tuple[Tensor, Tensor]:
    """Patient coordinates of the pixel columns, u ``[n, 1, S]``, and rows, v ``[n, S, 1]``:
    the inverse of each image's pose. Shapes broadcast to ``[n, S, S]``."""
    p = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    u = 0.5 + (p.view(1, 1, -1) - 0.5 - an.dx) / an.sx
    v = 0.5 + (p.view(1, -1, 1) - 0.5 - an.dy) / an.sy
    return u, v


def _box(name: str) -> tuple[float, float, float, float]:
    (x, y), (w, h) = BOX_CENTRE_SIZE[name]
    return x, y, w, h


def _render_chunk(
    g: torch.Generator, g_pixel: torch.Generator, labels: Tensor, size: int
) -> Tensor:
    """Images in [0, 1], float ``[n, S, S]``, showing the clean labels ``labels`` [n, 14]."""
    n = labels.shape[0]
    an = _Anatomy(g, n)
    u, v = _coords(an, size)
    edge = 1.5 / size / 0.15  # ~1.5 px soft edges on a structure of radius ~0.15
    present = {name: labels[:, k] > 0.5 for k, name in enumerate(FINDINGS)}
    # per-image intensity of every finding (0 where absent): a wide range, so that faint
    # cases overlap the normal variation and no finding is trivially separable
    spread = 0.2 + 1.6 * torch.rand(n, len(FINDINGS), generator=g)
    amp = {
        name: _col(present[name].float() * SIGNAL_STRENGTH[name] * spread[:, k])
        for k, name in enumerate(FINDINGS)
    }

    # --- anatomy, with the findings that change it ----------------------------------------
    emph = amp["Emphysema"]  # hyperinflated (taller), hyperlucent lungs with fewer markings
    grow = 1 + 0.6 * torch.tanh(amp["Cardiomegaly"] / 2)  # enlarged heart shadow, <= 1.6x
    lung_ay = an.lung_ay * (1 + 0.06 * emph)
    lung_cy = 0.45 + 0.5 * (lung_ay - an.lung_ay)
    lung_l = _lung(u, v, 0.5 - an.lung_gap, lung_cy, an.lung_ax, lung_ay, edge)
    lung_r = _lung(u, v, 0.51 + an.lung_gap, lung_cy - 0.01, an.lung_ax * 0.95, lung_ay, edge)
    lungs = lung_l + lung_r
    body = _ellipse(u, v, 0.5, 0.6, an.body_w, 0.62, edge, boxy=True)
    heart = _ellipse(
        u, v, an.heart_cx, 0.61 - 0.03 * (grow - 1), an.heart_ax * grow, an.heart_ay * grow, edge
    )
    du = (u - 0.5).abs()
    mediast = torch.sigmoid((0.05 + 0.025 * (v - 0.1).clamp(0, 0.6) - du) / 0.008)
    spine = torch.sigmoid((0.028 - du) / 0.006)
    aorta = _ellipse(u, v, 0.56, 0.29, 0.04, 0.035, edge)
    ribs = torch.cos(2 * math.pi * ((v + 2.5 * (du - 0.15) ** 2) / an.rib_spacing + an.rib_phase))
    ribs = ribs.clamp(min=0)
    ribs = ribs * ribs * ribs
    clavicles = torch.sigmoid((0.018 - (v - 0.16 - 0.2 * (du - 0.05)).abs()) / 0.006)
    clavicles = clavicles * torch.sigmoid((0.3 - du) / 0.02)
    abdomen = torch.sigmoid((v - 0.72) / 0.03)
    # lung markings: vessels fanning out from the hila, a faint texture
    hilum = torch.exp(-torch.sqrt((du - 0.12) ** 2 + (v - 0.47) ** 2) / 0.14)
    markings = _field(g, n, 10, size).abs() * hilum
    markings = markings * an.markings * (1 - 0.6 * emph.clamp(max=1))

    findings = torch.zeros(n, size, size)

    def sub(name: str) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        idx = present[name].nonzero().flatten()
        return idx, u[idx], v[idx], amp[name][idx], len(idx)

    # Pneumothorax: the apical-lateral part of one lung loses its markings and darkens, and
    # a thin bright visceral pleural line marks the edge of the collapsed lung.
    idx, ui, vi, a, m = sub("Pneumothorax")
    if m:
        _, _, bw, bh = _box("Pneumothorax")
        side = _sign(g, m)
        cx = 0.5 + side * an.lung_gap[idx]
        shrink = 1 - _uniform(g, m, 0.5, 1.0) * bw  # the box size sets the gap's width
        inner = _lung(
            ui,
            vi,
            cx - side * 0.02,
            lung_cy[idx] + 0.5 * bh * (1 - shrink),
            an.lung_ax[idx] * shrink,
            lung_ay[idx] * (1 - bh * (1 - shrink)),
            edge,
        )
        lung = torch.where(side < 0, lung_l[idx], lung_r[idx])
        gap = lung * (1 - inner)
        markings[idx] = markings[idx] * (1 - gap)
        findings[idx] += a * (-0.12 * gap + 0.4 * inner * (1 - inner) * lung)

    # the heart and mediastinum hide the lung behind them
    air = an.lung_dark * (1 + 0.2 * emph) * lungs * (1 - 0.9 * heart) * (1 - mediast)
    density = (
        0.45 * body
        - air
        + 0.12 * torch.maximum(heart, mediast)
        + 0.08 * spine
        + 0.1 * aorta
        + 0.06 * ribs * (0.4 * body + lungs)
        + 0.12 * clavicles
        + 0.06 * abdomen * body
        + markings * lungs
    )

    # --- findings that add density ----------------------------------------------------------
    # Atelectasis: a thin linear (plate-like) band in the lower-mid lung, box-sized
    idx, ui, vi, a, m = sub("Atelectasis")
    if m:
        _, by, bw, bh = _box("Atelectasis")
        cx = 0.5 + _sign(g, m) * (an.lung_gap[idx] + _uniform(g, m, -0.04, 0.04))
        cy = by + _uniform(g, m, -bh / 2, bh / 2)
        th = _uniform(g, m, -0.4, 0.4)
        half_len = bw / 2 * _uniform(g, m, 0.8, 1.2)
        along = (ui - cx) * torch.cos(th) + (vi - cy) * torch.sin(th)
        across = (vi - cy) * torch.cos(th) - (ui - cx) * torch.sin(th)
        band = torch.exp(-0.5 * (across / 0.012) ** 2)
        band = band * torch.sigmoid((half_len - along.abs()) / 0.01)
        findings[idx] += 0.35 * a * band

    # Effusion: fluid at one lung base (both in 30 %), blunting the costophrenic angle, with
    # a meniscus that rises laterally; its depth is a fraction of the box height
    idx, ui, vi, a, m = sub("Effusion")
    if m:
        _, _, _, bh = _box("Effusion")
        depth = bh * _uniform(g, m, 0.3, 0.7)
        both = (torch.rand(m, 1, 1, generator=g) < 0.3).float()
        side = _sign(g, m)
        fluid = 0
        for s, lung in ((-1.0, lung_l[idx]), (1.0, lung_r[idx])):
            lateral = ((ui - 0.5) * s - an.lung_gap[idx]) / an.lung_ax[idx]
            level = lung_cy[idx] + lung_ay[idx] - depth * (1 + 0.6 * lateral.clamp(-0.5, 1))
            on = torch.maximum(both, (side == s).float())
            fluid = fluid + on * lung * torch.sigmoid((vi - level) / 0.015)
        findings[idx] += 0.3 * a * fluid

    # Infiltration: ill-defined patches scattered over a box-sized region of one lung
    idx, ui, vi, a, m = sub("Infiltration")
    if m:
        bx, by, bw, bh = _box("Infiltration")
        cx = 0.5 + _sign(g, m) * (an.lung_gap[idx] + _uniform(g, m, -0.03, 0.03))
        cy = by + _uniform(g, m, -bh / 3, bh / 3)
        patches = _field(g, m, 8, size).clamp(min=0)
        findings[idx] += 0.2 * a * _gauss(ui, vi, cx, cy, bw / 2, bh / 2) * patches * lungs[idx]

    # Mass: a larger, well-defined round opacity; Nodule: a small round bright spot; both
    # anywhere in a lung, sized from the box
    for name, soft, gain in (("Mass", 0.15, 0.3), ("Nodule", 0.2, 0.35)):
        idx, ui, vi, a, m = sub(name)
        if not m:
            continue
        _, _, bw, bh = _box(name)
        r = torch.sqrt(torch.rand(m, 1, 1, generator=g)) * 0.65
        phi = 2 * math.pi * torch.rand(m, 1, 1, generator=g)
        cx = 0.5 + _sign(g, m) * an.lung_gap[idx] + r * torch.cos(phi) * an.lung_ax[idx]
        cy = lung_cy[idx] + r * torch.sin(phi) * an.lung_ay[idx]
        rad = (bw + bh) / 4 * _uniform(g, m, 0.75, 1.25)
        blob = _ellipse(ui, vi, cx, cy, rad, rad * _uniform(g, m, 0.85, 1.15), soft)
        findings[idx] += gain * a * blob

    # Pneumonia: one large, fluffy opacity in the lower-mid lung
    idx, ui, vi, a, m = sub("Pneumonia")
    if m:
        _, by, bw, bh = _box("Pneumonia")
        cx = 0.5 + _sign(g, m) * (an.lung_gap[idx] + _uniform(g, m, -0.03, 0.03))
        cy = by + _uniform(g, m, -bh / 4, bh / 4)
        texture = 0.6 + 0.4 * _field(g, m, 5, size).clamp(-1, 1)
        findings[idx] += 0.28 * a * _gauss(ui, vi, cx, cy, bw / 3, bh / 3) * texture * lungs[idx]

    # Consolidation (no NIH box): a dense, homogeneous, fairly sharp opacity in a lower zone
    idx, ui, vi, a, m = sub("Consolidation")
    if m:
        cx = 0.5 + _sign(g, m) * (an.lung_gap[idx] + _uniform(g, m, -0.03, 0.03))
        cy = _uniform(g, m, 0.52, 0.62)
        ax, ay = _uniform(g, m, 0.07, 0.1), _uniform(g, m, 0.06, 0.09)
        findings[idx] += 0.3 * a * _ellipse(ui, vi, cx, cy, ax, ay, 0.1) * lungs[idx]

    # Edema (no box): a bilateral, hazy, perihilar ("bat-wing") opacity
    idx, ui, vi, a, m = sub("Edema")
    if m:
        haze = _gauss((ui - 0.5).abs(), vi, 0.12, 0.46, 0.09, 0.12)
        findings[idx] += 0.25 * a * haze * lungs[idx]

    # Fibrosis (no box): a reticular (net-like) texture, peripheral and basal, both lungs
    idx, ui, vi, a, m = sub("Fibrosis")
    if m:
        net = torch.exp(-((_field(g, m, 16, size) / 0.3) ** 2))
        where = torch.sigmoid(((ui - 0.5).abs() - 0.14) / 0.03) * torch.sigmoid((vi - 0.35) / 0.05)
        findings[idx] += 0.25 * a * net * where * lungs[idx]

    # Pleural_Thickening (no box): a bright rim along the lateral chest wall, one side or both
    idx, ui, vi, a, m = sub("Pleural_Thickening")
    if m:
        thick = _uniform(g, m, 0.018, 0.03)
        both = (torch.rand(m, 1, 1, generator=g) < 0.4).float()
        side = _sign(g, m)
        rim = 0
        for s, lung in ((-1.0, lung_l[idx]), (1.0, lung_r[idx])):
            cx = 0.5 + s * an.lung_gap[idx]
            inner = _lung(
                ui, vi, cx - s * thick, lung_cy[idx], an.lung_ax[idx] - thick, lung_ay[idx], edge
            )
            lateral = torch.sigmoid(((ui - cx) * s) / 0.03)
            on = torch.maximum(both, (side == s).float())
            rim = rim + on * (lung - inner).clamp(min=0) * lateral
        findings[idx] += 0.4 * a * rim

    # Hernia (no box): a round retrocardiac opacity with a gas bubble (hiatal hernia)
    idx, ui, vi, a, m = sub("Hernia")
    if m:
        cx = _uniform(g, m, 0.48, 0.54)
        cy = _uniform(g, m, 0.63, 0.68)
        rad = _uniform(g, m, 0.045, 0.065)
        sac = _ellipse(ui, vi, cx, cy, rad * 1.2, rad, 0.12)
        gas = sac * torch.sigmoid((cy - 0.3 * rad - vi) / 0.01)
        findings[idx] += a * (0.25 * sac - 0.45 * gas)

    # --- exposure and noise ---------------------------------------------------------------
    img = an.contrast * (density + findings) + 0.08 + an.brightness
    img = img + an.smooth_noise * _field(g, n, 6, size)
    img = img.clamp(0, 1).pow(an.gamma)
    img = img + an.pixel_noise * torch.randn(n, size, size, generator=g_pixel)
    return img.clamp(0, 1)


def generate(
    num_samples: int,
    image_size: int,
    *,
    seed: int = 0,
    prevalence_floor: float = DEFAULT_PREVALENCE_FLOOR,
    noise_tasks: int = 0,
    label_noise: float = DEFAULT_LABEL_NOISE,
) -> LabeledImages:
    """``num_samples`` synthetic chest X-rays, uint8 ``[N, 1, S, S]``, with labels for the 14
    NIH findings (``FINDINGS`` order) followed by ``noise_tasks`` tasks ``noise_1..noise_K``.

    - Labels: Gaussian copula of :mod:`deepchest.findings`, each threshold lowered so that the
      prevalence is ``max(NIH, prevalence_floor)`` (0 keeps NIH's prevalences).
    - ``label_noise`` q: after the image is drawn from the clean labels, each positive label
      becomes negative with probability q and each negative becomes positive with probability
      q * p / (1 - p) (p = the finding's prevalence): a fraction q of positives is wrong and
      prevalence is unchanged.
    - Noise tasks: Bernoulli(0.5), independent of everything else (unlearnable).
    - The images depend only on ``num_samples``, ``image_size``, ``seed`` and
      ``prevalence_floor``; label noise and noise tasks leave them, and the clean labels, as
      they are. Same arguments give bit-identical tensors.
    """
    num_samples = _integer("num_samples", num_samples, 1)
    image_size = _integer("image_size", image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    seed = _integer("seed", seed, -(2**63))
    prevalence_floor = _fraction("prevalence_floor", prevalence_floor, 0.0, 0.5)
    noise_tasks = _integer("noise_tasks", noise_tasks, 0, 10_000)
    label_noise = _fraction("label_noise", label_noise, 0.0, 0.5, high_open=True)
    t = _thresholds(prevalence_floor)
    corr = torch.tensor(COPULA_CORRELATION, dtype=torch.float64)
    chol = torch.linalg.cholesky(corr)
    g_labels = _generator(seed, _STREAM_LABELS)
    z = torch.randn(num_samples, len(FINDINGS), generator=g_labels, dtype=torch.float64)
    clean = (z @ chol.T > t).float()

    g_images = _generator(seed, _STREAM_IMAGES)
    g_pixels = _generator(seed, _STREAM_PIXELS)
    images = torch.empty(num_samples, 1, image_size, image_size, dtype=torch.uint8)
    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))
    for start in range(0, num_samples, chunk):
        stop = min(start + chunk, num_samples)
        img = _render_chunk(g_images, g_pixels, clean[start:stop], image_size)
        images[start:stop, 0] = (img * 255).round_().to(torch.uint8)

    labels = clean
    if label_noise > 0:
        p = (1 - torch.special.ndtr(t)).float()
        g_flips = _generator(seed, _STREAM_FLIPS)
        r = torch.rand(num_samples, len(FINDINGS), generator=g_flips)
        flip_prob = torch.where(clean > 0.5, label_noise, label_noise * p / (1 - p))
        labels = torch.where(r < flip_prob, 1 - clean, clean)

    names = tuple(FINDINGS)
    if noise_tasks:
        g_noise = _generator(seed, _STREAM_NOISE_TASKS)
        noise = (
            torch.rand(num_samples, noise_tasks, generator=g_noise) < NOISE_TASK_PREVALENCE
        ).float()
        labels = torch.cat([labels, noise], dim=1)
        names += tuple(f"noise_{i + 1}" for i in range(noise_tasks))

    labels = labels.to(torch.float32).contiguous()
    mask = torch.ones(labels.shape, dtype=torch.bool)
    return LabeledImages(images, labels, mask, names)


def split_sizes(num_samples: int, val_fraction: float, test_fraction: float) -> tuple[int, ...]:
    """``(train, val, test)`` sample counts of ``synthetic_splits``."""
    n_val = round(num_samples * val_fraction)
    n_test = round(num_samples * test_fraction)
    return num_samples - n_val - n_test, n_val, n_test


@functools.lru_cache(maxsize=8)
def synthetic_splits(
    num_samples: int,
    image_size: int,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    **generate_kwargs,
) -> dict[str, LabeledImages]:
    """``generate(num_samples, ...)`` cut into ``"train"``, ``"val"`` and ``"test"`` (in
    that order along the sample axis; samples are i.i.d., so this is a random split).

    Cached in-process on the arguments: do not modify the returned tensors in place.
    """
    num_samples = _integer("num_samples", num_samples, 1)
    val_fraction = _fraction("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
    test_fraction = _fraction("test_fraction", test_fraction, 0.0, 1.0, high_open=True)
    n_train, n_val, n_test = split_sizes(num_samples, val_fraction, test_fraction)
    if n_train < 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} leave no training "
            f"samples out of num_samples={num_samples}"
        )
    data = generate(num_samples, image_size, seed=seed, **generate_kwargs)
    cuts = {
        "train": slice(0, n_train),
        "val": slice(n_train, n_train + n_val),
        "test": slice(n_train + n_val, num_samples),
    }
    return {
        name: LabeledImages(data.images[cut], data.labels[cut], data.mask[cut], data.task_names)
        for name, cut in cuts.items()
    }
