"""One DANN training step: ours (``adapt.methods.dann.DANN``, the step of ``adapt.train``)
against pytorch-adapt's ``DANNHook`` — same model, same discriminator, same batch, same
optimiser (Adam), rounds interleaved (ours, theirs, ours, …) so that a loaded machine
slows both alike.

    python benchmarks/bench_dann_step.py [--arch small_cnn resnet18] [--batch 64] [--size 64]
                                         [--threads 1] [--rounds 15] [--channels-last | --ours-channels-last]

Prints, per architecture, the median step time of each and the ratio theirs / ours
(> 1: ours is faster). Both compute the same losses and gradients (tests/test_dann.py).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.methods.dann import DANN, grl_lambda  # noqa: E402
from adapt.models import build_model  # noqa: E402


class _FeaturesOf(torch.nn.Module):
    """G for pytorch-adapt: ``model.features`` as a module (same parameters)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.features(x)


def _pair(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(arch, 2, 1)
    dann = DANN(model.feature_dim, domain_weight=1.0)
    return model, dann


def bench(arch: str, batch: int, size: int, rounds: int, channels_last: bool,
          ours_channels_last: bool = False) -> tuple[float, float]:
    from pytorch_adapt.hooks import DANNHook
    from pytorch_adapt.weighters import SumWeighter

    g = torch.Generator().manual_seed(0)
    xs = torch.rand(batch, 1, size, size, generator=g)
    ys = torch.randint(0, 2, (batch,), generator=g)
    xt = (torch.rand(batch, 1, size, size, generator=g) * 0.5 + 0.4).clamp(0, 1)
    if channels_last:
        xs, xt = (x.contiguous(memory_format=torch.channels_last) for x in (xs, xt))

    model, dann = _pair(arch)
    disc = dann.modules()["discriminator"]
    their_model, their_disc = copy.deepcopy(model), copy.deepcopy(disc)
    if channels_last:
        for m in (model, their_model):
            m.to(memory_format=torch.channels_last)
    if ours_channels_last:  # what issue 20 proposed: our loop in channels-last, the hook fed as users feed it
        model.to(memory_format=torch.channels_last)
    for m in (model, disc, their_model, their_disc):
        m.train()
    ours_opt = torch.optim.Adam(list(model.parameters()) + list(disc.parameters()), lr=1e-4)
    their_opt = torch.optim.Adam(list(their_model.parameters()) + list(their_disc.parameters()), lr=1e-4)
    lam = grl_lambda(0.5)
    hook = DANNHook(opts=[their_opt], weighter=SumWeighter(), gradient_reversal_weight=lam)
    inputs = {"G": _FeaturesOf(their_model), "C": their_model.head, "D": their_disc,
              "src_imgs": xs, "src_labels": ys, "target_imgs": xt,
              "src_domain": torch.zeros(batch), "target_domain": torch.ones(batch)}

    ours_xs, ours_xt = xs, xt
    if ours_channels_last:
        ours_xs, ours_xt = (x.contiguous(memory_format=torch.channels_last) for x in (xs, xt))

    def ours() -> None:  # what adapt.train does per step: the objective's loss, backward, step
        loss, _ = dann.loss(model, ours_xs, ys, ours_xt, 0.5)
        ours_opt.zero_grad(set_to_none=True)
        loss.backward()
        ours_opt.step()

    def theirs() -> None:
        hook(inputs)

    ours(), theirs()  # warm-up
    t_ours, t_theirs = [], []
    for _ in range(rounds):
        for fn, out in ((ours, t_ours), (theirs, t_theirs)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(t_ours), statistics.median(t_theirs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["small_cnn", "resnet18"])
    ap.add_argument("--batch", type=int, default=64, help="images per domain")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--channels-last", action="store_true", help="both sides in channels-last layout")
    ap.add_argument("--ours-channels-last", action="store_true",
                    help="our step in channels-last, the hook in NCHW (not adopted: changes results at a fixed seed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"DANN step, {args.batch}+{args.batch} images {args.size}x{args.size}, {args.threads} thread(s), "
          f"{'channels-last' if args.channels_last else 'ours channels-last, theirs NCHW' if args.ours_channels_last else 'NCHW'}, median of {args.rounds} interleaved rounds")
    print("| arch | ours ms | pytorch-adapt DANNHook ms | ratio (theirs / ours) |")
    print("| --- | ---: | ---: | ---: |")
    for arch in args.arch:
        ours, theirs = bench(arch, args.batch, args.size, args.rounds, args.channels_last, args.ours_channels_last)
        print(f"| {arch} | {1e3 * ours:.1f} | {1e3 * theirs:.1f} | {theirs / ours:.2f}x |")


if __name__ == "__main__":
    main()
