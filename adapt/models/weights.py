"""Weights from local files only: reading a weights file, fitting a state dict into a
model (adapting the first conv's channels, skipping a head of another size), and where
torchvision's ImageNet file must sit in the torch hub cache. Nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.io import torch_load
from adapt.models.surgery import TORCHVISION, adapt_in_channels, adapt_stat_buffer


_OLD_DENSENET_KEY = re.compile(
    r"^(?P<layer>.*denselayer\d+\.(?:norm|relu|conv))\.(?P<rest>[12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def rename_old_densenet_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision's DenseNet files still use ``norm.1`` where the modules say ``norm1``."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        match = _OLD_DENSENET_KEY.match(key)
        out[match["layer"] + match["rest"] if match else key] = value
    return out


def read_weights_file(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, enclosing checkpoint dict or {}) from a local weights file.

    Accepts a bare state dict, or a dict with a ``state_dict`` / ``model`` entry (a
    domaingap checkpoint among them). A ``module.`` prefix (DataParallel/DDP) is removed.
    """
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    obj = torch_load(path, "weights file")
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


def is_classifier_state_dict(state_dict: dict[str, Tensor]) -> bool:
    return any(k.startswith("backbone.") for k in state_dict)


def load_fitting(
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
        sd[first_conv] = adapt_in_channels(sd[first_conv], target[first_conv].shape[1])
    for key in stat_keys:
        if key in sd and key in target:
            sd[key] = adapt_stat_buffer(sd[key], target[key].shape[1])
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


def hub_checkpoint_path(url: str) -> Path:
    """Where torch's hub cache keeps the file downloaded from ``url`` (nothing is downloaded here)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def imagenet_weights_path(arch: str) -> tuple[Path, str]:
    """(where torchvision's ImageNet file for ``arch`` must be, the URL it comes from)."""
    if arch not in TORCHVISION:
        raise UserError(f"weights 'imagenet': {arch} has no ImageNet weights (use weights: null or a file)")
    import torchvision.models as tvm  # late: ~1 s to import, and the small CNN never needs it

    url = tvm.get_model_weights(TORCHVISION[arch].constructor).DEFAULT.url
    return hub_checkpoint_path(url), url


def describe_target(arch: str, in_channels: int, num_classes: int) -> str:
    return f"{arch} ({in_channels} channel{'s' if in_channels != 1 else ''}, {num_classes} classes)"

