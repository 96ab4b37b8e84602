"""A tiny stand-in for ``adapt.models.Classifier`` used by the methods tests.

Same attributes as the real one (``features``, ``head``, ``blocks()``, ``feature_dim``,
normalisation inside), small enough to run in milliseconds.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyClassifier(nn.Module):
    def __init__(self, num_classes: int = 2, in_channels: int = 1, width: int = 8, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_dim = 2 * width
        self.register_buffer("mean", torch.full((1, in_channels, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, in_channels, 1, 1), 0.25))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(self.feature_dim, num_classes)

    def blocks(self) -> list[nn.Module]:
        return [self.stem, self.stage]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.pool(self.stage(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class FeaturesOf(nn.Module):
    """G for pytorch-adapt's hooks: ``model.features`` as a module of its own (same parameters)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.features(x)
