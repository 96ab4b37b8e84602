"""What the Python API accepts as "a domain": one function turns it into a DomainDataset.

A domain may be given as a :class:`~adapt.data.domain.DomainDataset` (returned as is),
a domain string as on the command line (``"phantom-cxr:A:60"``, a folder of class
sub-folders, a flat folder of unlabelled images, a CSV manifest), a :class:`pathlib.Path`, or an image tensor / array
``[N, C, H, W]`` with values in [0, 1] (square images, C = 1 or 3), optionally with
labels. Anything else is a :class:`~adapt.errors.UserError` naming the argument.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from adapt.data.domain import DomainDataset, image_files, load_domain
from adapt.data.spec import DomainSpec, parse_domain_arg
from adapt.errors import UserError

__all__ = ["as_domain", "domain_spec", "is_image_batch"]


def domain_spec(text: str) -> DomainSpec:
    """:func:`parse_domain_arg`, plus: a flat folder of images (no class sub-folders) is
    an unlabelled domain — what ``diagnose drift --batch`` and the Python API read."""
    spec = parse_domain_arg(text)
    if spec.kind == "imagefolder":
        root = Path(spec.path)
        has_class_dirs = any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
        if not has_class_dirs and image_files(root, recursive=False):
            spec = spec.model_copy(update={"labeled": False})
    return spec


def is_image_batch(data: Any) -> bool:
    """True for a tensor or array of rank 4 (``[N, C, H, W]`` images)."""
    return isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim == 4


def as_domain(
    data: Any,
    *,
    argument: str,
    labels: Sequence[int] | np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    image_size: int = 64,
    channels: int = 1,
    seed: int = 0,
) -> DomainDataset:
    """``data`` as a DomainDataset (see the module docstring for what it may be).

    ``argument`` names the caller's parameter in error messages. ``image_size`` and
    ``channels`` apply to images read from files and to the phantom; an image tensor
    keeps its own size and channels. ``classes`` fixes the class-index mapping (pass
    the source's classes for the target); for a tensor without ``classes`` the classes
    are ``"0"``, ``"1"``, ... up to the largest label. ``seed`` only matters for the phantom.

    Examples
    --------
    >>> import torch
    >>> from adapt.data.inputs import as_domain
    >>> ds = as_domain(torch.rand(6, 1, 16, 16), argument="source", labels=[0, 1, 0, 1, 0, 1])
    >>> len(ds), ds.classes, ds.image_size
    (6, ['0', '1'], 16)
    >>> as_domain("phantom-cxr:B:8", argument="target", image_size=32).name
    'phantom-cxr:B'
    """
    if isinstance(data, DomainDataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        spec = domain_spec(os.fspath(data))
        return load_domain(spec, image_size=image_size, channels=channels, seed=seed,
                           classes=None if classes is None else list(classes))
    if is_image_batch(data):
        return _tensor_domain(data, argument, labels, classes)
    shape = getattr(data, "shape", None)
    what = f"an array of shape {tuple(shape)}" if shape is not None else f"a {type(data).__name__}"
    raise UserError(f"{argument}: expected images [N, C, H, W], a DomainDataset, a folder, a CSV manifest "
                    f"or 'phantom-cxr:A|B|C[:N]'; got {what}")


def _tensor_domain(data: Any, argument: str, labels: Any, classes: Sequence[str] | None) -> DomainDataset:
    x = torch.as_tensor(np.asarray(data) if isinstance(data, np.ndarray) else data).detach().float().cpu()
    n, c, h, w = x.shape
    if n < 1:
        raise UserError(f"{argument}: no images")
    if c not in (1, 3):
        raise UserError(f"{argument}: images must have 1 or 3 channels, got {c} (shape [N, C, H, W])")
    if h != w:
        raise UserError(f"{argument}: images must be square, got {h}×{w}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise UserError(f"{argument}: image values must be finite and lie in [0, 1]")
    if labels is None:
        y = np.full(n, -1, dtype=np.int64)
    else:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(y) != n:
            raise UserError(f"{argument}: {len(y)} labels for {n} images")
        if (y < -1).any():
            raise UserError(f"{argument}: labels must be class indices (or -1 = unknown)")
    names = list(classes) if classes is not None else [str(i) for i in range(int(y.max()) + 1 if (y >= 0).any() else 1)]
    if (y >= len(names)).any():
        raise UserError(f"{argument}: label {int(y.max())} outside the {len(names)} classes")
    return DomainDataset(name=argument, classes=names, labels=y, ids=[f"{argument}/{i}" for i in range(n)],
                         channels=c, image_size=h, images=x)
