"""The model's building blocks: :class:`Normalize`, :class:`StagedBackbone`,
:class:`Classifier` (``normalize -> backbone -> head``, images in [0, 1]).

The backbone is always a sequence of *stages* (``Classifier.blocks()``, stem first)
followed by global average pooling (and, for MobileNetV3, its pretrained 1024-d
projection). The stages are the unit for top-k fine-tuning, progressive unfreezing
and feature-style hooks (MixStyle on early blocks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adapt.errors import UserError


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean/std are buffers of shape [1, C, 1, 1]."""

    def __init__(self, mean: list[float] | tuple[float, ...], std: list[float] | tuple[float, ...]):
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels, std has {len(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def stats(self) -> tuple[list[float], list[float]]:
        """(mean, std) as plain lists, one value per channel."""
        return self.mean.flatten().tolist(), self.std.flatten().tolist()

    def extra_repr(self) -> str:
        mean, std = self.stats()
        return f"mean={[round(v, 4) for v in mean]}, std={[round(v, 4) for v in std]}"


class StagedBackbone(nn.Module):
    """``stages`` in sequence -> global average pool -> flatten -> optional ``neck``.

    Output: ``[B, feature_dim]``. ``blocks()`` lists the stages (and the neck, when it has
    parameters, as the last block) so that every backbone parameter is in exactly one block.
    """

    def __init__(self, stages: list[nn.Module], neck: nn.Module | None = None):
        super().__init__()
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.neck = neck if neck is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.after_stages(self.stages(x))

    def after_stages(self, h: Tensor) -> Tensor:
        """The rest of ``forward`` from the last stage's output ``h``: pool, flatten, neck."""
        return self.neck(torch.flatten(self.pool(h), 1))

    def blocks(self) -> list[nn.Module]:
        blocks = list(self.stages)
        if any(True for _ in self.neck.parameters()):
            blocks.append(self.neck)
        return blocks


class Classifier(nn.Module):
    """An image classifier: ``head(backbone(normalize(x)))`` with x in [0, 1].

    Attributes: ``arch`` (factory name), ``num_classes``, ``in_channels``, ``feature_dim``
    (width of ``features(x)``), ``normalize``, ``backbone``, ``head`` (``nn.Linear``).
    """

    def __init__(
        self,
        arch: str,
        backbone: StagedBackbone,
        head: nn.Linear,
        in_channels: int,
        mean: list[float] | tuple[float, ...],
        std: list[float] | tuple[float, ...],
    ):
        super().__init__()
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"normalisation stats need {in_channels} channels, got {len(mean)}/{len(std)}")
        self.arch = arch
        self.num_classes = head.out_features
        self.in_channels = in_channels
        self.feature_dim = head.in_features
        self.normalize = Normalize(mean, std)
        self.backbone = backbone
        self.head = head

    def features(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] -> pooled features ``[B, feature_dim]``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise UserError(
                f"{self.arch} model expects images of shape [B, {self.in_channels}, H, W], "
                f"got {list(x.shape)} (check the channels setting)"
            )
        return self.backbone(self.normalize(x))

    def forward(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] -> logits ``[B, num_classes]``."""
        return self.head(self.features(x))

    def sequential_prefix(self) -> list[nn.Module]:
        """The modules whose composition is the first part of ``forward``:
        ``stages(normalize(x))`` (then pooling, neck and head). AdaBN sweeps this chain in
        one pass (:func:`adapt.methods.adabn.adabn`)."""
        return [self.normalize, self.backbone.stages]

    def features_after_prefix(self, h: Tensor) -> Tensor:
        """``features(x)`` from ``h``, the output of the :meth:`sequential_prefix` chain on x
        (AdaBN's one-pass sweep computes it: :func:`adapt.methods.adabn.adabn_predict`)."""
        return self.backbone.after_stages(h)

    def blocks(self) -> list[nn.Module]:
        """Backbone stages from input to output (stem first); the head is not included."""
        return self.backbone.blocks()

    def gradcam_layer(self) -> nn.Module:
        """The last convolutional stage (its output is the map LayerGradCam explains)."""
        return self.backbone.stages[-1]

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, in_channels={self.in_channels}, "
            f"feature_dim={self.feature_dim}, num_classes={self.num_classes}"
        )



def unwrap_model(model: nn.Module) -> nn.Module:
    """The Classifier inside DataParallel/DDP or torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def is_classifier(model: nn.Module) -> bool:
    """Whether ``model`` (inside any wrapper) has the Classifier split the library needs:
    a callable ``features`` (images → feature vectors) and a ``head`` module (→ logits)."""
    m = unwrap_model(model)
    return callable(getattr(m, "features", None)) and isinstance(getattr(m, "head", None), nn.Module)
