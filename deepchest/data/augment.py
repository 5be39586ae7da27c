"""Batch augmentation as tensor ops on the training device, after the batch is formed.

``augment_batch`` takes a uint8 batch ``[B, C, H, W]`` (on CPU or CUDA) and returns float32
model input ``[B, C, S, S]`` (``S = out_size``), already through ``to_model_input``'s
normalisation. Per image it draws a random resized crop, a rotation, an optional horizontal
flip, and brightness / contrast jitter. ``eval_batch`` is the deterministic counterpart: a
plain resize and the same normalisation.

Geometry. Coordinates are ``affine_grid``'s normalised ones (``-1`` .. ``1`` across the image,
``align_corners=False``, so pixel centres sit at ``(2i + 1) / n - 1``). An output point ``u``
samples the input at ``A u + t`` with::

    A = D^-1 R(phi) D diag(f w, h),    t = (c_x, c_y),    D = diag(W, H)

where ``w``, ``h`` are the crop's width and height as fractions of the image's,
``w = min(1, sqrt(s r))`` and ``h = min(1, sqrt(s / r))`` for area fraction ``s`` and aspect
ratio ``r = w / h`` (where the clamp bites, the crop spans the full width or height and its
area, ``sqrt(s / r)`` or ``sqrt(s r)``, lies between ``1 / r`` or ``r`` and ``s``: inside the
default scale range); ``c`` is its centre, uniform over the positions that keep the unrotated
crop inside the image (``|c_x| <= 1 - w``, ``|c_y| <= 1 - h``); ``R(phi)`` is the rotation by
``phi`` about the crop's centre, in pixel units (hence the ``D`` conjugation, which matters
only for non-square inputs); ``f = -1`` for a horizontal flip, else ``1``. Crop, rotation,
resize and flip are one affine grid (``F.affine_grid``'s, computed as a broadcast sum, which
is much faster on the CPU) and one ``grid_sample`` call (bilinear).

Padding. Points outside the image (the corners that rotation brings in) read ``0``, sampled on
raw intensities, so they are black, as the collimated border of a radiograph is; ``border``
would smear the edge rows (often burnt-in markers and text) into streaks. With the default
ranges they are thin slivers along the edges (at 7 degrees and full scale, at most about 6 %
of the side deep). The identity transform samples pixel centres exactly, so no
padding leaks in there.

Sampling is bilinear without antialiasing, which is fine while the crop is resized by a
factor near 1 (a 256 px pack to 224 px with the defaults: 0.87 to 1.03); a pack much larger
than ``out_size`` would alias and should be packed smaller.

Jitter, on the warped intensities ``x`` (0 .. 255) with the image's mean ``m`` (over its
channels and pixels) and brightness ``b``, contrast ``c`` drawn per image::

    y = clamp(m + (1 + c) (x - m) + 255 b, 0, 255)

so contrast scales the spread about the image's own mean (which stays, short of the clamp)
and brightness shifts the mean by ``b`` in units of the full intensity range. ``y`` then goes
through ``to_model_input``; as that is affine (``z = z0 + k y``) it is folded into the jitter,
so the batch sees one multiply-add and one clamp (to ``[z0, z0 + 255 k]``) after the warp.

Randomness. All random numbers (8 uniforms per image, drawn whatever the settings, so a
seeded stream advances the same way for any settings) come from ``generator`` on the CPU, and
reach the device in one small transfer: a seed gives the same draws on every device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as F

from deepchest.data import to_model_input

__all__ = ["AugmentSettings", "augment_batch", "eval_batch"]

_DRAWS = 8  # uniforms per image: scale, log-ratio, centre x, centre y, angle, flip, b, c


def _pair(name: str, value: object) -> tuple[float, float]:
    try:
        if isinstance(value, str):
            raise TypeError
        lo, hi = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"augment.{name}: expected a pair (low, high), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise ValueError(f"augment.{name}: expected finite low <= high, got ({lo}, {hi})")
    return lo, hi


def _amount(name: str, value: object, upper: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"augment.{name}: expected a number, got {value!r}")
    if not 0.0 <= float(value) < upper:
        raise ValueError(f"augment.{name}: expected 0 <= value < {upper:g}, got {value}")
    return float(value)


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges for ``augment_batch``; each image draws uniformly within them.

    ``scale``: crop area as a fraction of the image, ``0 < low <= high <= 1``.
    ``ratio``: crop aspect ratio width / height, ``0 < low <= high``, drawn log-uniformly.
    ``rotation``: the angle is uniform in ``[-rotation, rotation]`` degrees, ``0 <= . < 90``.
    ``brightness``, ``contrast``: ``b``, ``c`` uniform in ``[-x, x]``, ``0 <= x < 1``.
    ``hflip``: horizontal flip with probability 0.5; off by default, since a chest is not
    left-right symmetric (heart on the left).
    ``enabled``: False turns augmentation off entirely (``augment_batch`` is then
    ``eval_batch``); ``AugmentSettings.none()`` is that.
    Lists are accepted for the pairs (as a YAML file gives them) and stored as tuples.
    """

    scale: tuple[float, float] = (0.8, 1.0)
    ratio: tuple[float, float] = (0.9, 1.1)
    rotation: float = 7.0
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: bool = False
    enabled: bool = True

    def __post_init__(self) -> None:
        scale = _pair("scale", self.scale)
        ratio = _pair("ratio", self.ratio)
        if scale[0] <= 0.0 or scale[1] > 1.0:
            raise ValueError(f"augment.scale: expected 0 < low <= high <= 1, got {scale}")
        if ratio[0] <= 0.0:
            raise ValueError(f"augment.ratio: expected 0 < low <= high, got {ratio}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "ratio", ratio)
        object.__setattr__(self, "rotation", _amount("rotation", self.rotation, 90.0))
        object.__setattr__(self, "brightness", _amount("brightness", self.brightness, 1.0))
        object.__setattr__(self, "contrast", _amount("contrast", self.contrast, 1.0))
        for name in ("hflip", "enabled"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"augment.{name}: expected true or false, got {value!r}")

    @classmethod
    def none(cls) -> AugmentSettings:
        """No augmentation: ``augment_batch`` returns exactly ``eval_batch``."""
        return cls(enabled=False)


def _check(images: Tensor, out_size: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if isinstance(out_size, bool) or not isinstance(out_size, int) or out_size < 1:
        raise ValueError(f"out_size must be a positive int, got {out_size!r}")


def eval_batch(images: Tensor, out_size: int) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 model input ``[B, C, out_size, out_size]``, no randomness.

    Exactly ``to_model_input(images)`` when ``H == W == out_size``; otherwise a bilinear
    ``F.interpolate`` (``align_corners=False``, antialiased when either side shrinks) of the
    0 .. 255 intensities, then ``to_model_input``.
    """
    _check(images, out_size)
    h, w = images.shape[-2:]
    if h == w == out_size:
        return to_model_input(images)
    x = F.interpolate(
        images.float(),
        size=(out_size, out_size),
        mode="bilinear",
        align_corners=False,
        antialias=max(h, w) > out_size,
    )
    return to_model_input(x)


def _parameters(u: Tensor, settings: AugmentSettings, h: int, w: int) -> Tensor:
    """Uniforms ``[B, 8]`` (float64, CPU) -> ``[B, 8]``: the affine ``theta`` (6) then b, c."""
    s_lo, s_hi = settings.scale
    r_lo, r_hi = settings.ratio
    scale = s_lo + (s_hi - s_lo) * u[:, 0]
    ratio = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[:, 1])
    cw = torch.sqrt(scale * ratio).clamp(max=1.0)
    ch = torch.sqrt(scale / ratio).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - cw)
    cy = (2 * u[:, 3] - 1) * (1 - ch)
    phi = math.radians(settings.rotation) * (2 * u[:, 4] - 1)
    flip = 1.0 - 2.0 * ((u[:, 5] < 0.5) & settings.hflip).double()
    cos, sin = torch.cos(phi), torch.sin(phi)
    # A = D^-1 R D diag(f w, h), D = diag(W, H): rotation in pixel units
    theta = torch.stack(
        [
            cos * flip * cw,
            -sin * (h / w) * ch,
            cx,
            sin * (w / h) * flip * cw,
            cos * ch,
            cy,
        ],
        dim=1,
    )
    b = settings.brightness * (2 * u[:, 6] - 1)
    c = settings.contrast * (2 * u[:, 7] - 1)
    return torch.cat([theta, b[:, None], c[:, None]], dim=1)


def _affine_grid(theta: Tensor, size: int) -> Tensor:
    """``F.affine_grid(theta, [B, C, size, size], align_corners=False)`` as a broadcast sum.

    Same grid (to float rounding), but on the CPU ``affine_grid`` is a batched matrix product
    with an inner size of 3, which took about 25 ms for B = 64 at 224 px on 2 threads against
    under 1 ms for this sum; on CUDA both are negligible.
    """
    base = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    along_x = theta[:, :, 0, None] * base  # [B, 2, S]: A[:, k, 0] x_j
    along_y = theta[:, :, 1, None] * base + theta[:, :, 2, None]  # A[:, k, 1] y_i + t_k
    return along_x.transpose(1, 2)[:, None, :, :] + along_y.transpose(1, 2)[:, :, None, :]


def augment_batch(
    images: Tensor,
    out_size: int,
    *,
    generator: torch.Generator | None = None,
    settings: AugmentSettings = AugmentSettings(),  # frozen: one shared default is safe
) -> Tensor:
    """uint8 ``[B, C, H, W]`` -> float32 model input ``[B, C, out_size, out_size]``, augmented.

    One random crop + rotation + (optional) flip + resize per image as a single affine grid
    and ``grid_sample`` (bilinear, zero = black padding), then brightness and contrast
    jitter and ``to_model_input`` (folded into one multiply-add and clamp, since both are
    affine); formulas in the module docstring. Random numbers
    come from ``generator`` (a CPU generator; the default one when None). With
    ``settings.enabled`` False this is ``eval_batch(images, out_size)`` and draws nothing.
    """
    _check(images, out_size)
    if not settings.enabled:
        return eval_batch(images, out_size)
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
    n, _, h, w = images.shape
    u = torch.rand(n, _DRAWS, generator=generator, dtype=torch.float64)
    p = _parameters(u, settings, h, w).to(device=images.device, dtype=torch.float32)
    theta = p[:, :6].view(n, 2, 3)
    grid = _affine_grid(theta, out_size)
    x = F.grid_sample(
        images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    b = p[:, 6].view(n, 1, 1, 1)
    c = p[:, 7].view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    # y = m + (1 + c)(x - m) + 255 b = (1 + c) x + (255 b - c m), then to_model_input, which
    # is affine (z = z0 + k y), folded in: one multiply-add and one clamp over the batch
    z0, z255 = to_model_input(torch.tensor([0.0, 255.0])).tolist()
    k = (z255 - z0) / 255.0
    return torch.addcmul(k * (255.0 * b - c * mean) + z0, x, k * (1.0 + c)).clamp_(z0, z255)
