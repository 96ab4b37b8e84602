"""Diagonal Fisher: vmap(grad) per-sample gradients vs a batch-size-1 autograd loop.

torchvision resnet18 (2 classes, 1 input channel), 64×64 inputs, eval mode, both
paths in one process on the same weights, images and labels; prints both times, the
speed ratio and the largest relative difference between the two Fishers.

    python benchmarks/bench_fisher.py [--samples 64] [--batch-size 16] [--threads 1] [--device cpu]
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
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet18_1ch().to(device).eval()
    x = torch.rand(args.samples, 1, 64, 64, device=device)
    y = torch.randint(0, 2, (args.samples,), device=device)
    n_params = sum(p.numel() for p in model.parameters())

    # warm-up both paths (allocator, kernels) on a few images
    fisher_diagonal(model, x[:2], y[:2], mode="empirical", batch_size=2)
    loop_fisher(model, x[:2], y[:2])
    _sync(device)

    t0 = time.perf_counter()
    fast = fisher_diagonal(model, x, y, mode="empirical", batch_size=args.batch_size)
    _sync(device)
    t_vmap = time.perf_counter() - t0

    t0 = time.perf_counter()
    slow = loop_fisher(model, x, y)
    _sync(device)
    t_loop = time.perf_counter() - t0

    rel = max(((fast[n] - slow[n]).abs().max() / slow[n].abs().max().clamp_min(1e-30)).item() for n in slow)
    print(f"resnet18 (1ch, 2 classes, {n_params / 1e6:.1f}M params), {args.samples} images 64x64, "
          f"device={device}, threads={args.threads}, vmap batch={args.batch_size}")
    print(f"per-sample loop (autograd, bs=1): {t_loop:8.2f} s")
    print(f"vmap(grad)                      : {t_vmap:8.2f} s")
    print(f"speed ratio loop / vmap         : {t_loop / t_vmap:8.2f}x")
    print(f"max relative difference         : {rel:.2e}")


if __name__ == "__main__":
    main()
