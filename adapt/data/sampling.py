"""Class-balanced sampling for imbalanced source data."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from adapt.errors import UserError


def class_balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weight w_i = 1 / n_{y_i} (inverse class frequency), 0 for label -1.

    Drawing with these weights makes every class equally likely per draw.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    known = labels >= 0
    if not known.any():
        raise UserError("class-balanced sampling: no labelled samples")
    counts = np.bincount(labels[known])
    weights = np.zeros(len(labels), dtype=np.float64)
    weights[known] = 1.0 / counts[labels[known]]
    return weights


def class_balanced_sampler(
    labels: np.ndarray, seed: int, num_samples: int | None = None
) -> WeightedRandomSampler:
    """A seeded ``WeightedRandomSampler`` (with replacement) that balances the classes.

    ``num_samples`` draws per epoch (default: the number of samples). The generator is
    seeded, so the same seed gives the same sequence of indices.
    """
    weights = class_balanced_weights(labels)
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=int(num_samples) if num_samples is not None else len(weights),
        replacement=True,
        generator=generator,
    )
