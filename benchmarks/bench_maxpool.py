"""The small CNN's 2x2 max-pooling: PyTorch's NCHW pooling kernel against
:class:`adapt.models.max_pool.MaxPool2x2` (the maximum of the four strided corners; with a
gradient, the kernel's backward on each window's first maximum), on what ``adapt-run`` runs
without gradients — an inference pass (evaluation, scoring, feature extraction) and an
AdaBN / precise-BN estimate — and with them: a training epoch (batches of 64, cross-entropy,
backward, Adam). Same weights, same images, the two interleaved in one process (a loaded
machine slows both alike).

    python benchmarks/bench_maxpool.py [--n 840] [--size 64] [--threads 1] [--rounds 3]

Prints the median time of each, the ratio old / new (> 1: the new pooling is faster), and
whether the logits, the re-estimated BatchNorm statistics and the trained weights are
bit-identical.
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

from adapt.methods.adabn import adabn, batchnorm_layers  # noqa: E402
from adapt.models import build_model  # noqa: E402
from adapt.models.max_pool import MaxPool2x2  # noqa: E402


def with_torch_pooling(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every MaxPool2x2 replaced by ``nn.MaxPool2d(2)`` (the old model)."""
    old = copy.deepcopy(model)
    for stage in old.backbone.stages:  # the small CNN pools at the start of stages 2-4
        if isinstance(getattr(stage, "pool", None), MaxPool2x2):
            stage.pool = torch.nn.MaxPool2d(2)
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=840, help="images (the quickstart's training splits)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    new = build_model("small_cnn", 2, 1)
    new.train()
    new(torch.rand(64, 1, args.size, args.size))  # running statistics that are not the defaults
    new.eval()
    models = {"nn.MaxPool2d": with_torch_pooling(new), "MaxPool2x2": new}
    x = torch.rand(args.n, 1, args.size, args.size)

    @torch.no_grad()
    def infer(k: str) -> torch.Tensor:
        return torch.cat([models[k](x[i:i + 256]) for i in range(0, args.n, 256)])

    def estimate(k: str) -> list[torch.Tensor]:
        m = copy.deepcopy(models[k])
        adabn(m, x, torch.device("cpu"), batch_size=256)
        return [t for bn in batchnorm_layers(m) for t in (bn.running_mean, bn.running_var)]

    y = torch.randint(0, 2, (args.n,), generator=torch.Generator().manual_seed(1))

    def train_epoch(k: str) -> list[torch.Tensor]:
        m = copy.deepcopy(models[k])
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-3)
        for i in range(0, args.n, 64):
            loss = torch.nn.functional.cross_entropy(m(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return list(m.state_dict().values())

    tasks = (("inference pass", infer), ("AdaBN estimate", estimate), ("training epoch", train_epoch))
    times: dict[tuple[str, str], list[float]] = {}
    outs: dict[tuple[str, str], object] = {}
    for _ in range(args.rounds):
        for task, fn in tasks:
            for k in models:  # interleaved: old, new, old, new, ...
                t0 = time.perf_counter()
                outs[task, k] = fn(k)
                times.setdefault((task, k), []).append(time.perf_counter() - t0)
    print(f"small_cnn, {args.n} images {args.size}x{args.size}, {args.threads} thread(s), "
          f"median of {args.rounds} rounds")
    print("| pass | nn.MaxPool2d s | MaxPool2x2 s | ratio |\n| --- | ---: | ---: | ---: |")
    for task, _ in tasks:
        old, fast = (statistics.median(times[task, k]) for k in models)
        print(f"| {task} | {old:.2f} | {fast:.2f} | {old / fast:.2f}x |")
    same_logits = torch.equal(outs["inference pass", "nn.MaxPool2d"], outs["inference pass", "MaxPool2x2"])
    same_stats = all(torch.equal(a, b) for a, b in zip(outs["AdaBN estimate", "nn.MaxPool2d"],
                                                       outs["AdaBN estimate", "MaxPool2x2"]))
    same_weights = all(torch.equal(a, b) for a, b in zip(outs["training epoch", "nn.MaxPool2d"],
                                                         outs["training epoch", "MaxPool2x2"]))
    print(f"bit-identical logits: {same_logits}; bit-identical BatchNorm statistics: {same_stats}; "
          f"bit-identical weights after the training epoch: {same_weights}")


if __name__ == "__main__":
    main()
