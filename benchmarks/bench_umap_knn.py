"""The audit's UMAP picture: UMAP's own approximate neighbour search (NN-descent, pynndescent)
against the exact graph handed to it (``diagnostics.embedding.exact_knn``), on what the
audit embeds — a few hundred to a few thousand pooled source + target feature rows after PCA.

    python benchmarks/bench_umap_knn.py [--points 1200 2000] [--dim 50] [--rounds 3]

Each timing runs in a **new process** (the audit's embedding runs in a spawned worker, so
it pays numba's compilation every time): the first embedding in the process and a second one
after it, for both ways, interleaved (a loaded machine slows both alike). Prints the median
of each, the ratio old / new (> 1: the exact graph is faster) and, in one process, the
recall of NN-descent's graph against the exact one (1.0 = the same neighbours).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import diagnostics.embedding as emb
if not {exact}:
    emb.EXACT_KNN_MAX_POINTS = 0  # UMAP's own search, as before
rng = np.random.default_rng(0)
n, d = {n}, {d}
centres = rng.normal(size=(8, d)) * 3
x = (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)
x[n // 2:, :4] += 2.0  # the second half is the "target"
times = []
for _ in range(2):
    t = time.perf_counter()
    emb._umap(x, 0, 15, 0.1)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def one_process(n: int, d: int, exact: bool) -> list[float]:
    code = CHILD.format(root=str(ROOT), exact=exact, n=n, d=d)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def recall(n: int, d: int) -> float:
    import warnings

    import numpy as np
    from umap.umap_ import nearest_neighbors

    sys.path.insert(0, str(ROOT))
    from diagnostics.embedding import exact_knn

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, d)) * 3
    x = (centres[rng.integers(0, 8, n)] + rng.normal(size=(n, d))).astype(np.float32)
    x[n // 2:, :4] += 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        approx, _, _ = nearest_neighbors(x, 15, "euclidean", {}, False, np.random.RandomState(0),
                                         low_memory=True, use_pynndescent=True, n_jobs=1, verbose=False)
    exact, _ = exact_knn(x, 15)
    return float(np.mean([len(set(a) & set(b)) / 15 for a, b in zip(approx, exact)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, nargs="+", default=[1200, 2000])
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    print("| points | call | NN-descent s | exact graph s | ratio | recall of NN-descent |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for n in args.points:
        old, new = [], []
        for _ in range(args.rounds):
            old.append(one_process(n, args.dim, False))
            new.append(one_process(n, args.dim, True))
        r = recall(n, args.dim)
        for i, call in enumerate(("first in a new process", "second")):
            a, b = statistics.median(t[i] for t in old), statistics.median(t[i] for t in new)
            print(f"| {n} | {call} | {a:.2f} | {b:.2f} | {a / b:.2f}× | {r:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
