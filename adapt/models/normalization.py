"""Per-channel normalisation constants: the one definition of ImageNet's mean/std."""

from __future__ import annotations

#: ImageNet per-channel statistics (RGB) of the torchvision weights.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: From-scratch statistics for images in [0, 1] (roughly centred, unit-ish scale).
SCRATCH_MEAN = 0.5
SCRATCH_STD = 0.25


def channel_stats(values: tuple[float, ...], in_channels: int) -> list[float]:
    """RGB statistics for ``in_channels`` channels (the average, repeated, unless 3)."""
    if in_channels == len(values):
        return list(values)
    avg = sum(values) / len(values)
    return [avg] * in_channels
