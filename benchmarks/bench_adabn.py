"""Exact AdaBN / precise BN: the one-pass sweep along the model's chain against one
prefix pass per BatchNorm layer (the generic route), same model, same images.

    python benchmarks/bench_adabn.py [--arch small_cnn] [--n 840] [--size 64] [--threads 1]

Prints the median of ``--repeats`` timings after a warm-up, the ratio, and the largest
relative difference of the running statistics between the two routes.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from timing import median_time  # benchmarks/timing.py (the script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.methods.adabn import adabn, batchnorm_layers  # noqa: E402
from adapt.models import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="small_cnn")
    ap.add_argument("--n", type=int, default=840, help="images (the quickstart's source train split)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(args.arch, 2, 1)
    x = torch.rand(args.n, 1, args.size, args.size) * 0.5 + 0.2
    batches = [(x[i:i + args.batch], None) for i in range(0, args.n, args.batch)]
    generic, swept = copy.deepcopy(model), copy.deepcopy(model)
    t_generic, _ = median_time(lambda: adabn(generic, batches, chain_sweep=False), args.repeats)
    t_sweep, _ = median_time(lambda: adabn(swept, batches), args.repeats)
    diff = max(float(((g.running_var - s.running_var).abs().max() / g.running_var.abs().max())) for g, s in
               zip(batchnorm_layers(generic), batchnorm_layers(swept)))
    print(f"{args.arch}, {args.n} images {args.size}x{args.size}, {args.threads} thread(s): "
          f"per-layer passes {t_generic:.2f} s, chain sweep {t_sweep:.2f} s, "
          f"ratio {t_generic / t_sweep:.2f}x; max relative difference of running_var {diff:.1e}")


if __name__ == "__main__":
    main()
