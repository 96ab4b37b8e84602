"""How the report writes a value: percentages, p-values, statistics, changes in points,
and evidence keys as labels. Missing or non-finite values read "—". The wording of the
numbers themselves is the audit's (:mod:`diagnostics.audit.wording`), so a figure reads
the same in a verdict sentence and in a table."""

from __future__ import annotations

import math
from typing import Any, Mapping

from diagnostics.audit import wording

_PCT_WORDS = ("accuracy", "acc", "f1", "share", "recall", "rate")


def as_float(x: Any) -> float | None:
    """A finite float, or None (missing, non-numeric, boolean, NaN/inf)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def fmt_pct(x: Any) -> str:
    """0.7123 -> '71.2%'; missing -> '—'."""
    v = as_float(x)
    return "—" if v is None else wording.percent(v)


def fmt_p(x: Any) -> str:
    """p-values as 0.003 or <0.001."""
    v = as_float(x)
    return "—" if v is None else wording.fmt_p(v)


def fmt_num(x: Any) -> str:
    """A statistic with 3 significant figures; integers as integers."""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    v = as_float(x)
    if v is None:
        return "—" if x is None else str(x)
    if v.is_integer() and abs(v) < 1e9 and not isinstance(x, float):
        return f"{int(v):,}"
    return wording.statistic(v)


def fmt_points(a: Any, b: Any) -> str:
    """Change between two fractions in percentage points: '+17.3'."""
    va, vb = as_float(a), as_float(b)
    if va is None or vb is None:
        return ""
    return wording.signed_points(vb - va)


def _is_pct_key(key: str) -> bool:
    k = key.lower()
    if "p_value" in k or "entropy" in k:
        return False
    return any(w in k.replace("-", "_").split("_") or k.endswith(w) for w in _PCT_WORDS)


def fmt_value(key: str, value: Any) -> str:
    """Format an evidence/table value by what its key says it is."""
    k = str(key).lower()
    if "p_value" in k:
        return fmt_p(value)
    v = as_float(value)
    if v is not None and _is_pct_key(k) and -1.0 <= v <= 1.0:
        return fmt_pct(v)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt_num(x) for x in value) + "]"
    if isinstance(value, Mapping):
        return ", ".join(f"{kk}: {fmt_value(kk, vv)}" for kk, vv in value.items())
    return fmt_num(value)


def key_label(key: str) -> str:
    """An evidence/figure key as a label: 'mmd2_before' -> 'MMD² before'."""
    text = str(key).replace("_", " ")
    for a, b in (("mmd2", "MMD²"), ("mmd", "MMD"), ("auc", "AUC"), ("im score", "IM score"),
                 ("snd", "SND"), ("log k", "log K"), ("frechet", "Fréchet"), ("f1", "F1")):
        text = text.replace(a, b)
    return text[:1].upper() + text[1:]


def scalar_facts(d: Mapping | None, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """Scalar items of a dict as (label, formatted value); nested lists/maps left out."""
    out = []
    for k, v in (d or {}).items():
        if k in skip or isinstance(v, Mapping) or (isinstance(v, (list, tuple)) and len(v) > 6):
            continue
        if isinstance(v, (list, tuple)) and any(isinstance(x, (list, tuple, Mapping)) for x in v):
            continue
        out.append((key_label(k), fmt_value(k, v)))
    return out
