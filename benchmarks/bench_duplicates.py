"""Near-duplicate search of the data audit, three routes on phantom images with planted near
copies (resized, shifted, re-encoded as JPEG), interleaved in one process: every row's full
distance to every column (``bound_pool=1, pairs_once=False``, the first route), every pair's
full distance once (``bound_pool=1``, the second), and the default — a pooled lower bound for
every pair, the full distance only where the bound is within the gate.

    python benchmarks/bench_duplicates.py [--n 1200] [--copies 20] [--site A] [--threads 1] [--rounds 3]

Prints the median time of each, the ratios to the default (> 1: the default is faster), how
many planted copies each found, and whether they found the same pairs with the same evidence
(hash distance; RMSE and relative RMSE to 1e-3 relative: the default's exact stage is float64,
the others' float32 matrix products lose ~1e-4 of a near copy's RMSE to cancellation).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.data.phantom import make_phantom  # noqa: E402
from diagnostics.data_audit.duplicates import find_duplicates  # noqa: E402


def near_copy(img: np.ndarray, k: int) -> np.ndarray:
    """The k-th planted copy of ``img``: enlarged by 16 or 32 px and back, rolled by 1-2
    pixels, saved as JPEG (quality 80) — the family docs/data_audit.md describes."""
    side = img.shape[0]
    big = np.asarray(Image.fromarray(img).resize((side + 16 * (1 + k % 2),) * 2, Image.BICUBIC))
    rolled = np.roll(big, (1 + k % 2, -(1 + (k // 2) % 2)), axis=(0, 1))
    buf = io.BytesIO()
    Image.fromarray(rolled).resize((side, side), Image.BILINEAR).save(buf, format="JPEG", quality=80)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1200)
    ap.add_argument("--copies", type=int, default=20)
    ap.add_argument("--site", default="A")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batch = make_phantom(args.site, args.n, seed=0, image_size=64)
    pixels = (batch.images[:, 0].numpy() * 255 + 0.5).astype(np.uint8)
    planted = {}
    for k in range(args.copies):  # the last `copies` images become copies of the first ones
        pixels[args.n - 1 - k] = near_copy(pixels[k], k)
        planted[k] = args.n - 1 - k
    routes = {"every row x column": dict(bound_pool=1, pairs_once=False),
              "each pair once": dict(bound_pool=1), "bound, then exact": {}}
    times: dict[str, list[float]] = {k: [] for k in routes}
    found: dict[str, list] = {}
    for _ in range(args.rounds):  # interleaved: a loaded machine slows all alike
        for name, kwargs in routes.items():
            t0 = time.perf_counter()
            found[name] = find_duplicates(pixels, **kwargs)
            times[name].append(time.perf_counter() - t0)
    t = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.n} phantom images (site {args.site}), {args.copies} planted copies, {args.threads} thread(s)")
    print("| route | s | ratio to the default | copies found | pairs | same pairs and evidence |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    ref = found["bound, then exact"]
    for name in routes:
        pairs = {(p.i, p.j) for p in found[name]}
        hits = sum((k, j) in pairs for k, j in planted.items())
        same = [(p.i, p.j, p.kind, p.hash_distance) for p in found[name]] == \
            [(p.i, p.j, p.kind, p.hash_distance) for p in ref] and \
            all(abs(a.rmse - b.rmse) <= 1e-3 * b.rmse
                and abs(a.relative_rmse - b.relative_rmse) <= 1e-3 * b.relative_rmse for a, b in zip(found[name], ref))
        print(f"| {name} | {t[name]:.2f} | {t[name] / t['bound, then exact']:.2f}x | {hits} / {len(planted)} | "
              f"{len(found[name])} | {same} |")

if __name__ == "__main__":
    main()
