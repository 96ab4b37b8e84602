"""The one timing rule of the benchmarks: a warm-up call, then the median of repeats."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> tuple[float, Any]:
    """(median wall seconds of ``repeats`` calls of ``fn`` after one untimed warm-up call,
    the last call's result). ``time.perf_counter``; the median resists a loaded machine."""
    if warmup:
        fn()
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
