"""Feature extraction overhead: ``extract_features`` vs the bare model forward.

Same model, same images, same batch size, one process. The bare loop is the floor:
``model.features(x)`` over a tensor already in memory, in inference mode. Ours goes
through the DataLoader, copies to the device, runs the classifier head for probs and
accumulates the float64 streaming moments (n, Σx, ΣxxT). Prints both times and
bare_time / our_time (1.0 = no overhead; expect >= 0.8).

    python benchmarks/bench_features.py [--archs resnet18 small_cnn] [--n 1000] [--size 64]
                                        [--batch-size 128] [--repeats 3] [--threads T] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from adapt.data import load_domain, parse_domain_arg
from adapt.models import build_model
from diagnostics.features import extract_features, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_forward(model, images: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Seconds for model.features over preloaded images (the floor)."""
    model.eval()
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in images.split(batch_size):
            model.features(x.to(device, non_blocking=True))
    _sync(device)
    return time.perf_counter() - t0


def ours(model, dataset, batch_size: int, device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fs = extract_features(dataset, model, "model", batch_size=batch_size, device=device, progress=False)
    _sync(device)
    assert fs.moments.n == len(dataset) and fs.probs is not None
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "small_cnn"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dataset = load_domain(parse_domain_arg(f"phantom-cxr:A:{args.n}"), image_size=args.size)
    images = dataset.images()  # preloaded [N, 1, S, S] for the bare loop
    print(f"{args.n} images {args.size}x{args.size}, batch {args.batch_size}, device {device}, "
          f"torch threads {torch.get_num_threads()}, best of {args.repeats}")
    print(f"{'arch':<12} {'bare (s)':>9} {'ours (s)':>9} {'bare/ours':>10}")
    for arch in args.archs:
        torch.manual_seed(0)
        model = build_model(arch, 2).to(device).eval()
        bare_forward(model, images[: args.batch_size], args.batch_size, device)  # warm-up
        ours(model, dataset.subset(range(args.batch_size)), args.batch_size, device)
        t_bare, t_ours = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            t_bare.append(bare_forward(model, images, args.batch_size, device))
            t_ours.append(ours(model, dataset, args.batch_size, device))
        b, o = min(t_bare), min(t_ours)
        print(f"{arch:<12} {b:>9.3f} {o:>9.3f} {b / o:>10.2f}")


if __name__ == "__main__":
    main()
