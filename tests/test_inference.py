"""deepchest.inference: image reading (training's decoding, DICOM on a real radiograph),
operating thresholds and the out-of-distribution distance by hand, the bundle's round trip
and its refusals, and Grad-CAM maps."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file
from sklearn.metrics import roc_curve

from deepchest import inference as inf
from deepchest.data.prepare import decode_image
from deepchest.models import MultiTaskNet
from tests.bundles import make_bundle, png_bytes

DICOM = Path(get_testdata_file("RG1_UNCR.dcm"))  # pydicom-data: an adult PA chest radiograph


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return make_bundle(tmp_path / "model", findings=("A", "B", "C"), size=32)


# ---- images -------------------------------------------------------------------------------


def test_dicom_is_decoded_the_right_way_round():
    """MONOCHROME1 inverted and windowed: the lungs (left and right of the middle, at mid
    height) are darker than the spine between them and the shoulders' soft tissue."""
    image = inf.read_image(DICOM.read_bytes(), 256)
    assert image.dtype == np.uint8 and image.shape == (256, 256)
    lungs = (image[90:150, 50:90].mean() + image[90:150, 166:206].mean()) / 2
    spine = image[90:150, 118:138].mean()
    assert lungs < spine - 20
    ds = pydicom.dcmread(DICOM)
    assert ds.PhotometricInterpretation == "MONOCHROME1"  # so the inversion was exercised


def test_a_dicom_and_a_16_bit_png_of_its_pixels_decode_the_same():
    pixels = inf.dicom_pixels(DICOM.read_bytes())
    assert pixels.dtype == np.uint16 and pixels.shape == (1955, 1841)
    png = png_bytes(pixels)
    assert Image.open(io.BytesIO(png)).mode.startswith("I;16")
    assert np.array_equal(inf.read_image(DICOM.read_bytes(), 64), inf.read_image(png, 64))


@pytest.mark.parametrize("kind", ["png8", "png16", "jpeg", "rgb_grey"])
def test_prediction_decodes_exactly_as_prepare_did(tmp_path, kind):
    """The bytes of a file give the array that ``harness data prepare`` stored for it."""
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(300, 220), dtype=np.uint8)
    path = tmp_path / ("x.jpg" if kind == "jpeg" else "x.png")
    if kind == "png16":
        Image.fromarray(grey.astype(np.uint16) * 257).save(path)
    elif kind == "jpeg":
        Image.fromarray(grey).save(path, quality=90)
    elif kind == "rgb_grey":
        Image.fromarray(np.stack([grey] * 3, axis=2)).save(path)
    else:
        Image.fromarray(grey).save(path)
    assert np.array_equal(inf.read_image(path.read_bytes(), 64), decode_image(path, 64))


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "an empty file (0 bytes)"),
        (b"just some text\n", "not an image: give a PNG, JPEG or DICOM file"),
        (  # a whole header, then the pixel data cut in half
            png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))[:2000],
            "unreadable image",
        ),
    ],
)
def test_bad_files_are_refused_in_one_line(data, reason):
    with pytest.raises(inf.ImageError) as exc:
        inf.read_image(data, 32)
    assert str(exc.value).startswith(reason) and "\n" not in str(exc.value)


def test_colour_photographs_and_oversized_images_are_refused():
    rng = np.random.default_rng(2)
    photo = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    with pytest.raises(inf.ImageError, match="a colour image"):
        inf.read_image(png_bytes(photo), 32)
    grey_rgb = np.repeat(rng.integers(0, 256, size=(64, 64, 1), dtype=np.uint8), 3, axis=2)
    assert inf.read_image(png_bytes(grey_rgb), 32).shape == (32, 32)  # grey stored as RGB
    with pytest.raises(inf.ImageError, match=r"64 x 64 pixels is over the limit of 4,000"):
        inf.read_image(png_bytes(grey_rgb), 32, max_pixels=4000)
    with pytest.raises(inf.ImageError, match=r"1841 x 1955 pixels is over the limit"):
        inf.read_image(DICOM.read_bytes(), 32, max_pixels=1_000_000)
    gif = io.BytesIO()
    Image.fromarray(grey_rgb[..., 0]).save(gif, format="GIF")
    with pytest.raises(inf.ImageError, match="a GIF image: give a PNG, JPEG or DICOM file"):
        inf.read_image(gif.getvalue(), 32)


def test_dicom_refusals_never_name_the_patient(tmp_path):
    ds = pydicom.dcmread(DICOM)
    name = str(ds.PatientName)
    ds.NumberOfFrames = 2
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(inf.ImageError, match=r"a multi-frame DICOM file \(2 frames\)") as exc:
        inf.read_image(buffer.getvalue(), 32)
    assert name not in str(exc.value)
    ds = pydicom.dcmread(DICOM)
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(inf.ImageError, match="a DICOM file without an image"):
        inf.read_image(buffer.getvalue(), 32)


# ---- thresholds and the out-of-distribution distance --------------------------------------


def test_youden_threshold_by_hand_and_against_sklearn():
    """Scores 0.1 0.4 0.35 0.8 with labels 0 0 1 1: cutting at 0.35 gives TPR 1, FPR 0.5
    (J 0.5); at 0.8, TPR 0.5, FPR 0 (J 0.5); at 0.4, TPR 0.5, FPR 0.5. Two points tie at
    J = 0.5: the highest threshold, 0.8, is taken. A finding with one class keeps 0.5."""
    p = np.array([[0.1, 0.2], [0.4, 0.3], [0.35, 0.9], [0.8, 0.1]])
    y = np.array([[0, 1], [0, 1], [1, 1], [1, 1]], dtype=float)
    mask = np.ones_like(y, dtype=bool)
    thresholds, rules = inf.youden_thresholds(p, y, mask)
    assert thresholds[0] == pytest.approx(0.8) and rules == ["youden_j", "default_0.5"]
    assert thresholds[1] == 0.5
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=(200, 1)).astype(float)
    scores = np.clip(labels * 0.3 + rng.normal(0.4, 0.2, size=(200, 1)), 0, 1)
    fpr, tpr, cut = roc_curve(labels[:, 0], scores[:, 0])
    (ours,), _ = inf.youden_thresholds(scores, labels, np.ones_like(labels, dtype=bool))
    j = tpr - fpr
    assert ours == pytest.approx(cut[np.flatnonzero(j == j.max())[0]])


def test_masked_labels_are_left_out_of_the_threshold():
    p = np.array([[0.9], [0.2], [0.6], [0.1]])
    y = np.array([[1.0], [0.0], [0.0], [0.0]])
    keep = np.array([[True], [True], [False], [True]])  # 0.6 is an unknown label
    (threshold,), _ = inf.youden_thresholds(p, y, keep)
    assert threshold == pytest.approx(0.9)


def test_mahalanobis_by_hand():
    """With precision diag(1/4, 1) the distance of (2, 1) from (0, 0) is sqrt(1 + 1)."""
    d = inf.mahalanobis(np.array([[2.0, 1.0], [0.0, 0.0]]), np.zeros(2), np.diag([0.25, 1.0]))
    assert d == pytest.approx([np.sqrt(2.0), 0.0])
    rng = np.random.default_rng(4)
    features = rng.normal(size=(500, 3)) * [1.0, 2.0, 3.0]
    mean, precision = inf.fit_ood(features)
    assert mean == pytest.approx(features.mean(axis=0))
    assert np.linalg.inv(precision) == pytest.approx(np.diag([1.0, 4.0, 9.0]), abs=0.5)


# ---- the bundle ---------------------------------------------------------------------------


def test_bundle_round_trip_without_pickle_gives_the_same_logits(bundle_dir):
    torch.manual_seed(0)
    source = MultiTaskNet("simple_cnn", 3).eval()  # the same seed: the weights written above
    bundle = inf.load_bundle(bundle_dir)
    image = np.random.default_rng(5).integers(0, 256, size=(2, 32, 32), dtype=np.uint8)
    x = (torch.from_numpy(image)[:, None].float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        expected = torch.sigmoid(source(x)[1]).numpy()
    _, probabilities = bundle.features_and_probabilities(image)
    assert probabilities == pytest.approx(expected, abs=1e-6)
    header = (bundle_dir / inf.WEIGHTS_FILE).read_bytes()[:8]
    assert header != b"\x80\x02\x8a\x0a" and not header.startswith(b"PK")  # not pickle or zip
    found = bundle.findings_json(bundle.predict(image[:1])[0])
    assert [f["name"] for f in found] == ["A", "B", "C"]
    assert all(f["above"] == (f["probability"] >= 0.5) for f in found)


def test_a_bundle_whose_card_and_weights_disagree_is_refused(bundle_dir, tmp_path):
    meta = json.loads((bundle_dir / inf.CARD_FILE).read_text())
    # weights changed after export
    weights = bundle_dir / inf.WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(inf.BundleError, match="its sha256 is not the one model.json records"):
        inf.load_bundle(bundle_dir)
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    # a card that describes another network (4 findings) with the right checksum
    (bundle_dir / inf.CARD_FILE).write_text(json.dumps({**meta, "findings": ["A", "B", "C", "D"]}))
    with pytest.raises(inf.BundleError, match="does not fit the network that model.json"):
        inf.load_bundle(bundle_dir)
    (bundle_dir / inf.CARD_FILE).write_text(json.dumps({**meta, "backbone": "resnet18"}))
    with pytest.raises(inf.BundleError, match="does not fit the network"):
        inf.load_bundle(bundle_dir)
    (bundle_dir / inf.CARD_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(inf.BundleError, match="version 99; this harness reads version 1"):
        inf.load_bundle(bundle_dir)
    with pytest.raises(inf.BundleError, match="no such file"):
        inf.load_bundle(tmp_path / "nowhere")


def test_grad_cam_maps_are_per_finding_and_scaled(bundle_dir):
    bundle = inf.load_bundle(bundle_dir)
    image = inf.read_image(DICOM.read_bytes(), 32)
    maps = bundle.saliency(image)
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    for m in maps:
        assert m.max() in (0.0, pytest.approx(1.0))
    png = inf.overlay_png(image, maps[0])
    assert Image.open(io.BytesIO(png)).size == (32, 32)


def test_compressed_colour_and_multi_frame_dicom_files_are_refused_in_one_line():
    """pydicom's own sample files: JPEG Lossless needs pylibjpeg or GDCM (neither is a
    dependency), SC_rgb is RGB, emri_small has 10 frames."""
    import importlib.util

    if any(importlib.util.find_spec(m) for m in ("pylibjpeg", "gdcm")):
        pytest.skip("a JPEG Lossless decoder is installed here")
    cases = {
        "JPEG-LL.dcm": "cannot decode this DICOM's pixel data (JPEG Lossless",
        "SC_rgb.dcm": "a DICOM image in 'RGB': a chest X-ray is grey",
        "emri_small.dcm": "a multi-frame DICOM file (10 frames): give one radiograph",
    }
    for name, reason in cases.items():
        with pytest.raises(inf.ImageError) as exc:
            inf.read_image(Path(get_testdata_file(name)).read_bytes(), 32)
        assert str(exc.value).startswith(reason) and "\n" not in str(exc.value), name


def dicom_bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_voi_lut_window_and_rescale_against_pydicom():
    """pydicom's own sample files, each against pydicom's own transform: vlut_04 (a VOI LUT
    whose entries span 0 .. 65535: the output is pydicom's exactly), MR_small (a window on
    signed 16-bit: pydicom's windowing over its output range -32768 .. 32767) and CT_small
    (a rescale, no window: its own minimum to maximum)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    ds = pydicom.dcmread(get_testdata_file("vlut_04.dcm"))
    ours = inf.dicom_pixels(Path(get_testdata_file("vlut_04.dcm")).read_bytes())
    assert np.array_equal(ours, apply_voi_lut(ds.pixel_array, ds))
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    assert ds.PixelRepresentation == 1 and ds.BitsStored == 16
    windowed = apply_windowing(ds.pixel_array.astype(float), ds)
    expected = np.rint((windowed + 32768) / 65535 * 65535).astype(np.uint16)
    ours = inf.dicom_pixels(Path(get_testdata_file("MR_small.dcm")).read_bytes())
    assert np.abs(ours.astype(int) - expected.astype(int)).max() <= 1
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds).astype(float)
    expected = np.rint((hu - hu.min()) / (hu.max() - hu.min()) * 65535).astype(np.uint16)
    ours = inf.dicom_pixels(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    assert np.array_equal(ours, expected)


def _frames_ab_c(ds) -> bytes:
    """NumberOfFrames written as 'ab c' (pydicom refuses to set it, so the bytes are edited)."""
    ds.NumberOfFrames = 2
    data = dicom_bytes(ds)
    element = b"(\x00\x08\x00IS\x02\x002 "
    assert data.count(element) == 1
    return data.replace(element, b"(\x00\x08\x00IS\x04\x00ab c")


def _set(**values):
    def change(ds) -> bytes:
        for key, value in values.items():
            setattr(ds, key, value)
        return dicom_bytes(ds)

    return change


@pytest.mark.parametrize(
    "change, reason",
    [
        (_frames_ab_c, "a DICOM file whose image attributes cannot be used"),
        (_set(WindowWidth=0), "a DICOM file whose image attributes cannot be used"),
        (_set(PhotometricInterpretation="MONO\nCHROME<"), "a DICOM image in 'MONO\\nCHROME<'"),
    ],
)
def test_malformed_dicom_attributes_are_one_line_and_never_logged(change, reason, caplog):
    data = change(pydicom.dcmread(DICOM))
    with caplog.at_level("DEBUG"), _no_warnings(), pytest.raises(inf.ImageError) as exc:
        inf.read_image(data, 32)
    assert str(exc.value).startswith(reason) and "\n" not in str(exc.value)
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]


class _no_warnings:
    """Fail on any warning raised inside (pydicom's carry tag values)."""

    def __enter__(self):
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self.seen = self._catch.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catch.__exit__(*exc)
        assert [str(w.message) for w in self.seen] == []


def test_deflated_and_blank_dicom_files_are_refused():
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with pytest.raises(inf.ImageError, match="^a deflated DICOM file: convert it"):
        inf.read_image(dicom_bytes(ds), 32)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = np.zeros((ds.Rows, ds.Columns), dtype=np.int16).tobytes()
    with pytest.raises(inf.ImageError, match="^a blank image: every pixel has the same value"):
        inf.read_image(dicom_bytes(ds), 32)


def test_an_rgb_jpeg_decodes_exactly_as_prepare_did(tmp_path):
    """The colour check opens its own copy: the image decoded for the model keeps JPEG's
    draft mode, as prepare's decoding had it."""
    grey = np.random.default_rng(7).integers(0, 256, size=(1024, 1024), dtype=np.uint8)
    path = tmp_path / "x.jpg"
    Image.fromarray(np.stack([grey] * 3, axis=2)).save(path, quality=92)
    assert np.array_equal(inf.read_image(path.read_bytes(), 256), decode_image(path, 256))


def test_batched_grad_cam_equals_one_finding_at_a_time(bundle_dir):
    from captum.attr import LayerAttribution, LayerGradCam

    bundle = inf.load_bundle(bundle_dir)
    image = inf.read_image(DICOM.read_bytes(), 32)
    maps = bundle.saliency(image)
    x = bundle._input(image[None])
    cam = LayerGradCam(lambda inputs: bundle.net(inputs)[1], bundle.net.saliency_layer())
    for t in range(len(bundle.findings)):
        single = cam.attribute(x, target=t, relu_attributions=True)
        single = LayerAttribution.interpolate(single.detach(), (32, 32), "bilinear")[0, 0]
        single = single.clamp_min(0).numpy()
        expected = single / single.max() if single.max() > 0 else single
        assert maps[t] == pytest.approx(expected, abs=1e-5)


def test_a_finding_no_better_than_chance_on_val_keeps_0_5():
    p = np.array([[0.9], [0.8], [0.2], [0.1]])
    y = np.array([[0.0], [0.0], [1.0], [1.0]])  # every positive scored below every negative
    (threshold,), (rule,) = inf.youden_thresholds(p, y, np.ones_like(y, dtype=bool))
    assert threshold == 0.5 and rule == "default_0.5"


def test_a_card_without_what_prediction_needs_is_refused(bundle_dir):
    meta = json.loads((bundle_dir / inf.CARD_FILE).read_text())
    broken = {**meta, "thresholds": {**meta["thresholds"], "values": {"A": 0.5, "B": 0.5}}}
    (bundle_dir / inf.CARD_FILE).write_text(json.dumps(broken))
    with pytest.raises(inf.BundleError, match="thresholds.values needs a finite number"):
        inf.load_bundle(bundle_dir)
    broken = {**meta, "preprocessing": {"decode_size": 32}}
    (bundle_dir / inf.CARD_FILE).write_text(json.dumps(broken))
    with pytest.raises(inf.BundleError, match="preprocessing.input_size must be a positive"):
        inf.load_bundle(bundle_dir)
