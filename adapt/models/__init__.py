"""Models: every model is a :class:`Classifier` — ``normalize -> backbone -> head`` — that
takes images as float32 in [0, 1] (``[B, C, H, W]``) and keeps its own mean/std, so style
transforms, occlusion and attributions all work in plain pixel space.

* :mod:`.modules` — Normalize, StagedBackbone, Classifier, ``unwrap_model``;
* :mod:`.small_cnn` — the CPU-sized CNN;
* :mod:`.max_pool` — its 2x2 max-pooling, exact and faster than PyTorch's NCHW kernel on a CPU;
* :mod:`.surgery` — taking torchvision architectures apart, channel adaptation;
* :mod:`.weights` — local weight files, the torch-cache ImageNet path;
* :mod:`.factory` — :func:`build_model`, :data:`ARCHS`;
* :mod:`.checkpoints` — save / load / describe;
* :mod:`.normalization` — ImageNet and from-scratch mean/std.

Freezing strategies and optimiser groups are training concerns: :mod:`adapt.strategies`.
"""

from adapt.models.checkpoints import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    describe_model,
    load_checkpoint,
    save_checkpoint,
)
from adapt.models.factory import ARCHS, build_model
from adapt.models.modules import Classifier, Normalize, StagedBackbone, is_classifier, unwrap_model
from adapt.models.normalization import IMAGENET_MEAN, IMAGENET_STD, SCRATCH_MEAN, SCRATCH_STD
from adapt.models.weights import hub_checkpoint_path, imagenet_weights_path

__all__ = [
    "ARCHS", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "Classifier", "IMAGENET_MEAN", "IMAGENET_STD",
    "Normalize", "SCRATCH_MEAN", "SCRATCH_STD", "StagedBackbone", "build_model", "describe_model",
    "hub_checkpoint_path", "imagenet_weights_path", "is_classifier", "load_checkpoint", "save_checkpoint", "unwrap_model",
]
