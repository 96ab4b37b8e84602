"""Drift monitor speed: a 1,000-image batch against a run's reference, small_cnn, CPU.

    python benchmarks/bench_drift.py [--batch 1000] [--reference 600] [--threads 2] [--repeats 3]

What is timed (median of ``--repeats`` after one warm-up, ``time.perf_counter``):

* ``features``: the deployed model's features and softmax on the batch
  (:func:`diagnostics.features.extract_features`, batch size 128);
* ``compare``: :func:`diagnostics.drift.compare_to_reference` — MMD permutation test
  (500 permutations, ≤ 1,000 points a side), the cross-validated classifier test,
  the prediction χ² and confidence tests, Fréchet from the moments, collapse check;
* ``total`` = features + compare (what ``diagnose drift`` adds to loading the images);
* reference save + load and the reference file's size.

Target (issue 13): total < 30 s on this 2-core CPU. No peer library for the whole
monitor is installed here (alibi-detect is not in the environment; its MMD test is
compared in bench_gap_stats.py). Images are phantom-cxr (64×64, one channel): site A
for the reference and a same-distribution batch, site B for a shifted batch; the
verdict of each is printed so one can see the timing is of a working monitor. The
model is small_cnn with random weights and BatchNorm statistics from site A (the
cost does not depend on what the weights learned).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from timing import median_time  # benchmarks/timing.py (the script's folder is on sys.path)




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--reference", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import torch
    from threadpoolctl import threadpool_limits

    from adapt.data import load_domain, parse_domain_arg
    from adapt.methods.adabn import adabn
    from adapt.models import build_model
    from diagnostics.drift import build_reference, compare_to_reference, load_reference, save_reference
    from diagnostics.features import extract_features

    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        torch.manual_seed(0)
        ref_ds = load_domain(parse_domain_arg(f"phantom-cxr:A:{args.reference}"), image_size=64, seed=1)
        model = build_model("small_cnn", 2, 1)
        adabn(model, ref_ds.images())
        model.eval()
        ref = build_reference(extract_features(ref_ds, model, progress=False), ref_ds.classes)
        print(f"reference: {ref.n} site-A images, {len(ref.features)} stored features of {ref.features.shape[1]} dims; "
              f"threads {args.threads}")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "drift_reference.npz"
            t_io, _ = median_time(lambda: load_reference(save_reference(ref, path)), args.repeats)
            size = path.stat().st_size
        print(f"reference save + load: {t_io * 1000:.0f} ms, file {size / 1024:.0f} KiB")
        print(f"{'batch':<22} {'features s':>10} {'compare s':>10} {'total s':>8}")
        for label, text, seed in (("site A (same)", f"phantom-cxr:A:{args.batch}", 2),
                                  ("site B (shifted)", f"phantom-cxr:B:{args.batch}", 2)):
            batch_ds = load_domain(parse_domain_arg(text), image_size=64, seed=seed)
            t_feat, fs = median_time(lambda: extract_features(batch_ds, model, progress=False), args.repeats)
            t_cmp, res = median_time(lambda: compare_to_reference(ref, fs), args.repeats)
            total = t_feat + t_cmp
            print(f"{label + f' {len(batch_ds)}':<22} {t_feat:>10.2f} {t_cmp:>10.2f} {total:>8.2f}  "
                  f"target < 30 s: {'met' if total < 30 else 'MISSED'} ({30 / total:.1f}x margin)")
            print(f"    {res.verdict}")


if __name__ == "__main__":
    main()
