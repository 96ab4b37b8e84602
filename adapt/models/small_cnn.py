"""The small CNN: four conv3x3-BN-ReLU stages, fast enough to train on a CPU."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from adapt.models.max_pool import MaxPool2x2
from adapt.models.modules import StagedBackbone

#: The small CNN's channel widths, one per stage.
SMALL_CNN_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)


def _conv_bn_relu(cin: int, cout: int, pool_first: bool) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    if pool_first:
        layers.append(("pool", MaxPool2x2()))
    layers += [
        # no conv bias: BatchNorm's shift makes it redundant
        ("conv", nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)),
        ("bn", nn.BatchNorm2d(cout)),
        # not in-place: forward hooks (MixStyle, LayerGradCam) see the block output
        ("relu", nn.ReLU(inplace=False)),
    ]
    return nn.Sequential(OrderedDict(layers))


def small_cnn(in_channels: int, num_classes: int) -> tuple[StagedBackbone, nn.Linear]:
    """Four conv3x3-BN-ReLU stages (16/32/64/128 wide), 2x2 max-pool between stages.

    The pooling sits at the start of stages 2-4 rather than after stage 4, so the last
    stage's map (the Grad-CAM layer) is 8x8 for 64x64 inputs instead of 4x4. About
    15 MMAC per 64x64 grayscale image: an epoch of ~800 images takes seconds on a CPU.
    """
    stages, cin = [], in_channels
    for i, width in enumerate(SMALL_CNN_WIDTHS):
        stages.append(_conv_bn_relu(cin, width, pool_first=i > 0))
        cin = width
    for module in nn.Sequential(*stages).modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return StagedBackbone(stages), nn.Linear(cin, num_classes)
