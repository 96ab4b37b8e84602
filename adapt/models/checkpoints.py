"""Checkpoints: :func:`save_checkpoint` (atomic), :func:`load_checkpoint` (exact fit or
a one-line UserError) and :func:`describe_model` (plain facts for reports)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.io import atomic_torch_save, to_jsonable, torch_load
from adapt.models.cosine_head import head_from_spec, head_spec
from adapt.models.factory import ARCHS, build_model
from adapt.models.modules import Classifier, unwrap_model
from adapt.models.weights import describe_target

CHECKPOINT_FORMAT = "domaingap-classifier"
CHECKPOINT_VERSION = 1
#: sanity bounds for a checkpoint's header (ImageNet-21k has 21,841 classes); image sizes
#: as the recipe allows them (data.image_size)
MAX_CLASSES = 100_000
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024


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
        "head": head_spec(model.head),  # None: nn.Linear; MME's cosine classifier otherwise
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        # plain JSON types, which ``torch.load(weights_only=True)`` accepts; anything
        # else is a TypeError naming the key
        "meta": to_jsonable(meta, strict=True, where="checkpoint meta"),
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
    ckpt = torch_load(path, "checkpoint", map_location=map_location)
    arch, num_classes, in_channels, meta = check_header(path, ckpt)
    model = build_model(arch, num_classes, in_channels)
    model.head = head_from_spec(ckpt.get("head"), model.head, str(path))
    target = model.state_dict()
    state_dict = ckpt["state_dict"]
    if not isinstance(state_dict, dict):
        raise UserError(f"{path}: damaged domaingap checkpoint, 'state_dict' is not a mapping")
    what = describe_target(arch, in_channels, num_classes)
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
    for key, value in state_dict.items():  # a diverged run's weights: every prediction would be NaN
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise UserError(f"{path}: checkpoint weights are not finite ('{key}' holds NaN or inf; "
                            "was its training diverging?)")
    model.load_state_dict(state_dict)
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    return model, meta


def check_header(path: str | os.PathLike, ckpt: Any) -> tuple[str, int, int, dict]:
    """``(arch, num_classes, in_channels, meta)`` of a loaded checkpoint dict, each checked
    before anything is built from it: a damaged or hand-edited file must not make us
    allocate a 2^40-class head. Raises a one-line UserError naming the bad field."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a domaingap checkpoint (no '{CHECKPOINT_FORMAT}' format tag)")
    missing = [k for k in ("arch", "num_classes", "in_channels", "state_dict") if k not in ckpt]
    if missing:
        raise UserError(f"{path}: damaged domaingap checkpoint, '{missing[0]}' is missing")
    arch, num_classes, in_channels = ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"]
    damaged = f"{path}: damaged domaingap checkpoint,"
    if not isinstance(arch, str) or arch not in ARCHS:
        raise UserError(f"{path}: checkpoint names unknown arch {arch!r}")
    if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
        raise UserError(f"{damaged} num_classes is {num_classes!r} (expected 1 to {MAX_CLASSES})")
    if not _is_int(in_channels) or in_channels not in (1, 3):
        raise UserError(f"{damaged} in_channels is {in_channels!r} (expected 1 or 3)")
    meta = ckpt.get("meta") or {}
    if not isinstance(meta, dict):
        raise UserError(f"{damaged} meta is a {type(meta).__name__}, not a mapping")
    classes = meta.get("classes")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise UserError(f"{damaged} meta classes is not a list of names")
        if len(classes) != num_classes:
            raise UserError(f"{path}: checkpoint lists {len(classes)} classes for a {num_classes}-class head")
    size = meta.get("image_size")
    if size is not None and (not _is_int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE):
        raise UserError(f"{damaged} meta image_size is {size!r} (expected {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE})")
    return arch, num_classes, in_channels, dict(meta)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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
