"""COT (``adapt.accuracy_estimation.cot.cot_error``) against the problem as the paper writes
it: POT's ``ot.emd2`` between every target prediction and every held-out source label
(n_t × n_s), which is what the tool solved before; COT now merges the label side into its K
one-hot vertices (n_t × K, the class mix as weights) — the same optimal cost.

    python benchmarks/bench_cot.py [--sizes 360 1000] [--classes 2 10] [--rounds 5]

Prints, per size and class count, the median time of each (one thread, interleaved), the
ratio old / new (> 1: faster now) and the largest difference between the two costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.accuracy_estimation.cot import cot_error  # noqa: E402


def full_problem(p: np.ndarray, y: np.ndarray) -> float:
    import ot  # late: as in the module it is compared with

    return float(ot.emd2(np.full(len(p), 1 / len(p)), np.full(len(y), 1 / len(y)), 1.0 - p[:, y]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[360, 1000])
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 10])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(1)
    except ImportError:  # one thread matters little here: the solver is single-threaded
        pass
    print("| images per side | classes | n_t × n_s s | n_t × K s | ratio | max difference |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        for k in args.classes:
            # confident predictions (the audit's case): Dirichlet with small concentration
            p = rng.dirichlet(np.full(k, 0.2), n)
            y = rng.integers(0, k, n)
            old, new, diff = [], [], 0.0
            for _ in range(args.rounds):
                t = time.perf_counter()
                a = full_problem(p, y)
                old.append(time.perf_counter() - t)
                t = time.perf_counter()
                b = cot_error(p, y, max_points=n)
                new.append(time.perf_counter() - t)
                diff = max(diff, abs(a - b))
            o, w = statistics.median(old), statistics.median(new)
            print(f"| {n} | {k} | {o:.4f} | {w:.4f} | {o / w:.0f}× | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
