"""Batch augmentation on the training device: shapes, normalisation, determinism, the flip
default, the bounds of rotation, crop scale and aspect, brightness and contrast, settings checks,
and CPU / CUDA agreement."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch.nn import functional as F

from deepchest.data import to_model_input
from deepchest.data.augment import AugmentSettings, _affine_grid, augment_batch, eval_batch

# every random transform off, but still through the affine_grid / grid_sample path
OFF = AugmentSettings(scale=(1, 1), ratio=(1, 1), rotation=0, brightness=0, contrast=0)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_images(b: int = 4, c: int = 1, h: int = 32, w: int = 32, seed: int = 0):
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=_gen(seed))


def _intensity(x: torch.Tensor) -> torch.Tensor:
    """Model input back to 0 .. 255 grey levels (inverse of ``to_model_input``)."""
    return (x * 0.25 + 0.5) * 255.0


@pytest.mark.parametrize(
    ("c", "h", "w", "out"), [(1, 32, 32, 24), (1, 32, 32, 40), (3, 32, 32, 32), (1, 24, 40, 32)]
)
def test_shapes_dtypes(c, h, w, out):
    images = _random_images(3, c, h, w)
    for y in (augment_batch(images, out, generator=_gen()), eval_batch(images, out)):
        assert y.shape == (3, c, out, out)
        assert y.dtype == torch.float32
        assert y.device == images.device
        assert torch.isfinite(y).all()


def test_eval_same_size_is_to_model_input():
    images = _random_images()
    assert torch.equal(eval_batch(images, 32), to_model_input(images))


@pytest.mark.parametrize("out", [16, 48])
def test_eval_resize_is_interpolate_then_normalise(out):
    images = _random_images()
    ref = F.interpolate(
        images.float(), size=(out, out), mode="bilinear", align_corners=False, antialias=out < 32
    )
    torch.testing.assert_close(eval_batch(images, out), to_model_input(ref))
    flat = torch.full((2, 1, 32, 32), 77, dtype=torch.uint8)
    expected = to_model_input(torch.full((2, 1, out, out), 77, dtype=torch.uint8))
    torch.testing.assert_close(eval_batch(flat, out), expected)


@pytest.mark.parametrize("size", [1, 7, 32])
def test_grid_is_affine_grid(size):
    theta = torch.randn(5, 2, 3, generator=_gen(1))
    ref = F.affine_grid(theta, [5, 1, size, size], align_corners=False)
    torch.testing.assert_close(_affine_grid(theta, size), ref, atol=1e-6, rtol=0)


def test_augment_with_everything_off_is_identity():
    images = _random_images(6, 1, 32, 32)
    y = augment_batch(images, 32, generator=_gen(), settings=OFF)
    torch.testing.assert_close(y, to_model_input(images), atol=1e-5, rtol=0)


def test_augment_off_upsampling_matches_eval_in_the_interior():
    images = _random_images(4, 1, 32, 32)
    y = augment_batch(images, 48, generator=_gen(), settings=OFF)
    ref = eval_batch(images, 48)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("out", [32, 24])
def test_none_settings_is_eval_batch(out):
    images = _random_images()
    y = augment_batch(images, out, generator=_gen(), settings=AugmentSettings.none())
    assert torch.equal(y, eval_batch(images, out))
    assert AugmentSettings.none().enabled is False


def test_seeded_generator_is_deterministic_and_seeds_differ():
    images = _random_images(8, 1, 48, 48)
    a = augment_batch(images, 40, generator=_gen(5))
    b = augment_batch(images, 40, generator=_gen(5))
    c = augment_batch(images, 40, generator=_gen(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the default generator works too, and under a global seed repeats
    torch.manual_seed(1)
    d = augment_batch(images, 40)
    torch.manual_seed(1)
    assert torch.equal(d, augment_batch(images, 40))


def _left_right_image(n: int, size: int = 32) -> torch.Tensor:
    img = torch.full((n, 1, size, size), 50, dtype=torch.uint8)
    img[..., : size // 2] = 200
    return img


def _left_minus_right(y: torch.Tensor) -> torch.Tensor:
    half = y.shape[-1] // 2
    return y[..., :half].mean(dim=(1, 2, 3)) - y[..., half:].mean(dim=(1, 2, 3))


def test_no_flip_by_default():
    y = augment_batch(_left_right_image(300), 32, generator=_gen(2))
    assert (_left_minus_right(y) > 0.5).all()


def test_hflip_flips_about_half():
    settings = AugmentSettings(hflip=True)
    y = augment_batch(_left_right_image(300), 32, generator=_gen(2), settings=settings)
    d = _left_minus_right(y)
    assert (d.abs() > 0.5).all()
    assert 0.35 < (d > 0).float().mean().item() < 0.65
    # with the geometry otherwise off, each image is exactly itself or its mirror
    images = _random_images(40, 1, 16, 16)
    y = augment_batch(images, 16, generator=_gen(3), settings=replace(OFF, hflip=True))
    same = (y - to_model_input(images)).abs().amax(dim=(1, 2, 3)) < 1e-4
    mirror = (y - to_model_input(images.flip(-1))).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert (same ^ mirror).all()
    assert same.any() and mirror.any()


def _bar_angles(y: torch.Tensor) -> torch.Tensor:
    """Angle (degrees) of each image's bright bar from the vertical, from second moments."""
    v = _intensity(y[:, 0]).clamp(min=0)
    n = y.shape[-1]
    ys, xs = torch.meshgrid(
        torch.arange(n, dtype=v.dtype), torch.arange(n, dtype=v.dtype), indexing="ij"
    )
    mass = v.sum(dim=(1, 2))
    mx = (v * xs).sum(dim=(1, 2)) / mass
    my = (v * ys).sum(dim=(1, 2)) / mass
    dx, dy = xs - mx[:, None, None], ys - my[:, None, None]
    cxx = (v * dx * dx).sum(dim=(1, 2))
    cyy = (v * dy * dy).sum(dim=(1, 2))
    cxy = (v * dx * dy).sum(dim=(1, 2))
    return torch.rad2deg(0.5 * torch.atan2(2 * cxy, cyy - cxx))


@pytest.mark.parametrize("degrees", [7.0, 30.0])
def test_rotation_bounded(degrees):
    size = 64
    bar = torch.zeros((200, 1, size, size), dtype=torch.uint8)
    bar[..., 12:52, 31:33] = 255
    settings = AugmentSettings(
        scale=(1, 1), ratio=(1, 1), rotation=degrees, brightness=0, contrast=0
    )
    angles = _bar_angles(augment_batch(bar, size, generator=_gen(4), settings=settings))
    # a rotation, not a shear: a horizontal bar turns by the same angle (the transpose mirrors)
    across = augment_batch(bar.transpose(-1, -2), size, generator=_gen(4), settings=settings)
    torch.testing.assert_close(_bar_angles(across.transpose(-1, -2)), -angles, atol=0.3, rtol=0)
    assert angles.abs().max().item() <= degrees + 0.5
    assert angles.max().item() > 0.8 * degrees
    assert angles.min().item() < -0.8 * degrees
    # without rotation the bar stays vertical
    assert (
        _bar_angles(augment_batch(bar[:4], size, generator=_gen(4), settings=OFF)).abs().max()
        < 1e-3
    )


def test_rotation_is_in_pixel_units_for_non_square_inputs():
    """A 64 x 128 input rotates like a square one, then its height is stretched by 2 into the
    square output (128 px, no downsampling): a vertical bar turned by a comes out at
    atan(tan(a) / 2) from the vertical, a horizontal one at atan(2 tan(a)) from the horizontal."""
    settings = AugmentSettings(scale=(1, 1), ratio=(1, 1), rotation=30, brightness=0, contrast=0)
    square = torch.zeros((50, 1, 64, 64), dtype=torch.uint8)
    square[..., 12:52, 31:33] = 255
    wide = torch.zeros((50, 1, 64, 128), dtype=torch.uint8)
    wide[..., 12:52, 62:66] = 255
    a = _bar_angles(augment_batch(square, 64, generator=_gen(5), settings=settings))
    b = _bar_angles(augment_batch(wide, 128, generator=_gen(5), settings=settings))
    expected = torch.rad2deg(torch.atan(torch.tan(torch.deg2rad(a)) / 2))
    torch.testing.assert_close(b, expected, atol=0.5, rtol=0)
    # a horizontal bar: its slope doubles (the transpose mirrors the angle)
    wide = torch.zeros((50, 1, 64, 128), dtype=torch.uint8)
    wide[..., 31:33, 44:84] = 255
    across = augment_batch(wide, 128, generator=_gen(5), settings=settings)
    c = _bar_angles(across.transpose(-1, -2))
    expected = -torch.rad2deg(torch.atan(torch.tan(torch.deg2rad(a)) * 2))
    torch.testing.assert_close(c, expected, atol=0.5, rtol=0)


def _disc(n: int, size: int, radius: float) -> torch.Tensor:
    c = torch.arange(size, dtype=torch.float64) + 0.5 - size / 2
    inside = (c[None, :] ** 2 + c[:, None] ** 2) <= (radius * size / 2) ** 2
    return (inside * 255).to(torch.uint8).expand(n, 1, size, size)


@pytest.mark.parametrize(("scale", "radius"), [((0.8, 1.0), 0.5), ((0.5, 0.6), 0.25)])
def test_crop_scale_and_aspect_bounds(scale, radius):
    size = 128
    images = _disc(200, size, radius)
    settings = AugmentSettings(scale=scale, brightness=0, contrast=0)  # default ratio, rotation
    v = _intensity(augment_batch(images, size, generator=_gen(7), settings=settings)[:, 0])
    inside = (v > 127.5).double()
    area_in = (images[0, 0] > 127).double().mean()
    s_hat = area_in / inside.mean(dim=(1, 2))  # content area fraction the crop covered
    lo, hi = scale
    assert s_hat.min().item() > lo - 0.02 and s_hat.max().item() < hi + 0.02
    assert s_hat.min().item() < lo + 0.1 * (hi - lo) + 0.01
    assert s_hat.max().item() > hi - 0.1 * (hi - lo) - 0.01
    # aspect: the disc's x spread is 1 / w, its y spread 1 / h, so spread_y / spread_x = w / h
    c = torch.arange(size, dtype=torch.float64)
    mass = inside.sum(dim=(1, 2))
    mx = (inside * c[None, None, :]).sum(dim=(1, 2)) / mass
    my = (inside * c[None, :, None]).sum(dim=(1, 2)) / mass
    sx = (inside * (c[None, None, :] - mx[:, None, None]) ** 2).sum(dim=(1, 2))
    sy = (inside * (c[None, :, None] - my[:, None, None]) ** 2).sum(dim=(1, 2))
    r_hat = (sy / sx).sqrt()
    assert r_hat.min().item() > 0.9 - 0.02 and r_hat.max().item() < 1.1 + 0.02
    assert r_hat.min().item() < 0.93 and r_hat.max().item() > 1.06


def test_brightness_bounds_on_constant_image():
    images = torch.full((300, 1, 16, 16), 60, dtype=torch.uint8)
    settings = AugmentSettings(scale=(1, 1), ratio=(1, 1), rotation=0, brightness=0.1)
    v = _intensity(augment_batch(images, 16, generator=_gen(8), settings=settings))
    # a constant image stays constant, whatever the contrast (it pivots on the image's mean)
    assert (v.amax(dim=(1, 2, 3)) - v.amin(dim=(1, 2, 3))).max().item() < 1e-3
    b = (v[:, 0, 0, 0] - 60) / 255
    assert b.abs().max().item() <= 0.1 + 1e-5
    assert b.min().item() < -0.09 and b.max().item() > 0.09


def test_contrast_bounds_keep_the_mean():
    images = torch.full((300, 1, 16, 16), 40, dtype=torch.uint8)
    images[..., 8:] = 104  # mean 72: the pivot is the image's mean, not mid-grey
    settings = AugmentSettings(scale=(1, 1), ratio=(1, 1), rotation=0, brightness=0, contrast=0.1)
    v = _intensity(augment_batch(images, 16, generator=_gen(9), settings=settings))
    torch.testing.assert_close(v.mean(dim=(1, 2, 3)), torch.full((300,), 72.0), atol=1e-3, rtol=0)
    factor = (v[:, 0, 0, 15] - v[:, 0, 0, 0]) / 64
    assert factor.min().item() >= 0.9 - 1e-5 and factor.max().item() <= 1.1 + 1e-5
    assert factor.min().item() < 0.91 and factor.max().item() > 1.09


def test_jitter_clamps_to_the_intensity_range():
    images = torch.full((100, 1, 8, 8), 250, dtype=torch.uint8)
    settings = AugmentSettings(scale=(1, 1), ratio=(1, 1), rotation=0, brightness=0.5)
    y = augment_batch(images, 8, generator=_gen(), settings=settings)
    assert y.max().item() <= to_model_input(torch.tensor(255)).item() + 1e-6


def test_lists_accepted_and_stored_as_tuples():
    s = AugmentSettings(scale=[0.5, 0.9], ratio=[1, 1])
    assert s.scale == (0.5, 0.9) and s.ratio == (1.0, 1.0)
    assert s == AugmentSettings(scale=(0.5, 0.9), ratio=(1.0, 1.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scale": (0.0, 1.0)},
        {"scale": (0.9, 0.8)},
        {"scale": (0.8, 1.2)},
        {"scale": (0.8,)},
        {"scale": "ab"},
        {"scale": (float("nan"), 1.0)},
        {"ratio": (0.0, 1.0)},
        {"ratio": (1.2, 1.1)},
        {"rotation": -1},
        {"rotation": 90},
        {"rotation": "7"},
        {"brightness": 1.0},
        {"contrast": -0.1},
        {"hflip": "yes"},
        {"hflip": 1},
        {"enabled": None},
    ],
)
def test_bad_settings_raise_one_line(kwargs):
    with pytest.raises(ValueError) as err:
        AugmentSettings(**kwargs)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"augment.{next(iter(kwargs))}")


def test_bad_arguments_raise():
    images = _random_images()
    with pytest.raises(ValueError, match="out_size"):
        augment_batch(images, 0)
    with pytest.raises(ValueError, match="out_size"):
        eval_batch(images, 0)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        augment_batch(images[0], 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu_under_the_same_seed():
    images = _random_images(16, 1, 64, 64)
    settings = AugmentSettings(hflip=True)
    cpu = augment_batch(images, 48, generator=_gen(11), settings=settings)
    gpu = augment_batch(images.cuda(), 48, generator=_gen(11), settings=settings)
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    torch.testing.assert_close(gpu.cpu(), cpu, atol=2e-3, rtol=0)
    torch.testing.assert_close(eval_batch(images.cuda(), 48).cpu(), eval_batch(images, 48))
    torch.testing.assert_close(eval_batch(images.cuda(), 64).cpu(), eval_batch(images, 64))
    assert math.isfinite(gpu.sum().item())
