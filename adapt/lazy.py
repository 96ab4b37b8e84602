"""Package attributes imported on first use (PEP 562), shared by ``adapt`` and ``diagnostics``.

A package lists ``LAZY_EXPORTS = {public name: defining module}`` and sets
``__getattr__, __dir__ = lazy_exports(__name__, LAZY_EXPORTS, globals())``: ``import adapt``
then stays quick (no torch), and the name is imported the first time it is read.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package`` for ``exports``."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
