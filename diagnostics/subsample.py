"""Stratified subsampling with a fixed seed, shared by the attribution and embedding views."""

from __future__ import annotations

import numpy as np

from adapt.errors import UserError


def stratified_indices(groups, max_n: int, seed: int = 0, *, keep_every_group: bool = False,
                       what: str = "max_n") -> np.ndarray:
    """Sorted indices of at most ``max_n`` rows, every group (class, or domain×class)
    keeping its proportion by largest-remainder rounding, drawn with a fixed seed.
    All rows when there are few enough.

    ``keep_every_group``: at least one row per group when the cap allows (a small group
    must not vanish from a picture). ``what`` names the setting in the error message.
    """
    groups = np.asarray(groups).reshape(-1)
    n = len(groups)
    if n <= max_n:
        return np.arange(n)
    if max_n < 1:
        raise UserError(f"{what}={max_n} must be >= 1")
    rng = np.random.default_rng(seed)
    keys, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    quota = counts * max_n / n
    take = np.floor(quota).astype(int)
    if keep_every_group and len(keys) <= max_n:
        take = np.maximum(take, 1)
        while take.sum() > max_n:  # the floor-at-1 can overshoot: trim a group
            over = np.where(take > 1, take - quota, -np.inf)  # that keeps at least one row
            take[np.argmax(over)] -= 1
    for j in np.argsort(-(quota - take), kind="stable")[: max(0, max_n - take.sum())]:
        take[j] += 1
    picked = [rng.choice(np.flatnonzero(inverse == g), size=k, replace=False)
              for g, k in enumerate(take) if k > 0]
    return np.sort(np.concatenate(picked))
