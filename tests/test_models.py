"""MultiTaskNet: every backbone, one channel, the parts the weighting engine needs."""

from __future__ import annotations

import pytest
import torch
import torchvision

from deepchest.models import BACKBONES, MultiTaskNet, PretrainedWeightsError


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_shapes_and_parameter_split(backbone):
    torch.manual_seed(0)
    net = MultiTaskNet(backbone, num_tasks=3).eval()
    representation, logits = net(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 3)
    assert representation.shape == (2, net.representation_dim)
    shared = {id(p) for p in net.shared_parameters()}
    heads = [{id(p) for p in net.task_parameters(t)} for t in range(3)]
    every = {id(p) for p in net.parameters()}
    assert shared | set().union(*heads) == every
    assert not shared & set().union(*heads)
    assert all(not a & b for i, a in enumerate(heads) for b in heads[i + 1 :])
    last = {id(p) for p in net.last_shared_layer().parameters()}
    assert last and last <= shared


def test_task_logit_depends_only_on_its_head():
    net = MultiTaskNet("simple_cnn", num_tasks=2).eval()
    _, logits = net(torch.randn(4, 1, 32, 32))
    logits[:, 0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in net.task_parameters(1))
    assert any(p.grad.abs().sum() > 0 for p in net.task_parameters(0))


def test_pretrained_local_state_dict_is_loaded_and_made_grey(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    net = MultiTaskNet("resnet18", num_tasks=2, pretrained=path)
    # RGB filters summed into one grey channel; deeper layers copied as they are
    expected = reference.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(net.trunk.conv1.weight, expected)
    assert torch.equal(net.trunk.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_pretrained_errors_are_clear(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="not found"):
        MultiTaskNet("resnet18", 2, pretrained=tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="not a readable torch state dict"):
        MultiTaskNet("resnet18", 2, pretrained=junk)
    other = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(PretrainedWeightsError, match="does not fit backbone 'resnet18'"):
        MultiTaskNet("resnet18", 2, pretrained=other)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown backbone 'vgg'; available:"):
        MultiTaskNet("vgg", 2)
    with pytest.raises(ValueError, match="num_tasks"):
        MultiTaskNet("simple_cnn", 0)
