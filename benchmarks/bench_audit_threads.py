"""Threads of the audit's model measurements beside UMAP's worker process: the Integrated
Gradients maps of :func:`diagnostics.attribution.attribute` (the audit's largest cost) at
the process's thread count against one thread, while a worker process keeps one core
busy (as UMAP's numba compilation and layout do during the audit), interleaved in one
process (a loaded machine slows both alike).

    python benchmarks/bench_audit_threads.py [--threads 2] [--rounds 3]

Prints the median seconds of each, the ratio (> 1: one thread is faster) and whether
the maps and convergence deltas are bit-identical.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.models import build_model  # noqa: E402
from diagnostics.attribution.maps import attribute  # noqa: E402


def _busy(stop) -> None:  # the neighbour: one core, pure Python (like numba compiling)
    x = 0
    while not stop.is_set():
        for i in range(100_000):
            x += i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="the process's threads (default: torch's)")
    ap.add_argument("--images", type=int, default=64, help="diagnostics.attribution_samples")
    ap.add_argument("--steps", type=int, default=12, help="diagnostics.attribution_steps")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1)
    model.train()
    model(torch.rand(64, 1, 64, 64))
    model.eval()
    x = torch.rand(args.images, 1, 64, 64)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    worker = ctx.Process(target=_busy, args=(stop,), daemon=True)
    worker.start()
    times: dict[int, list[float]] = {args.threads: [], 1: []}
    out = {}
    try:
        for _ in range(args.rounds):
            for t in times:  # interleaved
                torch.set_num_threads(t)
                t0 = time.perf_counter()
                r = attribute(model, x, n_steps=args.steps)
                times[t].append(time.perf_counter() - t0)
                out[t] = (r.maps, r.convergence_delta)
    finally:
        stop.set()
        worker.join(5)
    many, one = (statistics.median(times[t]) for t in times)
    print(f"IG, small_cnn, {args.images} images x {args.steps} steps, beside one busy process; "
          f"median of {args.rounds} rounds")
    print(f"| threads | {args.threads} | 1 | ratio |\n| --- | ---: | ---: | ---: |")
    print(f"| seconds | {many:.2f} | {one:.2f} | {many / one:.2f}x |")
    same = all(torch.equal(a, b) for a, b in zip(out[args.threads], out[1]))
    print(f"bit-identical maps and convergence deltas: {same}")


if __name__ == "__main__":
    main()
