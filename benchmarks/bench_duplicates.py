"""Near-duplicate search of the data audit: every pair compared once (i < j, the default)
against every row compared with every column (``pairs_once=False``, the old route), on
phantom images with planted near copies (resized, shifted, re-encoded as JPEG), the two
interleaved in one process.

    python benchmarks/bench_duplicates.py [--n 1200] [--copies 20] [--site A] [--threads 1] [--rounds 3]

Prints the median time of each, the ratio old / new (> 1: the new route is faster), how
many planted copies each found, and whether the two found the same pairs with the same
evidence (hash distance, RMSE, relative RMSE).
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
    times: dict[bool, list[float]] = {True: [], False: []}
    found: dict[bool, list] = {}
    for _ in range(args.rounds):  # interleaved: a loaded machine slows both alike
        for once in (False, True):
            t0 = time.perf_counter()
            found[once] = find_duplicates(pixels, pairs_once=once)
            times[once].append(time.perf_counter() - t0)
    t_old, t_new = statistics.median(times[False]), statistics.median(times[True])
    hits = {once: sum((k, j) in {(p.i, p.j) for p in found[once]} for k, j in planted.items()) for once in found}
    same = [p.to_dict() for p in found[False]] == [p.to_dict() for p in found[True]]
    print(f"{args.n} phantom images (site {args.site}), {args.copies} planted copies, {args.threads} thread(s): "
          f"every row x column {t_old:.2f} s, each pair once {t_new:.2f} s, ratio {t_old / t_new:.2f}x; "
          f"copies found {hits[False]} / {hits[True]}; pairs {len(found[False])} / {len(found[True])}, "
          f"same pairs and evidence: {same}")


if __name__ == "__main__":
    main()
