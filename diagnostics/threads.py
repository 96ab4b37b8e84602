"""One thread for the gap statistics' small linear algebra.

The statistics of :func:`diagnostics.gap.measure_gap` are many small operations
(eigvalsh of a 128 × 128 Gram matrix per bootstrap replicate, permutation GEMMs, a
logistic regression): a second thread costs more in synchronisation than it saves, and
beside other busy processes (the audit's UMAP worker, a training loop) every parallel
region waits for its slowest thread. ``benchmarks/bench_gap_threads.py`` measures it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits  # installed with scikit-learn


@contextmanager
def single_threaded() -> Iterator[None]:
    """torch and the BLAS/OpenMP pools of numpy and scikit-learn at one thread; the
    previous torch thread count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(before)
