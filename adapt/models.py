"""The model factory: backbones, heads, local weights, freezing strategies, checkpoints.

Every model is a :class:`Classifier` — ``normalize -> backbone -> head`` — that takes
images as float32 in [0, 1] (``[B, C, H, W]``) and keeps its own mean/std, so style
transforms, occlusion and attributions all work in plain pixel space.

The backbone is always a sequence of *stages* (``Classifier.blocks()``, stem first)
followed by global average pooling (and, for MobileNetV3, its pretrained 1024-d
projection). The stages are the unit for top-k fine-tuning, progressive unfreezing
(Howard & Ruder, ULMFiT, ACL 2018: unfreeze from the top, one group per stage) and
feature-style hooks (MixStyle on early blocks).

Weights never come from the network: ``weights=None`` is random init, a path is a local
file, ``"imagenet"`` is torchvision's ImageNet file only if it already sits in the torch
hub cache. Pretrained RGB weights in a grayscale model get their first convolution summed
over the RGB axis, so a gray image replicated to RGB gives the same activations.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.io import atomic_torch_save

ARCHS: tuple[str, ...] = (
    "small_cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "mobilenet_v3_small",
)

#: ImageNet per-channel statistics (RGB) of the torchvision weights.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: From-scratch statistics for images in [0, 1] (roughly centred, unit-ish scale).
SCRATCH_MEAN = 0.5
SCRATCH_STD = 0.25

STRATEGIES: tuple[str, ...] = ("feature_extraction", "finetune", "progressive")

CHECKPOINT_FORMAT = "domaingap-classifier"
CHECKPOINT_VERSION = 1

#: The small CNN's channel widths, one per stage.
SMALL_CNN_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)


# --------------------------------------------------------------------------- modules


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
        return self.neck(torch.flatten(self.pool(self.stages(x)), 1))

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


# --------------------------------------------------------------------------- architectures


@dataclasses.dataclass
class _TorchvisionSpec:
    """How to take one torchvision architecture apart."""

    constructor: str  # torchvision.models function name
    first_conv: str  # state-dict key of the first conv weight (torchvision naming)
    head_prefix: str  # state-dict prefix of the final Linear (torchvision naming)


_TORCHVISION: dict[str, _TorchvisionSpec] = {
    "resnet18": _TorchvisionSpec("resnet18", "conv1.weight", "fc."),
    "resnet34": _TorchvisionSpec("resnet34", "conv1.weight", "fc."),
    "resnet50": _TorchvisionSpec("resnet50", "conv1.weight", "fc."),
    "densenet121": _TorchvisionSpec("densenet121", "features.conv0.weight", "classifier."),
    "efficientnet_b0": _TorchvisionSpec("efficientnet_b0", "features.0.0.weight", "classifier.1."),
    "mobilenet_v3_small": _TorchvisionSpec("mobilenet_v3_small", "features.0.0.weight", "classifier.3."),
}


def _conv_bn_relu(cin: int, cout: int, pool_first: bool) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    if pool_first:
        layers.append(("pool", nn.MaxPool2d(2)))
    layers += [
        # no conv bias: BatchNorm's shift makes it redundant
        ("conv", nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)),
        ("bn", nn.BatchNorm2d(cout)),
        # not in-place: forward hooks (MixStyle, LayerGradCam) see the block output
        ("relu", nn.ReLU(inplace=False)),
    ]
    return nn.Sequential(OrderedDict(layers))


def _small_cnn(in_channels: int, num_classes: int) -> tuple[StagedBackbone, nn.Linear]:
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


def _torchvision_model(arch: str, in_channels: int, num_classes: int) -> nn.Module:
    """The torchvision model, random init, first conv and final Linear already resized."""
    import torchvision.models as tvm

    net = getattr(tvm, _TORCHVISION[arch].constructor)(weights=None)  # never downloads
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


def _split_torchvision(arch: str, net: nn.Module) -> tuple[StagedBackbone, nn.Linear]:
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


# --------------------------------------------------------------------------- weights


def _channel_stats(values: tuple[float, ...], in_channels: int) -> list[float]:
    """RGB statistics for ``in_channels`` channels (the average, repeated, unless 3)."""
    if in_channels == len(values):
        return list(values)
    avg = sum(values) / len(values)
    return [avg] * in_channels


def _adapt_in_channels(weight: Tensor, in_channels: int) -> Tensor:
    """Resize a conv weight ``[O, C_src, k, k]`` to ``in_channels`` input channels.

    For an image whose channels are all equal to a gray image g, the conv output is
    ``sum_c w_c * g``; spreading ``sum_c w_c`` evenly over the new channels keeps it
    unchanged. For 1 channel this is the usual sum over RGB.
    """
    if weight.ndim != 4 or weight.shape[1] == in_channels:
        return weight
    return (weight.sum(dim=1, keepdim=True) / in_channels).repeat(1, in_channels, 1, 1)


def _adapt_stat_buffer(buf: Tensor, in_channels: int) -> Tensor:
    """Resize a ``[1, C, 1, 1]`` mean/std buffer to ``in_channels`` channels (average)."""
    if buf.ndim != 4 or buf.shape[1] == in_channels:
        return buf
    return buf.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)


_OLD_DENSENET_KEY = re.compile(
    r"^(?P<layer>.*denselayer\d+\.(?:norm|relu|conv))\.(?P<rest>[12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def _rename_old_densenet_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's DenseNet files still use ``norm.1`` where the modules say ``norm1``."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = _OLD_DENSENET_KEY.match(key)
        out[match["layer"] + match["rest"] if match else key] = value
    return out


def _read_weights_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, enclosing checkpoint dict or {}) from a local weights file.

    Accepts a bare state dict, or a dict with a ``state_dict`` / ``model`` entry (a
    domaingap checkpoint among them). A ``module.`` prefix (DataParallel/DDP) is removed.
    """
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled code, not a torch file at all
        raise UserError(f"{path}: not a readable weights file ({_one_line(exc)})") from None
    outer: dict[str, Any] = {}
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                outer, obj = obj, obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise UserError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj), outer


def _is_classifier_state_dict(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in state_dict)


def _load_fitting(
    module: nn.Module,
    state_dict: dict[str, Tensor],
    *,
    source: str,
    what: str,
    first_conv: str,
    head_prefix: str,
    stat_keys: tuple[str, ...] = (),
) -> None:
    """Load ``state_dict`` into ``module``, adapting what is standard and refusing the rest.

    Adapted: the first conv's input channels (RGB summed for gray), mean/std buffers'
    channels. Skipped: head entries whose shape differs (a new head for new classes), head
    entries absent from the file, missing ``num_batches_tracked`` counters. Anything else
    that does not fit raises a one-line UserError naming ``source`` and the first key.
    """
    target = module.state_dict()
    sd = dict(state_dict)
    if first_conv in sd and first_conv in target:
        sd[first_conv] = _adapt_in_channels(sd[first_conv], target[first_conv].shape[1])
    for key in stat_keys:
        if key in sd and key in target:
            sd[key] = _adapt_stat_buffer(sd[key], target[key].shape[1])
    for key in list(sd):
        if key.startswith(head_prefix) and key in target and sd[key].shape != target[key].shape:
            del sd[key]  # head for another number of classes: keep the fresh head

    for key, expected in target.items():
        if key not in sd:
            if key.startswith(head_prefix) or key.endswith("num_batches_tracked"):
                continue
            raise UserError(f"{source}: weights do not fit {what}: key '{key}' is missing from the file")
        if sd[key].shape != expected.shape:
            raise UserError(
                f"{source}: weights do not fit {what}: key '{key}' has shape "
                f"{list(sd[key].shape)}, the model expects {list(expected.shape)}"
            )
    for key in sd:
        if key not in target:
            raise UserError(f"{source}: weights do not fit {what}: unexpected key '{key}'")
    module.load_state_dict(sd, strict=False)


def imagenet_weights_path(arch: str) -> tuple[Path, str]:
    """(where torchvision's ImageNet file for ``arch`` must be, the URL it comes from)."""
    if arch not in _TORCHVISION:
        raise UserError(f"weights 'imagenet': {arch} has no ImageNet weights (use weights: null or a file)")
    import torchvision.models as tvm

    url = tvm.get_model_weights(_TORCHVISION[arch].constructor).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url


def _describe_target(arch: str, in_channels: int, num_classes: int) -> str:
    return f"{arch} ({in_channels} channel{'s' if in_channels != 1 else ''}, {num_classes} classes)"


# --------------------------------------------------------------------------- factory


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
    what = _describe_target(arch, in_channels, num_classes)

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
        state_dict, outer = _read_weights_file(path)
        source = str(path)
        saved_arch = outer.get("arch")
        if isinstance(saved_arch, str) and saved_arch != arch:
            raise UserError(f"{source}: checkpoint is a {saved_arch} model, not {arch}")

    from_classifier = state_dict is not None and _is_classifier_state_dict(state_dict)
    if arch == "small_cnn":
        backbone, head = _small_cnn(in_channels, num_classes)
    else:
        net = _torchvision_model(arch, in_channels, num_classes)
        if state_dict is not None and not from_classifier:
            spec = _TORCHVISION[arch]
            sd = _rename_old_densenet_keys(state_dict) if arch == "densenet121" else state_dict
            _load_fitting(net, sd, source=source, what=what, first_conv=spec.first_conv, head_prefix=spec.head_prefix)
        backbone, head = _split_torchvision(arch, net)

    pretrained_rgb = state_dict is not None and not from_classifier
    if pretrained_rgb:
        mean, std = _channel_stats(IMAGENET_MEAN, in_channels), _channel_stats(IMAGENET_STD, in_channels)
    else:
        mean, std = [SCRATCH_MEAN] * in_channels, [SCRATCH_STD] * in_channels
    model = Classifier(arch, backbone, head, in_channels, mean, std)

    if state_dict is not None and from_classifier:
        first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
        _load_fitting(
            model,
            state_dict,
            source=source,
            what=what,
            first_conv=first_conv,
            head_prefix="head.",
            stat_keys=("normalize.mean", "normalize.std"),
        )
    return model


# --------------------------------------------------------------------------- freezing


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def trainable_block_count(n_blocks: int, kind: str, epoch: int = 0, top_k: int | None = None,
                          progressive_epochs: int = 1) -> int:
    """How many backbone blocks (counted from the top) a strategy trains at ``epoch``.

    feature_extraction: 0. finetune: all, or ``min(top_k, n_blocks)``.
    progressive: ``min(epoch // progressive_epochs, n_blocks)`` — the head alone for the
    first ``progressive_epochs`` epochs, then one more block from the top per stage.
    """
    if kind == "feature_extraction":
        return 0
    if kind == "finetune":
        if top_k is None:
            return n_blocks
        if top_k < 0:
            raise UserError(f"top_k {top_k}: must be >= 0")
        return min(top_k, n_blocks)
    if kind == "progressive":
        if progressive_epochs < 1:
            raise UserError(f"progressive_epochs {progressive_epochs}: must be >= 1")
        if epoch < 0:
            raise UserError(f"epoch {epoch}: must be >= 0")
        return min(epoch // progressive_epochs, n_blocks)
    raise UserError(f"strategy '{kind}': unknown, choose one of {', '.join(STRATEGIES)}")


def apply_strategy(model: Classifier, kind: str, epoch: int = 0, top_k: int | None = None,
                   progressive_epochs: int = 1) -> None:
    """Set ``requires_grad`` for a fine-tuning strategy; the head always trains.

    * ``feature_extraction`` — backbone frozen;
    * ``finetune`` — everything, or only the top ``top_k`` blocks (+ head);
    * ``progressive`` — call at the start of every epoch: head only, then one more
      block from the top every ``progressive_epochs`` epochs (ULMFiT's gradual unfreezing).

    Frozen BatchNorm layers: this function only touches ``requires_grad``. Their running
    statistics would still move in train mode; the training loop calls
    :func:`freeze_bn_stats` after ``model.train()`` so frozen BN layers run in eval mode
    and keep the statistics they came with (as Keras does for frozen layers).
    """
    model = unwrap_model(model)
    blocks = model.blocks()
    n_train = trainable_block_count(len(blocks), kind, epoch, top_k, progressive_epochs)
    for i, block in enumerate(blocks):
        _set_trainable(block, i >= len(blocks) - n_train)
    _set_trainable(model.head, True)


def freeze_bn_stats(model: nn.Module) -> int:
    """Put every BatchNorm layer whose parameters are all frozen into eval mode.

    Call after ``model.train()``: a frozen BN layer then normalises with its stored
    running statistics and does not update them. Returns how many layers were switched.
    BN layers without affine parameters are left alone (nothing says they are frozen).
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                switched += 1
    return switched


# --------------------------------------------------------------------------- optimiser groups


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _decay_split(module: nn.Module, seen: set[int]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(params with weight decay, params without): biases and norm parameters get none.

    Parameters already in ``seen`` are skipped (shared parameters go in one group only).
    """
    decay, no_decay = [], []
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(sub, _NORM_TYPES) or p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def param_groups(model: Classifier, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0,
                 extra: dict[str, nn.Module] | None = None) -> list[dict]:
    """Optimiser parameter groups with discriminative learning rates.

    Groups (empty ones omitted): ``backbone`` / ``backbone_no_decay`` at
    ``lr * backbone_lr_mult``; ``head`` / ``head_no_decay`` at ``lr``; for each
    ``extra[name]`` module (e.g. a domain discriminator) ``name`` / ``name_no_decay`` at
    ``lr``. ``*_no_decay`` holds biases and normalisation parameters, weight decay 0.

    All backbone parameters are included, frozen or not, so the groups stay the same
    while progressive unfreezing flips ``requires_grad``: a frozen parameter gets no
    gradient, and torch optimisers skip parameters whose ``grad`` is None (no momentum,
    no weight decay). Each dict also carries ``name`` and ``base_lr`` (for schedules).
    """
    model = unwrap_model(model)
    if lr <= 0 or backbone_lr_mult < 0 or weight_decay < 0:
        raise UserError(f"learning rate {lr} / backbone_lr_mult {backbone_lr_mult} / weight_decay "
                        f"{weight_decay}: must be positive / non-negative / non-negative")
    seen: set[int] = set()
    parts: list[tuple[str, nn.Module, float]] = [
        ("backbone", model.backbone, lr * backbone_lr_mult),
        ("head", model.head, lr),
    ]
    for name, module in (extra or {}).items():
        if name in ("backbone", "head"):
            raise UserError(f"extra module name '{name}': reserved, choose another")
        parts.append((name, module, lr))
    groups = []
    for name, module, group_lr in parts:
        decay, no_decay = _decay_split(module, seen)
        for group_name, params, wd in ((name, decay, weight_decay), (f"{name}_no_decay", no_decay, 0.0)):
            if params:
                groups.append({"name": group_name, "params": params, "lr": group_lr,
                               "base_lr": group_lr, "weight_decay": wd})
    return groups


# --------------------------------------------------------------------------- checkpoints


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Classifier inside DataParallel/DDP or torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _plain(obj: Any, where: str) -> Any:
    """Meta values as types ``torch.load(weights_only=True)`` accepts."""
    if obj is None or isinstance(obj, (bool, int, float, str, Tensor)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "model_dump"):  # pydantic (the recipe)
        return _plain(obj.model_dump(mode="json"), where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj), where)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    raise TypeError(f"checkpoint meta {where}: cannot store a {type(obj).__name__}")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **meta: Any) -> None:
    """Write a domaingap checkpoint atomically (temp file + ``os.replace``).

    Stores ``arch``, ``num_classes``, ``in_channels``, ``feature_dim``, ``normalize``
    (mean/std lists), ``state_dict`` (CPU tensors) and ``meta`` (classes, image_size,
    epoch, recipe, ... converted to plain types so ``weights_only`` loading works).
    """
    model = unwrap_model(model)
    if not isinstance(model, Classifier):
        raise TypeError(f"save_checkpoint expects a Classifier, got {type(model).__name__}")
    mean, std = model.normalize.stats()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": model.arch,
        "num_classes": model.num_classes,
        "in_channels": model.in_channels,
        "feature_dim": model.feature_dim,
        "normalize": {"mean": mean, "std": std},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": _plain(meta, "meta"),
    }
    atomic_torch_save(path, payload)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[Classifier, dict]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns ``(model in eval mode, meta)``.

    A missing or corrupt file, a file that is not a domaingap checkpoint, or a state dict
    that does not fit the architecture it names raises a one-line UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({_one_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a domaingap checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    missing = [k for k in ("arch", "num_classes", "in_channels", "state_dict") if k not in ckpt]
    if missing:
        raise UserError(f"{path}: damaged domaingap checkpoint, '{missing[0]}' is missing")
    arch, num_classes, in_channels = ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"]
    if arch not in ARCHS:
        raise UserError(f"{path}: checkpoint names unknown arch '{arch}'")
    model = build_model(arch, num_classes, in_channels)
    target = model.state_dict()
    state_dict = ckpt["state_dict"]
    if not isinstance(state_dict, dict):
        raise UserError(f"{path}: damaged domaingap checkpoint, 'state_dict' is not a mapping")
    what = _describe_target(arch, in_channels, num_classes)
    for key, expected in target.items():  # exact fit: a checkpoint is never adapted
        if key not in state_dict:
            raise UserError(f"{path}: checkpoint does not fit {what}: key '{key}' is missing")
        if not isinstance(state_dict[key], Tensor) or state_dict[key].shape != expected.shape:
            got = list(state_dict[key].shape) if isinstance(state_dict[key], Tensor) else type(state_dict[key]).__name__
            raise UserError(f"{path}: checkpoint does not fit {what}: key '{key}' is {got}, "
                            f"the model expects {list(expected.shape)}")
    for key in state_dict:
        if key not in target:
            raise UserError(f"{path}: checkpoint does not fit {what}: unexpected key '{key}'")
    model.load_state_dict(state_dict)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    meta = ckpt.get("meta") or {}
    return model, dict(meta)


# --------------------------------------------------------------------------- reporting


def describe_model(model: nn.Module) -> dict:
    """Plain facts about a model for reports: arch, sizes, parameter counts, blocks."""
    model = unwrap_model(model)
    params = list(model.parameters())
    out: dict[str, Any] = {
        "params": sum(p.numel() for p in params),
        "trainable_params": sum(p.numel() for p in params if p.requires_grad),
    }
    if isinstance(model, Classifier):
        blocks = model.blocks()
        mean, std = model.normalize.stats()
        out = {
            "arch": model.arch,
            "num_classes": model.num_classes,
            "in_channels": model.in_channels,
            "feature_dim": model.feature_dim,
            "normalize": {"mean": mean, "std": std},
            "blocks": len(blocks),
            "trainable_blocks": sum(
                1 for b in blocks if any(p.requires_grad for p in b.parameters())
            ),
            **out,
        }
    return out


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
