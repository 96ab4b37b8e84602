"""The model factory: :func:`build_model` for every architecture in :data:`ARCHS`.

Weights never come from the network: ``weights=None`` is random init, a path is a local
file, ``"imagenet"`` is torchvision's ImageNet file only if it already sits in the torch
hub cache. Pretrained RGB weights in a grayscale model get their first convolution summed
over the RGB axis, so a gray image replicated to RGB gives the same activations.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from adapt.errors import UserError
from adapt.models.modules import Classifier
from adapt.models.normalization import IMAGENET_MEAN, IMAGENET_STD, SCRATCH_MEAN, SCRATCH_STD, channel_stats
from adapt.models.small_cnn import small_cnn
from adapt.models.surgery import TORCHVISION, split_torchvision, torchvision_model
from adapt.models.weights import (
    describe_target,
    imagenet_weights_path,
    is_classifier_state_dict,
    load_fitting,
    read_weights_file,
    rename_old_densenet_keys,
)

ARCHS: tuple[str, ...] = (
    "small_cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
)


def build_model(arch: str, num_classes: int, in_channels: int = 1, weights: str | None = None) -> Classifier:
    """Build a :class:`Classifier`; nothing is ever downloaded.

    ``arch``: one of :data:`ARCHS`. ``weights``:

    * ``None`` — random init; normalisation mean 0.5 / std 0.25 per channel;
    * ``"imagenet"`` — torchvision's ImageNet file, only if present in
      ``torch.hub.get_dir()/checkpoints/``; ImageNet mean/std (averaged for 1 channel);
    * a path — a torchvision-format state dict (assumed ImageNet-trained: ImageNet
      mean/std), or a domaingap checkpoint / Classifier state dict (its own mean/std),
      optionally wrapped as ``{"state_dict": ...}`` or ``{"model": ...}``.

    Pretrained RGB weights in a 1-channel model: the first conv weight is summed over RGB.
    A head of another size in the file is skipped (the new head stays random).
    """
    if arch not in ARCHS:
        raise UserError(f"arch '{arch}': unknown, choose one of {', '.join(ARCHS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes {num_classes!r}: must be a positive integer")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise UserError(f"in_channels {in_channels!r}: must be a positive integer")
    what = describe_target(arch, in_channels, num_classes)

    state_dict: dict[str, Tensor] | None = None
    source = ""
    if weights is not None:
        if str(weights).lower() == "imagenet":
            path, url = imagenet_weights_path(arch)
            if not path.is_file():
                raise UserError(
                    f"weights 'imagenet' for {arch}: {path} not found; nothing is downloaded - "
                    f"fetch {url} yourself and put it at {path}"
                )
        else:
            path = Path(weights).expanduser()
        state_dict, outer = read_weights_file(path)
        source = str(path)
        saved_arch = outer.get("arch")
        if isinstance(saved_arch, str) and saved_arch != arch:
            raise UserError(f"{source}: checkpoint is a {saved_arch} model, not {arch}")

    from_classifier = state_dict is not None and is_classifier_state_dict(state_dict)
    if arch == "small_cnn":
        backbone, head = small_cnn(in_channels, num_classes)
    else:
        net = torchvision_model(arch, in_channels, num_classes)
        if state_dict is not None and not from_classifier:
            spec = TORCHVISION[arch]
            sd = rename_old_densenet_keys(state_dict) if arch == "densenet121" else state_dict
            load_fitting(net, sd, source=source, what=what, first_conv=spec.first_conv, head_prefix=spec.head_prefix)
        backbone, head = split_torchvision(arch, net)

    pretrained_rgb = state_dict is not None and not from_classifier
    if pretrained_rgb:
        mean, std = channel_stats(IMAGENET_MEAN, in_channels), channel_stats(IMAGENET_STD, in_channels)
    else:
        mean, std = [SCRATCH_MEAN] * in_channels, [SCRATCH_STD] * in_channels
    model = Classifier(arch, backbone, head, in_channels, mean, std)

    if state_dict is not None and from_classifier:
        first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
        load_fitting(
            model,
            state_dict,
            source=source,
            what=what,
            first_conv=first_conv,
            head_prefix="head.",
            stat_keys=("normalize.mean", "normalize.std"),
        )
    return model
