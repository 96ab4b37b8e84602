"""The gap statistics (``diagnostics.gap.measure_gap``: MMD permutation test, Fréchet
distance + bootstrap, domain classifier, classifier two-sample test, transport) at the
process's torch/BLAS thread count against one thread, interleaved in one process.

    python benchmarks/bench_gap_threads.py [--threads 2] [--n 360] [--dim 128] [--rounds 3]

The audit's default sizes: 360 held-out images per domain (the quickstart), the small
CNN's 128 features, 500 permutations, 100 bootstrap replicates. Prints the median of each,
the ratio (> 1: one thread is faster) and the largest difference between the results.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diagnostics.gap as gap_mod  # noqa: E402
from diagnostics.features import FeatureSet  # noqa: E402
from diagnostics.moments import Moments  # noqa: E402


def _features(rng: np.random.Generator, n: int, d: int, shift: float) -> FeatureSet:
    x = (rng.standard_normal((n, d)) + shift).astype(np.float32)
    return FeatureSet(x, -np.ones(n, np.int64), None, Moments.from_features(torch.from_numpy(x)), "bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="the process's thread count (torch and BLAS)")
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    s, t = _features(rng, args.n, args.dim, 0.0), _features(rng, args.n, args.dim, 0.2)
    torch.set_num_threads(args.threads)
    policy = gap_mod.single_threaded

    def at_process_threads():
        gap_mod.single_threaded = lambda: threadpool_limits(limits=args.threads)  # the old behaviour
        try:
            return gap_mod.measure_gap(s, t, seed=0)
        finally:
            gap_mod.single_threaded = policy

    def at_one_thread():
        return gap_mod.measure_gap(s, t, seed=0)

    times: dict[str, list[float]] = {"process": [], "one": []}
    out = {}
    for _ in range(args.rounds):
        for key, fn in (("process", at_process_threads), ("one", at_one_thread)):
            t0 = time.perf_counter()
            out[key] = fn()
            times[key].append(time.perf_counter() - t0)
    a, b = statistics.median(times["process"]), statistics.median(times["one"])
    fa, fb = out["process"].frechet_interval, out["one"].frechet_interval
    print(f"measure_gap, {args.n} + {args.n} points, {args.dim} features, median of {args.rounds} interleaved rounds")
    print(f"| threads | {args.threads} (process) | 1 (policy) | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| seconds | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    print(f"Fréchet interval {fa.low:.6g}–{fa.high:.6g} vs {fb.low:.6g}–{fb.high:.6g}; "
          f"MMD p {out['process'].mmd.p_value:.4g} vs {out['one'].mmd.p_value:.4g}; "
          f"domain AUC {out['process'].domain.auc:.6g} vs {out['one'].domain.auc:.6g}")


if __name__ == "__main__":
    main()
