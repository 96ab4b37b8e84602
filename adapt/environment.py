"""Where a run ran: installed package versions, device, platform (for reports)."""

from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from adapt.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the packages whose versions a run's ``metrics.json`` records
RUN_PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "pytorch-adapt", "pot", "captum", "umap-learn", "numpy", "scipy",
    "scikit-learn", "pydicom",
)

#: the packages whose versions the audit report records
AUDIT_PACKAGES: tuple[str, ...] = (
    "domaingap", "torch", "torchvision", "numpy", "scikit-learn", "pot", "captum",
    "umap-learn", "pytorch-adapt", "matplotlib", "jinja2",
)


def package_versions(names: Iterable[str] = AUDIT_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names``, in that order (missing packages are left out)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def environment_info(device: torch.device) -> dict[str, Any]:
    """Versions (domaingap, python, :data:`RUN_PACKAGES`), the device (with the GPU's
    name), the platform and torch's thread count."""
    import torch  # late: package_versions serves the torch-free audit too

    versions = {"domaingap": __version__, "python": platform.python_version(),
                **package_versions(RUN_PACKAGES)}
    dev = str(device)
    if device.type == "cuda":
        dev += f" ({torch.cuda.get_device_name(device)})"
    return {"versions": versions, "device": dev, "platform": platform.platform(),
            "threads": torch.get_num_threads()}
