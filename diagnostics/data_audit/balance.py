"""Class balance per domain and split, and group representation across domains.

Pure functions of label arrays and group columns: counts, shares and the two figures
a reader checks first — the imbalance ratio (largest class / smallest class) and, per
group value, its share in each domain (a group that is 2 % of the source and 30 % of
the target is a representation gap: the source model barely saw it).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

#: largest / smallest class count from which a split is called imbalanced
IMBALANCE_RATIO = 3.0
#: a group's share differs between domains by at least this many points ...
GROUP_SHARE_GAP = 0.10
#: ... and by at least this factor (or it is absent from one domain): a representation gap
GROUP_SHARE_RATIO = 3.0


def class_balance(labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Counts and shares of each class among the labelled samples (label -1 = unknown),
    and the imbalance ratio max/min count (inf when a class has none; None unlabelled)."""
    labels = np.asarray(labels).reshape(-1)
    known = labels[labels >= 0]
    counts = np.bincount(known, minlength=len(classes)) if len(known) else np.zeros(len(classes), np.int64)
    total = int(counts.sum())
    ratio = None
    if total:
        ratio = float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")
    return {
        "n": int(len(labels)),
        "labelled": total,
        "counts": {str(c): int(k) for c, k in zip(classes, counts)},
        "shares": {str(c): (float(k) / total if total else None) for c, k in zip(classes, counts)},
        "imbalance_ratio": ratio,
        "imbalanced": ratio is not None and ratio >= IMBALANCE_RATIO,
    }


def group_representation(groups: Mapping[str, Mapping[str, Sequence[str]]]) -> dict:
    """Per group column, each value's share in each domain, and the representation gaps.

    ``groups``: {domain: {column: per-sample values}}. A column whose values never occur
    in two domains (e.g. the phantom's ``site``: the domain's own name) is skipped, as
    it measures the domain, not a group within it. Returns {column: {"shares": {value:
    {domain: share}}, "gaps": [{value, low_domain, low_share, high_domain, high_share}]}}.
    """
    columns = sorted({c for cols in groups.values() for c in cols})
    out: dict = {}
    for col in columns:
        per = {d: np.asarray(cols[col]).astype(str) for d, cols in groups.items() if col in cols and len(cols[col])}
        values = sorted({v for arr in per.values() for v in arr.tolist()})
        seen_in = {v: [d for d, arr in per.items() if (arr == v).any()] for v in values}
        if len(per) < 2 or not any(len(ds) >= 2 for ds in seen_in.values()):
            continue
        shares = {v: {d: float((arr == v).mean()) for d, arr in per.items()} for v in values}
        gaps = []
        for v, by_domain in shares.items():
            lo = min(by_domain, key=by_domain.get)
            hi = max(by_domain, key=by_domain.get)
            a, b = by_domain[lo], by_domain[hi]
            if b - a >= GROUP_SHARE_GAP and (a == 0 or b / a >= GROUP_SHARE_RATIO):
                gaps.append({"value": v, "low_domain": lo, "low_share": a, "high_domain": hi, "high_share": b})
        out[col] = {"shares": shares, "gaps": gaps}
    return out
