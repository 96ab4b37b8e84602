"""Feature matrices in, as the statistics expect them: one checked conversion."""

from __future__ import annotations

import numpy as np

from adapt.errors import UserError


def feature_matrix(a, name: str, *, allow_vector: bool = False) -> np.ndarray:
    """``a`` (numpy array, torch tensor or nested lists) as a float64 [N, D] matrix.

    ``allow_vector``: a 1-D input of N scalars becomes [N, 1] (transport of 1-D samples);
    then at least one row is required too. NaN/inf and any other shape are a one-line
    :class:`UserError` naming ``name``.
    """
    if hasattr(a, "detach"):  # a torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float64)
    if allow_vector:
        if arr.ndim == 1:
            arr = arr[:, None]
        if arr.ndim != 2 or arr.shape[0] < 1:
            raise UserError(f"{name}: expected a [N, D] matrix, got shape {arr.shape}")
    elif arr.ndim != 2:
        raise UserError(f"{name}: expected a [N, D] feature matrix, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise UserError(f"{name}: contains NaN or infinite values")
    return arr
