"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One thread for torch and for numpy/scipy's BLAS, restored afterwards: on a shared
    2-core machine oversubscribed threads made the small float64 linear algebra of the
    statistics tests up to 10x slower. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)
