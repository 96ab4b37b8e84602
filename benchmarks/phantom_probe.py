"""Probe the phantom's domain shift with a small CNN (is the shift real, and closable?).

Trains a minimal CNN on phantom site A and prints accuracy on

* site A test (marker shortcut present, as in training),
* site A test with the marker painted out (same images, marker rate 0) — did the model
  learn the lesion rather than only the marker?
* site B (source-only: the shift),
* site B after per-image histogram matching to site A's pooled intensity distribution,
* site B after one site-level map (pooled site-B quantiles → pooled site-A quantiles),
* site B after AdaBN (BatchNorm statistics re-estimated on unlabelled site-B images).

What the phantom is tuned for (DESIGN.md, "Built-in data"): A-without-marker > 90%,
site B clearly below site A but not chance (≈ 60–80%), and histogram matching /
AdaBN recovering much of the gap.

Run:  python benchmarks/phantom_probe.py [--seed 0] [--epochs 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from adapt.data.phantom import make_phantom


class SmallCNN(nn.Module):
    """4 × (conv3×3 → BN → ReLU → maxpool 2) → global average pool → linear.

    Input [B, 1, H, W] in [0, 1]; normalised inside by (x − 0.5) / 0.25.
    """

    def __init__(self, num_classes: int = 2, width: int = 16) -> None:
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 0.5) / 0.25))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> None:
    """AdamW lr 1e-3 with cosine decay to 0 per step, batch 64, plain cross-entropy.

    Why the decay: with a constant 1e-3 the weights still move fast in the last
    epoch and the BatchNorm running statistics (momentum 0.1, ≈ the last 10 batches)
    lag behind them; eval-mode accuracy then swings between epochs (seen: 99% → 51%
    → 92% on marker-free site A), which would make the probe measure luck.
    """
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    steps = epochs * -(-len(x) // 64)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(b).argmax(1) for b in x.split(256)])
    return float((pred == y).float().mean())


def histogram_match(images: torch.Tensor, reference: torch.Tensor, levels: int = 1024) -> torch.Tensor:
    """Map each image's intensities through the reference's quantile function.

    For a pixel of rank r among the image's P pixels, its empirical CDF value is
    F = (r + 0.5) / P; the matched value is Q_ref(F), Q_ref the pooled reference
    quantiles (``levels`` points, linear interpolation). Ties are broken by pixel
    order, which for continuous noisy images is immaterial.
    """
    q = np.linspace(0.0, 1.0, levels)
    ref_q = np.quantile(reference.numpy().reshape(-1), q)
    flat = images.numpy().reshape(len(images), -1)
    ranks = flat.argsort(axis=1).argsort(axis=1)
    cdf = (ranks + 0.5) / flat.shape[1]
    matched = np.interp(cdf, q, ref_q).astype(np.float32)
    return torch.from_numpy(matched.reshape(images.shape))


def site_histogram_match(images: torch.Tensor, target_pool: torch.Tensor, reference: torch.Tensor,
                         levels: int = 1024) -> torch.Tensor:
    """One monotone map for the whole site: Q_ref(F_site(v)), F_site from the pooled target.

    Undoes a site-wide intensity curve without flattening per-patient differences.
    """
    q = np.linspace(0.0, 1.0, levels)
    site_q = np.quantile(target_pool.numpy().reshape(-1), q)
    ref_q = np.quantile(reference.numpy().reshape(-1), q)
    # np.interp needs increasing x: tiny ramp breaks ties of repeated quantiles (clipped pixels)
    site_q = site_q + np.arange(levels) * 1e-9
    return torch.from_numpy(np.interp(images.numpy(), site_q, ref_q).astype(np.float32))


@torch.no_grad()
def adabn(model: nn.Module, x: torch.Tensor) -> None:
    """Re-estimate every BatchNorm's running mean/var on x (cumulative average), Li et al. 2016."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for b in x.split(64):
        model(b)
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    s, n = args.seed, args.n

    t0 = time.perf_counter()
    a_train = make_phantom("A", n, seed=s, image_size=args.size)
    a_test = make_phantom("A", n // 2, seed=s + 1000, image_size=args.size)
    a_test_clean = make_phantom("A", n // 2, seed=s + 1000, image_size=args.size, marker_rates=(0.0, 0.0))
    b_unlab = make_phantom("B", n, seed=s, image_size=args.size)  # AdaBN statistics only
    b_test = make_phantom("B", n // 2, seed=s + 1000, image_size=args.size)
    t_data = time.perf_counter() - t0

    def lab(b):
        return torch.from_numpy(b.labels)

    model = SmallCNN()
    t0 = time.perf_counter()
    train(model, a_train.images, lab(a_train), args.epochs, s)
    t_train = time.perf_counter() - t0

    results = {
        "A test": accuracy(model, a_test.images, lab(a_test)),
        "A test, marker painted out": accuracy(model, a_test_clean.images, lab(a_test_clean)),
        "B (source only)": accuracy(model, b_test.images, lab(b_test)),
        "B, histogram-matched to A": accuracy(model, histogram_match(b_test.images, a_train.images), lab(b_test)),
        "B, site-level histogram match": accuracy(
            model, site_histogram_match(b_test.images, b_unlab.images, a_train.images), lab(b_test)
        ),
    }
    adabn(model, b_unlab.images)
    results["B, AdaBN"] = accuracy(model, b_test.images, lab(b_test))
    pred_b = torch.cat([model(b).argmax(1) for b in b_test.images.split(256)])

    print(f"phantom probe: seed {s}, n {n}, {args.size}px, {args.epochs} epochs "
          f"(data {t_data:.1f} s, training {t_train:.1f} s)")
    for name, acc in results.items():
        print(f"  {name:<30s} {100 * acc:5.1f}%")
    print(f"  (after AdaBN, share of B predicted 'opacity': {100 * float(pred_b.float().mean()):.1f}%)")


if __name__ == "__main__":
    main()
