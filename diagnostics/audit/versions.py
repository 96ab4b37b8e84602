"""The installed versions of the main packages, for the report's provenance."""

from __future__ import annotations

from importlib import metadata
from typing import Iterable


def package_versions(names: Iterable[str] = (
    "domaingap", "torch", "torchvision", "numpy", "scikit-learn", "pot", "captum",
    "umap-learn", "pytorch-adapt", "matplotlib", "jinja2",
)) -> dict[str, str]:
    """Installed versions of ``names`` (missing packages are left out)."""
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out
