"""The order in which one epoch visits the samples: seeded by (seed, epoch) so a resumed
run sees the same batches, sharded across ranks, optionally class-balanced."""

from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
from torch.utils.data import DataLoader

from adapt.distributed import SINGLE, DistContext


def epoch_order(
    n: int,
    epoch: int,
    seed: int,
    ctx: DistContext = SINGLE,
    weights: np.ndarray | None = None,
) -> list[int]:
    """This rank's sample order for one epoch.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    ``weights`` (per-sample, e.g. inverse class frequency) draws with replacement —
    the class-balanced sampler. With several ranks every rank takes an equal-length,
    disjoint shard of the same order.
    """
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    if weights is not None:
        order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(n)
    if ctx.enabled:
        per_rank = n // ctx.world_size
        order = order[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
    return order.tolist()


def cycle(loader_factory: Callable[[int], DataLoader]) -> Iterator:
    """Endless iterator over a loader, re-shuffled each pass."""
    i = 0
    while True:
        for batch in loader_factory(i):
            yield batch
        i += 1


def batches_per_epoch(n: int, batch_size: int, ctx: DistContext = SINGLE) -> int:
    """Optimiser steps in one epoch of ``n`` samples on this rank (the last batch may be short)."""
    per_rank = n // ctx.world_size if ctx.enabled else n
    return max(1, math.ceil(per_rank / batch_size))
