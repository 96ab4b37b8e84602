"""Deterministic stratified splits and few-labels-per-class subsets.

Both are pure functions of (labels, seed): the same seed gives the same indices on
any machine (NumPy's PCG64 ``default_rng``).
"""

from __future__ import annotations

import numpy as np

from adapt.errors import UserError


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split sample indices into named parts with the class proportions of the whole.

    Per class c with n_c samples, part s gets floor(f_s · n_c) samples plus one of the
    leftover samples in order of the largest remainder f_s · n_c − floor(f_s · n_c)
    (Hamilton's method; ties broken at random), so every part's count is within one
    sample of f_s · n_c. When n_c ≥ the number of parts, every part gets at least one
    sample of the class (taken from the largest part). Unknown labels (-1) form their
    own stratum. Returns {name: sorted int64 indices}; the parts are disjoint and
    cover every index.
    """
    labels = np.asarray(labels).reshape(-1)
    names, fracs = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        counts = _apportion(len(members), fracs, rng)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for k, name in enumerate(names):
            parts[name].append(members[bounds[k] : bounds[k + 1]])
    return {
        name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.zeros(0, np.int64)
        for name, chunks in parts.items()
    }


def _check_fractions(fractions: dict[str, float]) -> tuple[list[str], np.ndarray]:
    if not fractions:
        raise UserError("split fractions: none given")
    names = list(fractions)
    fracs = np.array([float(fractions[k]) for k in names], dtype=np.float64)
    bad = [k for k, f in zip(names, fracs) if not (0.0 < f <= 1.0)]
    if bad:
        raise UserError(f"split fractions: {bad[0]!r} must be in (0, 1], got {fractions[bad[0]]}")
    if abs(fracs.sum() - 1.0) > 1e-6:
        raise UserError(f"split fractions: must sum to 1, got {fracs.sum():g} ({fractions})")
    return names, fracs


def _apportion(n: int, fracs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to n, each within one of fracs·n (largest remainder)."""
    ideal = fracs * n
    counts = np.floor(ideal).astype(np.int64)
    leftover = n - int(counts.sum())
    if leftover > 0:
        remainder = ideal - counts
        # lexsort: last key is primary → largest remainder first, random tie-break
        order = np.lexsort((rng.random(len(fracs)), -remainder))
        counts[order[:leftover]] += 1
    if n >= len(fracs):
        for k in np.flatnonzero(counts == 0):
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    return counts


def labeled_per_class(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k random sample indices per class (all of a class's samples if it has fewer).

    For "a few labelled target images" experiments. Unknown labels (-1) are never
    picked. Returns sorted int64 indices.
    """
    if k < 1:
        raise UserError(f"labels per class: must be at least 1, got {k}")
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels[labels >= 0]):
        members = np.flatnonzero(labels == c)
        picked.append(rng.choice(members, size=min(k, len(members)), replace=False))
    if not picked:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(picked)).astype(np.int64)
