"""Keep freed memory in the process instead of handing it back to the OS after every tensor.

glibc's ``malloc`` serves a large block (above its mmap threshold: 128 KiB, rising with use
to at most 32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` when freed; the next
tensor of that size then faults its pages in again, one zero-filled 4 KiB page at a time. A
CPU forward pass allocates a new activation per layer — a 256 x 16 x 64 x 64 float32 map is
64 MiB, over any threshold — so on the 2-core machine ``x + 1`` over it took 35 ms, and
6.4 ms once the memory stayed mapped: most of an elementwise layer's time was page faults.
PyTorch's CPU tuning guide suggests swapping in jemalloc or tcmalloc for this; glibc's own
``mallopt`` does it without a new dependency:

* ``M_MMAP_MAX = 0`` — large blocks come from the heap, not from their own mappings;
* ``M_TRIM_THRESHOLD = 1 GiB`` — freed memory at the heap's top stays mapped up to 1 GiB.

The arithmetic is untouched (PyTorch aligns every CPU tensor to 64 bytes itself): results
are bit for bit the same (``benchmarks/bench_allocator.py`` checks it and measures AdaBN's
estimate 2.0x, an inference pass 2.2-2.6x, a training epoch 1.0-1.1x faster; the quickstart's
metrics.json equal but for its timings). The price is memory: the process keeps what it
freed, so the quickstart's peak resident memory rose from 2.05-2.11 GB to 2.41-2.75 GB
(docs/benchmarks.md). ``adapt-run`` and ``diagnose`` call :func:`retain_freed_memory` at
start; a program using the Python API may call it too. ``DOMAINGAP_KEEP_FREED_MEMORY=0``
leaves the allocator alone; off glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: ``mallopt`` parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: freed memory at the top of the heap is returned to the OS only beyond this
TRIM_THRESHOLD_BYTES = 1 << 30


def retain_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_MAX`` to 0 and ``M_TRIM_THRESHOLD`` to 1 GiB (module docstring).

    Returns True when both were set; False off glibc, when ``DOMAINGAP_KEEP_FREED_MEMORY`` is
    ``0``, or when glibc refused. Idempotent; affects allocations made after the call."""
    if os.environ.get("DOMAINGAP_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 — glibc only: musl has mallopt as a no-op stub
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
