"""Run-to-run spread: copies of one run that differ only in their seed.

The same recipe and source model can land far apart (issue 17 saw 71.8 % and 47.6 % on
one shift); a single run cannot show it. Copies (``method.runs[].copies: k``) can: how far
their estimated (and, where target labels exist, their true) accuracies spread, and on
what share of the target images they disagree — the disagreement rate of two models
bounds the accuracy difference between them, |acc(a) − acc(b)| ≤ P(a ≠ b), with no label.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any, Mapping

import numpy as np

__all__ = ["copy_groups", "run_spread"]

#: what may differ between copies of one run
COPY_KEYS = ("name", "seed", "copies")


def copy_groups(configs: Mapping[str, Mapping[str, Any]]) -> list[list[str]]:
    """Groups of run names whose settings are equal but for name and seed (two or more
    each), in the order the runs are listed. ``configs``: {run name: its settings}."""
    groups: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        key = repr(sorted((k, repr(v)) for k, v in cfg.items() if k not in COPY_KEYS))
        groups.setdefault(key, []).append(name)
    return [g for g in groups.values() if len(g) > 1]


def run_spread(names: list[str], target_preds: Mapping[str, np.ndarray],
               estimates: Mapping[str, float] | None = None,
               true_accuracy: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """The spread of one group of copies on the same target images.

    ``target_preds``: {name: [n] predicted classes}; ``estimates``: {name: estimated
    accuracy}; ``true_accuracy``: {name: measured accuracy or None}. Returns ``{"runs",
    "disagreement": {"mean", "max"}}`` (share of images two copies label differently, over
    every pair) plus ``"estimated"`` / ``"true"``: {"min", "max"} where given (fractions)."""
    out: dict[str, Any] = {"runs": list(names)}
    rates = [float(np.mean(np.asarray(target_preds[a]) != np.asarray(target_preds[b])))
             for a, b in combinations(names, 2)]
    out["disagreement"] = {"mean": float(np.mean(rates)), "max": float(np.max(rates))}
    for key, values in (("estimated", estimates), ("true", true_accuracy)):
        v = [values.get(n) for n in names] if values else []
        if v and all(x is not None for x in v):
            out[key] = {"min": float(min(v)), "max": float(max(v))}
    return out
