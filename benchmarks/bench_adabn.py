"""Exact AdaBN / precise BN: the one-pass sweep along the model's chain against one
prefix pass per BatchNorm layer (the generic route), same model, same images.

    python benchmarks/bench_adabn.py [--arch small_cnn] [--n 840] [--size 64] [--threads 1]

Prints the median of ``--repeats`` timings after a warm-up, the ratio, and the largest
relative difference of the running statistics between the two routes. A second line
times the chain sweep with each batch's per-channel moments from ``torch.var_mean`` (the
old reduction) against :func:`adapt.methods.adabn.batch_moments` (PyTorch's BatchNorm
statistics kernel, used now), the two interleaved, and their largest difference.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from timing import median_time  # benchmarks/timing.py (the script's folder is on sys.path)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import adapt.methods.adabn as adabn_module  # noqa: E402
from adapt.methods.adabn import adabn, batchnorm_layers  # noqa: E402
from adapt.models import build_model  # noqa: E402


def var_mean_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The old per-batch moments: ``torch.var_mean`` over every dimension but the channels."""
    var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
    return mean, var


def max_relative_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float(((g.running_var - s.running_var).abs().max() / g.running_var.abs().max())) for g, s in
               zip(batchnorm_layers(a), batchnorm_layers(b)))


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
    diff = max_relative_difference(generic, swept)
    print(f"{args.arch}, {args.n} images {args.size}x{args.size}, {args.threads} thread(s): "
          f"per-layer passes {t_generic:.2f} s, chain sweep {t_sweep:.2f} s, "
          f"ratio {t_generic / t_sweep:.2f}x; max relative difference of running_var {diff:.1e}")

    new_moments = adabn_module.batch_moments
    old, new = copy.deepcopy(model), copy.deepcopy(model)
    times: dict[str, list[float]] = {"var_mean": [], "batch_moments": []}
    for _ in range(args.repeats):  # interleaved: a loaded machine slows both alike
        for name, net, fn in (("var_mean", old, var_mean_moments), ("batch_moments", new, new_moments)):
            adabn_module.batch_moments = fn
            try:
                times[name].append(median_time(lambda: adabn(net, batches), 1)[0])
            finally:
                adabn_module.batch_moments = new_moments
    t_old, t_new = (statistics.median(times[k]) for k in ("var_mean", "batch_moments"))
    print(f"  chain sweep with var_mean moments {t_old:.2f} s, with batch_moments {t_new:.2f} s, "
          f"ratio {t_old / t_new:.2f}x; max relative difference of running_var {max_relative_difference(old, new):.1e}")


if __name__ == "__main__":
    main()
