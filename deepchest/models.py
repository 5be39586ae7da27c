"""Multi-task chest X-ray classifiers: a shared torchvision trunk and one head per task.

The weighting engine needs to tell shared from task-specific parameters, to find the last
shared layer (GradNorm) and to reach the shared representation (the "-UB" variants), so
``MultiTaskNet`` exposes each of them. Nothing downloads: weights are random unless
``pretrained`` names a local state-dict file of the torchvision model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from deepchest.backbones import BACKBONE_NAMES

__all__ = ["BACKBONES", "MultiTaskNet", "PretrainedWeightsError"]


class PretrainedWeightsError(ValueError):
    """A ``pretrained`` state dict that cannot be read or does not fit the backbone."""


class SimpleCNN(nn.Module):
    """A small plain CNN for CPU demos and tests: four conv-BN-ReLU-pool stages and a global
    average pool. ResNet-18 steps are slow on a 2-core CPU; this one is ~40x cheaper at 64 px."""

    def __init__(self, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            # no pooling after the last stage: the global pool follows
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.out_features = channels

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1)


def _first_conv_to(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` that takes ``in_channels`` inputs. Going from 3 channels to 1, the
    RGB filters are summed, which is what a grey image replicated to RGB would see."""
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        if in_channels == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).expand_as(new.weight))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _resnet(factory: Callable[..., nn.Module]) -> Callable[[int], tuple[nn.Module, int]]:
    def build(in_channels: int, state: dict | None = None) -> tuple[nn.Module, int]:
        net = factory(weights=None)
        if state is not None:
            net.load_state_dict(state)
        net.conv1 = _first_conv_to(net.conv1, in_channels)
        dim = net.fc.in_features
        net.fc = nn.Identity()
        return net, dim

    return build


def _densenet(factory: Callable[..., nn.Module]) -> Callable[[int], tuple[nn.Module, int]]:
    def build(in_channels: int, state: dict | None = None) -> tuple[nn.Module, int]:
        net = factory(weights=None)
        if state is not None:
            net.load_state_dict(state)
        net.features.conv0 = _first_conv_to(net.features.conv0, in_channels)
        dim = net.classifier.in_features
        net.classifier = nn.Identity()
        return net, dim

    return build


def _features_first(
    factory: Callable[..., nn.Module], keep_classifier: int
) -> Callable[[int], tuple[nn.Module, int]]:
    """EfficientNet, MobileNet-V3 and ConvNeXt: stem conv at ``features[0][0]``; the
    representation is the classifier's input to its last Linear (the first
    ``keep_classifier`` classifier modules are kept, e.g. ConvNeXt's LayerNorm + Flatten)."""

    def build(in_channels: int, state: dict | None = None) -> tuple[nn.Module, int]:
        net = factory(weights=None)
        if state is not None:
            net.load_state_dict(state)
        net.features[0][0] = _first_conv_to(net.features[0][0], in_channels)
        last = net.classifier[-1]
        assert isinstance(last, nn.Linear)
        net.classifier = nn.Sequential(*list(net.classifier)[:keep_classifier])
        return net, last.in_features

    return build


def _simple_cnn(in_channels: int, state: dict | None = None) -> tuple[nn.Module, int]:
    net = SimpleCNN(in_channels)
    if state is not None:
        net.load_state_dict(state)
    return net, net.out_features


tv = torchvision.models
# name -> builder(in_channels, torchvision state dict or None) -> (trunk, representation dim)
BACKBONES: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "simple_cnn": _simple_cnn,
    "resnet18": _resnet(tv.resnet18),
    "resnet34": _resnet(tv.resnet34),
    "resnet50": _resnet(tv.resnet50),
    "densenet121": _densenet(tv.densenet121),
    "efficientnet_b0": _features_first(tv.efficientnet_b0, keep_classifier=0),
    "mobilenet_v3_small": _features_first(tv.mobilenet_v3_small, keep_classifier=3),
    "convnext_tiny": _features_first(tv.convnext_tiny, keep_classifier=2),
}
if tuple(BACKBONES) != BACKBONE_NAMES:  # the names the schema accepts without loading torch
    raise ImportError(
        f"deepchest.backbones.BACKBONE_NAMES {BACKBONE_NAMES} differs from the builders "
        f"{tuple(BACKBONES)}"
    )


def load_pretrained_state(path: str | Path) -> dict[str, Tensor]:
    """Read a local state dict safely (tensors only). Accepts a bare state dict or a dict
    holding one under ``state_dict`` / ``model``."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # torch's first sentence only: what follows suggests weights_only=False, which would
        # run the pickle's code
        first = first.split(". ")[0].rstrip(".")
        raise PretrainedWeightsError(f"{path}: not a readable torch state dict ({first})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path}: does not hold a state dict of tensors")
    return obj


class MultiTaskNet(nn.Module):
    """``trunk(x) -> representation [B, d]``, then one ``Linear(d, 1)`` head per task.

    ``forward`` returns ``(representation, logits [B, T])``. Shared parameters are the
    trunk's; task ``t``'s parameters are head ``t``'s.
    """

    def __init__(
        self,
        backbone: str,
        num_tasks: int,
        *,
        in_channels: int = 1,
        pretrained: str | Path | None = None,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(
                f"unknown backbone {backbone!r}; available: {', '.join(sorted(BACKBONES))}"
            )
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be at least 1, got {num_tasks}")
        state = load_pretrained_state(pretrained) if pretrained else None
        try:
            self.trunk, self.representation_dim = BACKBONES[backbone](in_channels, state)
        except RuntimeError as exc:  # load_state_dict: missing / unexpected / mis-shaped keys
            first = str(exc).strip().splitlines()[0]
            raise PretrainedWeightsError(
                f"{pretrained}: does not fit backbone {backbone!r} ({first})"
            ) from exc
        self.backbone = backbone
        self.num_tasks = num_tasks
        self.heads = nn.ModuleList(nn.Linear(self.representation_dim, 1) for _ in range(num_tasks))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        representation = self.trunk(x)
        # the T heads as one matrix product: one kernel instead of T, and a per-task backward
        # (the gradient-level methods run T of them) touches one product instead of T
        weight = torch.cat([head.weight for head in self.heads])
        bias = torch.cat([head.bias for head in self.heads])
        return representation, nn.functional.linear(representation, weight, bias)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def task_parameters(self, task: int) -> Iterator[nn.Parameter]:
        return self.heads[task].parameters()

    def last_shared_layer(self) -> nn.Module:
        """The trunk's last module that owns parameters (GradNorm's ``W``)."""
        last = None
        for module in self.trunk.modules():
            if any(True for _ in module.parameters(recurse=False)):
                last = module
        assert last is not None
        return last

    def saliency_layer(self) -> nn.Module:
        """The trunk's last spatial feature map ``[B, C, h, w]``, the layer Grad-CAM weights
        (Selvaraju et al., ICCV 2017: the last convolutional layer): ResNet's ``layer4``,
        else the ``features`` block that the global pool follows (the small CNN, DenseNet,
        EfficientNet, MobileNet-V3, ConvNeXt)."""
        return self.trunk.layer4 if hasattr(self.trunk, "layer4") else self.trunk.features
