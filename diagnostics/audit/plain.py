"""Result objects to JSON-able Python: the one conversion the audit uses.

Kept in this one place: :func:`adapt.io`'s JSON conversion does the same job for plain
containers and arrays; this one also unpacks ``.to_dict()`` results and dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping


def to_plain(obj: Any) -> Any:
    """Recursively turn result objects into JSON-able Python.

    Objects with ``.to_dict()`` (every diagnostics result) and dataclasses become dicts,
    numpy/torch scalars and arrays become numbers and lists, non-finite floats ``None``.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_plain(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, "detach"):  # torch tensor, without importing torch here
        obj = obj.detach().cpu().numpy()
    if hasattr(obj, "tolist"):  # numpy array or scalar
        return to_plain(obj.tolist())
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return str(obj)
