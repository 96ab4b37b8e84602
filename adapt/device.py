"""The one place a device name from a recipe or a command line becomes a torch device."""

from __future__ import annotations

import torch

from adapt.errors import UserError


def resolve_device(name: str | torch.device, setting: str = "device") -> torch.device:
    """``name`` as a :class:`torch.device`.

    ``auto`` picks CUDA when it is available, else the CPU; a ``torch.device`` is returned
    as is. ``cuda`` (or ``cuda:N``) without an available GPU, and a name torch does not
    know, are a one-line :class:`UserError` naming ``setting`` (e.g. ``train.device``).
    """
    if isinstance(name, torch.device):
        return name
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{setting}: '{name}' requested but no CUDA device is available (use auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"{setting}: '{name}' is not a device (use auto, cpu or cuda)") from None
