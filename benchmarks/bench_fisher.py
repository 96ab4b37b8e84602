"""Diagonal Fisher: our two per-sample engines vs a batch-size-1 autograd loop and BackPACK.

torchvision resnet18 (2 classes, 1 input channel), 64×64 inputs (the phantom's size),
eval mode; the loop, ``fisher_diagonal(engine="hooks")`` (layer hooks + closed-form
per-layer sums), ``fisher_diagonal(engine="vmap")`` (torch.func vmap(grad)) and the peer
that does the same job, BackPACK (Dangel et al., ICLR 2020; ``backpack-for-pytorch``,
its ``SumGradSquared`` extension on a summed cross-entropy, i.e. Σ_i (∇ log p(y_i|x_i))²,
divided by N) in one process on the same weights, images, labels and batch size. Prints
each time, the speed ratios (loop time / engine time, and BackPACK time / hooks time)
and the largest relative difference to the loop's Fisher; ``[PASS]/[FAIL]`` lines check
that the hooks engine equals BackPACK within 1e-4 (relative to each tensor's largest
entry) and is at least as fast.

BackPACK is optional (``pip install backpack-for-pytorch``); without it the script says
so and compares our engines with the loop only. torchvision's ResNet adds the residual
in place inside ``BasicBlock.forward``, which BackPACK cannot extend module by module,
so it is run through its torch.fx converter (``extend(model, use_converter=True)``,
which keeps the same parameter tensors).

    python benchmarks/bench_fisher.py [--samples 64] [--batch-size 32] [--threads 1] [--device cpu]
                                      [--image-size 64] [--engines hooks vmap backpack]
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


def backpack_fisher_fn(model: nn.Module, batch_size: int):
    """BackPACK's empirical Fisher diagonal: SumGradSquared of Σ_i CE_i, over N, per parameter.

    Returns ``fn(x, y) -> {name: F}`` with a copy of the model (same weights) extended
    once: extension is setup, not part of the timed computation (as our engines' hooks
    are), and BackPACK's module hooks stay off the model our engines use."""
    import copy

    from backpack import backpack, extend
    from backpack.extensions import SumGradSquared

    model = copy.deepcopy(model)
    extended = extend(model, use_converter=True)
    loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))
    names = {id(p): n for n, p in model.named_parameters()}

    def fn(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        extended.eval()
        total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        for i in range(0, len(x), batch_size):
            extended.zero_grad(set_to_none=True)
            loss = loss_fn(extended(x[i : i + batch_size]), y[i : i + batch_size])
            with backpack(SumGradSquared()):
                loss.backward()
            for p in extended.parameters():
                total[names[id(p)]] += p.sum_grad_squared
        return {n: t / len(x) for n, t in total.items()}

    return fn


def _max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of max|a − b| / max|b|."""
    return max(((a[n] - b[n]).abs().max() / b[n].abs().max().clamp_min(1e-30)).item() for n in b)


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
    ap.add_argument("--engines", nargs="+", default=None, choices=["hooks", "vmap", "backpack"],
                    help="backpack needs backpack-for-pytorch (default: hooks vmap, plus backpack when installed)")
    args = ap.parse_args()
    if args.engines is None:
        args.engines = ["hooks", "vmap"] + (["backpack"] if _has_backpack() else [])
        if "backpack" not in args.engines:
            print("BackPACK not installed (pip install backpack-for-pytorch): comparing our engines with the loop only")
    elif "backpack" in args.engines and not _has_backpack():
        raise SystemExit("error: --engines backpack needs backpack-for-pytorch (pip install backpack-for-pytorch)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = resnet18_1ch().to(device).eval()
    x = torch.rand(args.samples, 1, args.image_size, args.image_size, device=device)
    y = torch.randint(0, 2, (args.samples,), device=device)
    n_params = sum(p.numel() for p in model.parameters())

    bp = backpack_fisher_fn(model, args.batch_size) if "backpack" in args.engines else None

    def engine_run(engine, xs, ys):
        if engine == "backpack":
            return bp(xs, ys)
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
    times, outs = {}, {}
    for engine in args.engines:
        t, fast = timed(lambda: engine_run(engine, x, y))
        times[engine], outs[engine] = t, fast
        label = "BackPACK SumGradSquared" if engine == "backpack" else "fisher_diagonal engine=" + engine
        print(f"{label:34s}: {t:7.2f} s   loop/engine {t_loop / t:5.2f}x   "
              f"max rel diff {_max_rel(fast, slow):.1e}")
    if "backpack" in times and "hooks" in times:
        diff = _max_rel(outs["hooks"], outs["backpack"])
        ratio = times["backpack"] / times["hooks"]
        print(f"hooks vs BackPACK: max rel diff {diff:.1e}, BackPACK time / hooks time {ratio:.2f}x")
        print(f"[{'PASS' if diff <= 1e-4 else 'FAIL'}] hooks engine equals BackPACK within 1e-4 ({diff:.1e})")
        print(f"[{'PASS' if ratio >= 1.0 else 'FAIL'}] hooks engine at least as fast as BackPACK ({ratio:.2f}x)")


def _has_backpack() -> bool:
    import importlib.util

    return importlib.util.find_spec("backpack") is not None


if __name__ == "__main__":
    main()
