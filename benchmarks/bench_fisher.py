"""Diagonal Fisher: our two per-sample engines vs a batch-size-1 autograd loop.

torchvision resnet18 (2 classes, 1 input channel), 64×64 inputs (the phantom's size),
eval mode; the loop, ``fisher_diagonal(engine="hooks")`` (layer hooks + closed-form
per-layer sums) and ``fisher_diagonal(engine="vmap")`` (torch.func vmap(grad)) in one
process on the same weights, images and labels. Prints each time, the speed ratios
(loop time / engine time) and the largest relative difference to the loop's Fisher.

    python benchmarks/bench_fisher.py [--samples 64] [--batch-size 32] [--threads 1] [--device cpu]
                                      [--image-size 64] [--engines hooks vmap]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch import nn

from adapt.methods.ewc import fisher_diagonal


def resnet18_1ch(num_classes: int = 2) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def loop_fisher(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The slow reference: one forward/backward per image."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        logp = torch.log_softmax(model(x[i : i + 1]), dim=1)[0, y[i]]
        for n, g in zip(params, torch.autograd.grad(logp, list(params.values()))):
            total[n] += g.square()
    return {n: t / len(x) for n, t in total.items()}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--engines", nargs="+", default=["hooks", "vmap"], choices=["hooks", "vmap"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet18_1ch().to(device).eval()
    x = torch.rand(args.samples, 1, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 2, (args.samples,), device=device)
    n_params = sum(p.numel() for p in model.parameters())

    def engine_run(engine, xs, ys):
        return fisher_diagonal(model, xs, ys, mode="empirical", batch_size=args.batch_size, engine=engine)

    # warm-up every path (allocator, kernels, vmap tracing) on a few images
    for engine in args.engines:
        engine_run(engine, x[:2], y[:2])
    loop_fisher(model, x[:2], y[:2])
    _sync(device)

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        return time.perf_counter() - t0, out

    t_loop, slow = timed(lambda: loop_fisher(model, x, y))
    print(f"resnet18 (1ch, 2 classes, {n_params / 1e6:.1f}M params), {args.samples} images "
          f"{args.image_size}x{args.image_size}, device={device}, threads={args.threads}, "
          f"batch={args.batch_size}, torch {torch.__version__}")
    print(f"{'per-sample loop (autograd, bs=1)':34s}: {t_loop:7.2f} s")
    for engine in args.engines:
        t, fast = timed(lambda: engine_run(engine, x, y))
        rel = max(((fast[n] - slow[n]).abs().max() / slow[n].abs().max().clamp_min(1e-30)).item() for n in slow)
        print(f"{'fisher_diagonal engine=' + engine:34s}: {t:7.2f} s   loop/engine {t_loop / t:5.2f}x   "
              f"max rel diff {rel:.1e}")


if __name__ == "__main__":
    main()
