"""Deterministic stratified splits, stratified subsamples and few-labels-per-class subsets.

All are pure functions of (labels, seed): the same seed gives the same indices on
any machine (NumPy's PCG64 ``default_rng``). The one apportionment rule they share
is :func:`largest_remainder` (Hamilton's method).
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


def largest_remainder(quotas: np.ndarray, total: int, *, counts: np.ndarray | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Integer counts for real quotas by the largest-remainder (Hamilton) method.

    Starting from ``counts`` (default ``floor(quotas)``), one more is given to the
    entries with the largest remainder ``quotas − counts`` until the counts sum to
    ``total`` (none is given when they already do). Ties: the first entry wins, or,
    with ``rng``, a seeded random key decides (``len(quotas)`` draws, always made,
    so the stream of ``rng`` does not depend on the quotas). Returns int64 [K].
    """
    quotas = np.asarray(quotas, dtype=np.float64)
    counts = np.floor(quotas).astype(np.int64) if counts is None else np.array(counts, dtype=np.int64)
    remainder = quotas - counts
    if rng is None:
        order = np.argsort(-remainder, kind="stable")
    else:
        # lexsort: last key is primary → largest remainder first, random tie-break
        order = np.lexsort((rng.random(len(quotas)), -remainder))
    counts[order[: max(0, total - int(counts.sum()))]] += 1
    return counts


def _apportion(n: int, fracs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to n, each within one of fracs·n (largest remainder)."""
    ideal = fracs * n
    counts = np.floor(ideal).astype(np.int64)
    if counts.sum() < n:  # the tie-break keys are drawn only when a seat is left (seeded splits rely on it)
        counts = largest_remainder(ideal, n, rng=rng)
    if n >= len(fracs):
        for k in np.flatnonzero(counts == 0):
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    return counts


def stratified_subsample(labels, max_n: int, seed: int = 0, *, ties: str = "first",
                         keep_every_group: bool = False, what: str = "max_n") -> np.ndarray:
    """Sorted int64 indices of at most ``max_n`` rows with the proportions of ``labels``.

    ``labels`` [N]: any group ids (class, or domain×class; unknown labels −1 are one
    more group). Group g of size N_g gets ``max_n·N_g/N`` rows rounded by
    :func:`largest_remainder`, its members drawn at random with ``seed``. All rows
    when N ≤ ``max_n``.

    ties: "first" (rounding ties go to the first group in sorted order) or "random"
        (a seeded draw decides; the rule of ``diagnose gap``'s subsample).
    keep_every_group: at least one row per group when the cap allows (a small group
        must not vanish from a picture).
    what: names the setting in the error message.
    """
    if ties not in ("first", "random"):
        raise ValueError(f"stratified_subsample: ties={ties!r} is not 'first' or 'random'")
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if n <= max_n:
        return np.arange(n, dtype=np.int64)
    if max_n < 1:
        raise UserError(f"{what}={max_n} must be >= 1")
    rng = np.random.default_rng(seed)
    keys, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    quotas = sizes * max_n / n
    take = np.floor(quotas).astype(np.int64)
    if keep_every_group and len(keys) <= max_n:
        take = np.maximum(take, 1)
        while take.sum() > max_n:  # the floor-at-1 can overshoot: trim a group
            over = np.where(take > 1, take - quotas, -np.inf)  # that keeps at least one row
            take[np.argmax(over)] -= 1
    take = largest_remainder(quotas, max_n, counts=take, rng=rng if ties == "random" else None)
    picked = [rng.choice(np.flatnonzero(inverse == g), size=k, replace=False)
              for g, k in enumerate(take) if k > 0]
    return np.sort(np.concatenate(picked)).astype(np.int64)


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
