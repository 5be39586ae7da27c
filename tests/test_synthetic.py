"""The synthetic chest X-ray generator: determinism, shapes, label statistics, label noise,
noise tasks, splits, argument checks, and a quick learnability signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from deepchest.data.base import LabeledImages
from deepchest.data.synthetic import (
    DEFAULT_LABEL_NOISE,
    DEFAULT_PREVALENCE_FLOOR,
    generate,
    synthetic_splits,
    target_prevalences,
)
from deepchest.findings import COPULA_CORRELATION, FINDINGS, PREVALENCE

K = {name: k for k, name in enumerate(FINDINGS)}


@pytest.fixture(scope="module")
def big_clean() -> LabeledImages:
    """A large sample at a tiny image size, for label statistics (no label noise)."""
    return generate(20000, 16, seed=11, label_noise=0.0)


def test_same_seed_same_tensors_other_seed_different():
    a = generate(40, 32, seed=3, noise_tasks=2)
    b = generate(40, 32, seed=3, noise_tasks=2)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.mask, b.mask)
    c = generate(40, 32, seed=4, noise_tasks=2)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.labels, c.labels)


def test_shapes_and_dtypes():
    data = generate(10, 48, seed=0)
    assert isinstance(data, LabeledImages)
    assert data.images.shape == (10, 1, 48, 48) and data.images.dtype == torch.uint8
    assert data.labels.shape == (10, 14) and data.labels.dtype == torch.float32
    assert data.mask.shape == (10, 14) and data.mask.dtype == torch.bool and data.mask.all()
    assert data.task_names == FINDINGS
    assert set(data.labels.unique().tolist()) <= {0.0, 1.0}
    # images use the grey range rather than sitting at one value
    assert data.images.float().std() > 20


def test_images_look_like_a_chest():
    """Lungs (dark) either side of a bright mediastinum, dark air outside the body."""
    img = generate(200, 64, seed=1).images[:, 0].float().mean(0)
    mediastinum = img[16:40, 30:34].mean()
    right_lung, left_lung = img[16:40, 18:22].mean(), img[16:40, 42:46].mean()
    corner = img[:4, :4].mean()
    assert mediastinum > right_lung + 30 and mediastinum > left_lung + 30
    assert corner < right_lung


@pytest.mark.parametrize("floor", [0.0, DEFAULT_PREVALENCE_FLOOR, 0.1])
def test_prevalences_follow_nih_with_floor(floor):
    data = generate(20000, 16, seed=5, prevalence_floor=floor, label_noise=0.0)
    observed = data.labels.mean(0)
    expected = target_prevalences(floor)
    for name in FINDINGS:
        want = max(PREVALENCE[name], floor)
        assert abs(expected[name] - want) < 0.001, name
        assert abs(observed[K[name]].item() - want) < 0.01, (name, observed[K[name]].item(), want)


def test_real_prevalences_are_kept_without_floor(big_clean):
    # the default floor only raises rare findings: common ones keep NIH's prevalence
    observed = big_clean.labels.mean(0)
    assert abs(observed[K["Infiltration"]].item() - PREVALENCE["Infiltration"]) < 0.01
    assert abs(observed[K["Hernia"]].item() - DEFAULT_PREVALENCE_FLOOR) < 0.006


def test_co_occurrence_follows_the_copula(big_clean):
    y = big_clean.labels
    corr = torch.tensor(COPULA_CORRELATION)
    for a, b in [
        ("Pneumonia", "Edema"),
        ("Pneumothorax", "Emphysema"),
        ("Atelectasis", "Effusion"),
    ]:
        assert corr[K[a], K[b]] > 0.3
        joint = (y[:, K[a]] * y[:, K[b]]).mean()
        independent = y[:, K[a]].mean() * y[:, K[b]].mean()
        assert joint > 2 * independent, (a, b, joint.item(), independent.item())
    # and a negatively correlated pair co-occurs less than independence predicts
    a, b = "Pneumothorax", "Edema"
    assert corr[K[a], K[b]] < -0.15
    assert (y[:, K[a]] * y[:, K[b]]).mean() < y[:, K[a]].mean() * y[:, K[b]].mean()


def test_noise_tasks_are_appended_and_independent(big_clean):
    data = generate(20000, 16, seed=11, label_noise=0.0, noise_tasks=3)
    assert data.task_names == FINDINGS + ("noise_1", "noise_2", "noise_3")
    assert data.labels.shape == (20000, 17) and data.mask.shape == (20000, 17)
    # noise tasks leave the images and the real labels exactly as they were
    assert torch.equal(data.images, big_clean.images)
    assert torch.equal(data.labels[:, :14], big_clean.labels)
    noise = data.labels[:, 14:]
    assert (noise.mean(0) - 0.5).abs().max() < 0.02
    # uncorrelated with every finding, with each other, and with the image
    corr = torch.corrcoef(data.labels.T)
    off = corr[14:, :] - torch.eye(17)[14:, :]
    assert off.abs().max() < 0.04
    brightness = data.images.float().mean((1, 2, 3))
    for j in range(3):
        assert abs(torch.corrcoef(torch.stack([brightness, noise[:, j]]))[0, 1]) < 0.04


def test_label_noise_flips_about_the_requested_fraction(big_clean):
    q = 0.1
    noisy = generate(20000, 16, seed=11, label_noise=q)
    # the images show the clean findings: they do not change with label noise
    assert torch.equal(noisy.images, big_clean.images)
    clean, flipped = big_clean.labels, noisy.labels != big_clean.labels
    pos = clean > 0.5
    # a fraction q of the positives is wrong ...
    assert abs(flipped[pos].float().mean().item() - q) < 0.015
    # ... and prevalence is unchanged (as many negatives become positive)
    assert (noisy.labels.mean(0) - clean.mean(0)).abs().max() < 0.01
    for name in ("Infiltration", "Hernia"):
        k = K[name]
        p = target_prevalences()[name]
        neg_rate = flipped[~pos[:, k], k].float().mean().item()
        want = q * p / (1 - p)
        assert abs(neg_rate - want) < 0.25 * want + 0.001, (name, neg_rate, want)
    # the default is some noise, so no finding is learnable perfectly
    assert 0 < DEFAULT_LABEL_NOISE < 0.2
    assert not torch.equal(generate(20000, 16, seed=11).labels, clean)


def test_splits_are_disjoint_deterministic_and_sized():
    synthetic_splits.cache_clear()
    splits = synthetic_splits(200, 24, seed=2, noise_tasks=1)
    assert set(splits) == {"train", "val", "test"}
    assert [len(splits[k]) for k in ("train", "val", "test")] == [140, 30, 30]
    assert all(s.task_names[-1] == "noise_1" for s in splits.values())
    # cached in-process: the same objects come back
    assert synthetic_splits(200, 24, seed=2, noise_tasks=1) is splits
    synthetic_splits.cache_clear()
    again = synthetic_splits(200, 24, seed=2, noise_tasks=1)
    for key in splits:
        assert torch.equal(splits[key].images, again[key].images)
        assert torch.equal(splits[key].labels, again[key].labels)
    # disjoint: no image appears in two splits
    flat = {k: s.images.flatten(1) for k, s in splits.items()}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        same = (flat[a][:, None, :] == flat[b][None, :, :]).all(-1)
        assert not same.any(), (a, b)
    other = synthetic_splits(200, 24, seed=3, noise_tasks=1)
    assert not torch.equal(other["train"].images, splits["train"].images)
    # the splits are generate()'s samples, in order
    whole = generate(200, 24, seed=2, noise_tasks=1)
    assert torch.equal(
        torch.cat([splits[k].images for k in ("train", "val", "test")]), whole.images
    )
    assert torch.equal(
        torch.cat([splits[k].labels for k in ("train", "val", "test")]), whole.labels
    )
    custom = synthetic_splits(100, 16, val_fraction=0.2, test_fraction=0.1)
    assert [len(custom[k]) for k in ("train", "val", "test")] == [70, 20, 10]


def test_numpy_scalars_are_accepted():
    data = generate(np.int64(3), np.int32(16), seed=np.int64(1), label_noise=np.float32(0.1))
    assert data.images.shape == (3, 1, 16, 16)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=-5), "num_samples"),
        (dict(num_samples=2.5), "num_samples"),
        (dict(image_size=8), "image_size"),
        (dict(image_size=100000), "image_size"),
        (dict(prevalence_floor=-0.01), "prevalence_floor"),
        (dict(prevalence_floor=0.6), "prevalence_floor"),
        (dict(noise_tasks=-1), "noise_tasks"),
        (dict(label_noise=-0.1), "label_noise"),
        (dict(label_noise=0.5), "label_noise"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = dict(num_samples=4, image_size=32) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(args.pop("num_samples"), args.pop("image_size"), **args)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(val_fraction=-0.1), "val_fraction"),
        (dict(test_fraction=1.0), "test_fraction"),
        (dict(val_fraction=0.6, test_fraction=0.5), "val_fraction"),
    ],
)
def test_bad_split_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_splits(20, 16, **kwargs)


def test_findings_are_learnable_by_a_linear_probe():
    """A logistic regression on 8x8-pooled pixels already beats chance on the findings
    with large signatures; the small CNN of the quickstart gets all 14 (docs)."""
    data = generate(2400, 32, seed=0, label_noise=0.0)
    x = torch.nn.functional.avg_pool2d(data.images.float() / 255, 4).flatten(1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train, test = slice(0, 1800), slice(1800, None)
    for name in ("Cardiomegaly", "Emphysema", "Effusion", "Edema"):
        y = data.labels[:, K[name]]
        probe = LogisticRegression(C=0.05, max_iter=300).fit(x[train].numpy(), y[train].numpy())
        auroc = roc_auc_score(y[test].numpy(), probe.decision_function(x[test].numpy()))
        assert auroc > 0.65, (name, auroc)
