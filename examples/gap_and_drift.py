"""Measure a domain gap and monitor drift from Python.

1. the gap between two sets of images (here: phantom X-rays of sites A and B, as pixel
   features): the MMD and classifier two-sample tests, the Fréchet distance with its
   bootstrap interval, the Wasserstein-2 distance;
2. a drift detector built from the deployed model's reference images, called on new
   batches — one from the same site, one from another.
Run:  python examples/gap_and_drift.py
"""

from __future__ import annotations

import argparse

from adapt import adapt_model, build_model
from adapt.data import make_phantom
from diagnostics import DriftDetector, domain_gap


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=80, help="images per set")
    parser.add_argument("--permutations", type=int, default=199)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    # 1. the gap between two image sets ([N, C, H, W] in [0, 1]; folders and CSVs work too)
    site_a = make_phantom("A", args.n, seed=args.seed, image_size=32).images
    site_b = make_phantom("B", args.n, seed=args.seed + 1, image_size=32).images
    gap = domain_gap(site_a, site_b, features="pixels", permutations=args.permutations, bootstrap=50, seed=args.seed)
    iv = gap.frechet_interval
    print(f"MMD² {gap.mmd.mmd2:.4f} (p = {gap.mmd.p_value:.3f}); classifier AUC {gap.classifier_test.auc:.2f} "
          f"(p = {gap.classifier_test.p_value:.3f})")
    print(f"Fréchet {gap.frechet_distance:.3g} [{iv.low:.3g}, {iv.high:.3g}]; W2 {gap.transport.distance:.3g}")

    # 2. a model trained on site A, deployed on site B, watched for drift
    model = build_model("small_cnn", num_classes=2, in_channels=1)
    adapt_model(model, f"phantom-cxr:A:{args.n}", f"phantom-cxr:B:{args.n}", method="source_only", epochs=1,
                batch_size=16, image_size=32, seed=args.seed)
    detector = DriftDetector(make_phantom("B", args.n, seed=10, image_size=32).images, model=model,
                             classes=["normal", "opacity"], permutations=args.permutations, seed=args.seed)
    for name, batch in (("site B, new batch", make_phantom("B", args.n, seed=11, image_size=32).images),
                        ("site A batch", make_phantom("A", args.n, seed=12, image_size=32).images)):
        result = detector.predict(batch)
        print(f"{name}: drift={result.drift} — {result.verdict}")


if __name__ == "__main__":
    main()
