"""Probe the phantom: is the planted shortcut taken, is the lesion learnable, is the shift
real and closable? (A small CNN, trained the way the quickstart recipe trains it.)

Trains the project's ``small_cnn`` on phantom site A (70% of ``--n`` images; 15% pick
the epoch) as ``recipes/xray_to_xray.yaml`` does — AdamW lr 2e-3, weight decay 1e-4,
cosine decay, batch 64, 6 epochs, BatchNorm statistics re-estimated at each epoch end,
the epoch with the best site-A validation accuracy kept, patience 3 — and prints
accuracy on ``--n``/2 test images of other patients per site:

* A test (marker shortcut present, as in training),
* A test with the marker painted out (same images, marker rate 0), same model: how
  much of the model's accuracy the marker carries (the shortcut),
* A marker-free model on marker-free A test (a second model trained on site A with the
  marker painted out): the lesion alone is learnable,
* B (source-only: the shift),
* B after per-image histogram matching to site A's pooled intensity distribution,
* B after one site-level map (pooled site-B quantiles → pooled site-A quantiles),
* B after AdaBN (BatchNorm statistics re-estimated on unlabelled site-B images).

What the phantom is tuned for (DESIGN.md, "Built-in data"): the marker-free model
> 90% on marker-free site A; the marker-trained model clearly worse once the marker is
painted out (it took the shortcut, which the audit must catch); site B clearly below
site A but not chance (≈ 55–80%); histogram matching / AdaBN recovering much of the gap.

Run:  python benchmarks/phantom_probe.py [--seed 0] [--epochs 6]
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import numpy as np
import torch
from torch import nn

from adapt.data.phantom import make_phantom
from adapt.data.splits import stratified_split
from adapt.methods.adabn import adabn
from adapt.models import build_model

SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}


def train(images: torch.Tensor, labels: torch.Tensor, val_images: torch.Tensor, val_labels: torch.Tensor,
          epochs: int, seed: int, lr: float = 2e-3, batch_size: int = 64, patience: int = 3) -> nn.Module:
    """The quickstart's source training (``adapt.train.fit`` with the recipe's settings).

    AdamW (weight decay 1e-4), lr · (1 + cos πp)/2 per step (p = progress in [0, 1]),
    cross-entropy; after each epoch the BatchNorm statistics are re-estimated with the
    final weights ("precise BN": the running averages lag weights that still move), and
    the epoch with the best validation accuracy is kept; training stops after
    ``patience`` epochs without a strictly better one. The stop matters here: with a
    too-strong marker correlation the first epoch's marker detector is never beaten
    and becomes the model (see adapt/data/phantom.py).
    """
    torch.manual_seed(seed)
    model = build_model("small_cnn", num_classes=2, in_channels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = -(-len(images) // batch_size)
    total = epochs * steps_per_epoch
    best, best_state, bad = -1.0, None, 0
    for epoch in range(epochs):
        if bad >= patience:
            break
        g = torch.Generator().manual_seed(seed * 10_007 + epoch + 1)
        model.train()
        for step, idx in enumerate(torch.randperm(len(images), generator=g).split(batch_size)):
            p = (epoch * steps_per_epoch + step) / total
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * p))
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        adabn(model, images[:1024], batch_size=256)
        score = accuracy(model, val_images, val_labels)
        if score > best:
            best, best_state, bad = score, copy.deepcopy(model.state_dict()), 0
        else:
            bad += 1
    model.load_state_dict(best_state)
    return model.eval()


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n", type=int, default=1200, help="images per site (as the quickstart)")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    s, n = args.seed, args.n

    t0 = time.perf_counter()
    a = make_phantom("A", n, seed=s, image_size=args.size)
    a_clean = make_phantom("A", n, seed=s, image_size=args.size, marker_rates=(0.0, 0.0))
    b = make_phantom("B", n, seed=s, image_size=args.size)
    # test sets: other patients, larger than the recipe's 15% split (less noise in the figures)
    a_test = make_phantom("A", n // 2, seed=s + 1000, image_size=args.size)
    a_test_clean = make_phantom("A", n // 2, seed=s + 1000, image_size=args.size, marker_rates=(0.0, 0.0))
    b_test = make_phantom("B", n // 2, seed=s + 1000, image_size=args.size)
    t_data = time.perf_counter() - t0
    ia = stratified_split(a.labels, SPLIT, seed=s)
    ib = stratified_split(b.labels, SPLIT, seed=s + 1)

    def part(batch, idx):
        return batch.images[idx], torch.from_numpy(batch.labels[idx])

    t0 = time.perf_counter()
    model = train(*part(a, ia["train"]), *part(a, ia["val"]), args.epochs, s)
    clean_model = train(*part(a_clean, ia["train"]), *part(a_clean, ia["val"]), args.epochs, s)
    t_train = time.perf_counter() - t0

    def whole(batch):
        return batch.images, torch.from_numpy(batch.labels)

    b_test_x, b_test_y = whole(b_test)
    results = {
        "A test": accuracy(model, *whole(a_test)),
        "A test, marker painted out": accuracy(model, *whole(a_test_clean)),
        "A marker-free model, marker-free test": accuracy(clean_model, *whole(a_test_clean)),
        "B (source only)": accuracy(model, b_test_x, b_test_y),
        "B, histogram-matched to A": accuracy(model, histogram_match(b_test_x, a.images[ia["train"]]), b_test_y),
        "B, site-level histogram match": accuracy(
            model, site_histogram_match(b_test_x, b.images[ib["train"]], a.images[ia["train"]]), b_test_y),
    }
    adabn(model, b.images[ib["train"]])  # unlabelled site-B training images only
    results["B, AdaBN"] = accuracy(model, b_test_x, b_test_y)
    with torch.no_grad():
        pred_b = torch.cat([model(x).argmax(1) for x in b_test_x.split(256)])

    print(f"phantom probe: seed {s}, {n} images a site, {args.size}px, {args.epochs} epochs, "
          f"test {len(a_test)}/{len(b_test)} (data {t_data:.1f} s, training 2 models {t_train:.1f} s)")
    for name, acc in results.items():
        print(f"  {name:<40s} {100 * acc:5.1f}%")
    print(f"  (after AdaBN, share of B predicted 'opacity': {100 * float(pred_b.float().mean()):.1f}%)")


if __name__ == "__main__":
    main()
