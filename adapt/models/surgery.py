"""Taking torchvision architectures apart: which layers are the first conv and the
head, how to resize them for other channel/class counts, how to regroup the network
into stages, and how to adapt pretrained RGB tensors to other channel counts.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict

from torch import Tensor, nn

from adapt.models.modules import StagedBackbone


@dataclasses.dataclass
class TorchvisionSpec:
    """How to take one torchvision architecture apart."""

    constructor: str  # torchvision.models function name
    first_conv: str  # state-dict key of the first conv weight (torchvision naming)
    head_prefix: str  # state-dict prefix of the final Linear (torchvision naming)


TORCHVISION: dict[str, TorchvisionSpec] = {
    "resnet18": TorchvisionSpec("resnet18", "conv1.weight", "fc."),
    "resnet34": TorchvisionSpec("resnet34", "conv1.weight", "fc."),
    "resnet50": TorchvisionSpec("resnet50", "conv1.weight", "fc."),
    "densenet121": TorchvisionSpec("densenet121", "features.conv0.weight", "classifier."),
    "efficientnet_b0": TorchvisionSpec("efficientnet_b0", "features.0.0.weight", "classifier.1."),
    "mobilenet_v3_small": TorchvisionSpec("mobilenet_v3_small", "features.0.0.weight", "classifier.3."),
}


def _replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A fresh conv like ``conv`` that reads ``in_channels`` channels."""
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
    )


def torchvision_model(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    """The torchvision model, random init, first conv and final Linear already resized."""
    import torchvision.models as tvm  # late: ~1 s to import, and the small CNN never needs it

    net = getattr(tvm, TORCHVISION[arch].constructor)(weights=None)  # never downloads
    if arch.startswith("resnet"):
        net.conv1 = _replace_first_conv(net.conv1, in_channels)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    elif arch == "densenet121":
        net.features.conv0 = _replace_first_conv(net.features.conv0, in_channels)
        net.classifier = nn.Linear(net.classifier.in_features, num_classes)
    else:  # efficientnet_b0, mobilenet_v3_small: features[0] = Conv2dNormActivation
        net.features[0][0] = _replace_first_conv(net.features[0][0], in_channels)
        last = len(net.classifier) - 1
        net.classifier[last] = nn.Linear(net.classifier[last].in_features, num_classes)
    return net


def split_torchvision(arch: str, net: nn.Module) -> tuple[StagedBackbone, nn.Linear]:
    """Regroup a torchvision model into stages (sharing its modules, hence its weights).

    Classifier dropout (EfficientNet, MobileNetV3) is dropped: ``features(x)`` is
    deterministic, which the diagnostics and DANN's discriminator rely on.
    """
    if arch.startswith("resnet"):
        stem = nn.Sequential(
            OrderedDict(conv1=net.conv1, bn1=net.bn1, relu=net.relu, maxpool=net.maxpool)
        )
        return StagedBackbone([stem, net.layer1, net.layer2, net.layer3, net.layer4]), net.fc
    if arch == "densenet121":
        f = net.features
        stages = [
            nn.Sequential(OrderedDict(conv0=f.conv0, norm0=f.norm0, relu0=f.relu0, pool0=f.pool0)),
            nn.Sequential(OrderedDict(denseblock1=f.denseblock1, transition1=f.transition1)),
            nn.Sequential(OrderedDict(denseblock2=f.denseblock2, transition2=f.transition2)),
            nn.Sequential(OrderedDict(denseblock3=f.denseblock3, transition3=f.transition3)),
            # torchvision applies this final ReLU functionally in DenseNet.forward
            nn.Sequential(OrderedDict(denseblock4=f.denseblock4, norm5=f.norm5, relu5=nn.ReLU())),
        ]
        return StagedBackbone(stages), net.classifier
    if arch == "efficientnet_b0":
        return StagedBackbone(list(net.features)), net.classifier[1]
    if arch == "mobilenet_v3_small":
        # keep the pretrained 576 -> 1024 projection as the backbone's neck
        neck = nn.Sequential(OrderedDict(fc=net.classifier[0], act=net.classifier[1]))
        return StagedBackbone(list(net.features), neck=neck), net.classifier[3]
    raise AssertionError(arch)



def adapt_in_channels(weight: Tensor, in_channels: int) -> Tensor:
    """Resize a conv weight ``[O, C_src, k, k]`` to ``in_channels`` input channels.

    For an image whose channels are all equal to a gray image g, the conv output is
    ``sum_c w_c * g``; spreading ``sum_c w_c`` evenly over the new channels keeps it
    unchanged. For 1 channel this is the usual sum over RGB.
    """
    if weight.ndim != 4 or weight.shape[1] == in_channels:
        return weight
    return (weight.sum(dim=1, keepdim=True) / in_channels).repeat(1, in_channels, 1, 1)


def adapt_stat_buffer(buf: Tensor, in_channels: int) -> Tensor:
    """Resize a ``[1, C, 1, 1]`` mean/std buffer to ``in_channels`` channels (average)."""
    if buf.ndim != 4 or buf.shape[1] == in_channels:
        return buf
    return buf.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
