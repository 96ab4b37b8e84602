"""The digits → textured-digits study: a public-protocol benchmark built from packaged images.

    python benchmarks/digits_study.py [--seeds 0 1 2] [--recipe recipes/digits_study.yaml]
                                      [--shift textured|scanner] [--out runs/digits_study] [--hide-labels]
                                      [key.path=value ...]

Per seed, ``adapt.data.real_images.make_digits_shift`` builds the shift from data that
ships inside packages (scikit-learn's 1,797 handwritten digits as the grey source; the
target = the MNIST-M protocol of Ganin et al. 2016, |natural-photo patch − digit| per
pixel and RGB channel, patches from scikit-image's bundled photographs) with disjoint
source and target digit images, writes both as ImageFolder folders under
``<out>/data/seed<k>/`` and runs the recipe through ``adapt-run``'s own machinery
(``domaingap.pipeline.run_recipe``): source model, every method with label-free epoch
selection, evaluation. Target labels are used only for the report (accuracy and the
oracle column).

It prints, per method, mean ± sd over seeds of the target-test accuracy at the
label-free pick and at the oracle epoch (best by target labels: the selection regret
is their difference) and the source accuracy kept, then the expectations as
[PASS]/[FAIL] lines: DANN beats source-only by >= 10 points; the best label-free
method beats it by >= 20 points. Methods merged later (CDAN, MCC, CORAL, DAN, SHOT,
TENT) are added to the recipe's runs by ``study_table.extra_method_runs``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import study_table as study  # noqa: E402  (benchmarks/study_table.py)

from adapt.data.real_images import make_digits_shift, write_shift  # noqa: E402

#: CDAN, CDAN+E, MCC, CORAL, DAN, SHOT (20 epochs each, as DANN) and TENT (one pass)
EXTRA_RUNS = study.extra_method_runs(20)


def build_data(shift: str, seed: int, out: Path) -> dict[str, Path]:
    """Write seed ``seed``'s shift as ``out/data/<shift>/seed<seed>/{source,target}`` (once)."""
    root = out / "data" / shift / f"seed{seed}"
    if not (root / "target").is_dir():
        write_shift(make_digits_shift(shift, seed=seed), root, merge_target=True)
    return {"source": root / "source", "target": root / "target"}


def main() -> int:
    ap = study.study_arguments(__doc__, "recipes/digits_study.yaml", "runs/digits_study")
    ap.add_argument("--shift", default="textured", choices=["textured", "scanner"])
    ap.add_argument("--hide-labels", action="store_true",
                    help="give adapt-run the target as a flat unlabelled folder; score with the labels afterwards "
                         "(benchmarks/study_hidden.py)")
    args = ap.parse_args()
    if args.hide_labels:
        return _main_hidden(args)

    t0 = time.perf_counter()
    out = Path(args.out)
    rows: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:
        paths = build_data(args.shift, seed, out)
        data = [f"data.source.path={paths['source']}", f"data.target.path={paths['target']}"]
        if args.shift == "scanner":
            data.append("data.channels=1")
        per_seed = study.run_seeds(args.recipe, [seed], out / args.shift, [*data, *args.overrides], EXTRA_RUNS,
                                   resume=args.resume)
        for name, per in per_seed.items():
            rows.setdefault(name, {}).update(per)
    stats = study.method_stats(rows, args.seeds)
    study.print_table(stats, f"digits → {args.shift} digits, seeds {args.seeds} (accuracy %, mean ± sd over seeds), "
                       f"{time.perf_counter() - t0:.0f} s in all")

    src = stats["source-only"]
    checks = []
    if "dann" in stats:
        d = stats["dann"].target_mean - src.target_mean
        checks.append((f"DANN beats source-only on the target by >= 10 points ({100 * d:+.2f})", d >= 0.10))
    unsup = study.label_free_methods(stats)
    if unsup:
        best = max(unsup.values(), key=lambda s: s.target_mean)
        b = best.target_mean - src.target_mean
        checks.append((f"the best label-free method ({best.name}) beats source-only by >= 20 points "
                       f"({100 * b:+.2f})", b >= 0.20))
    study.print_checks(checks)
    return 0


def _main_hidden(args) -> int:
    """``--hide-labels``: each seed on the unlabelled target, scored with the hidden key."""
    import study_hidden

    out = Path(args.out)
    results = []
    for seed in args.seeds:
        paths = build_data(args.shift, seed, out)
        flat, key = study_hidden.hide(paths["target"], paths["target"].parent, seed)
        data = [f"data.source.path={paths['source']}", f"data.target.path={flat}"]
        if args.shift == "scanner":
            data.append("data.channels=1")
        results.append(study_hidden.hidden_seed(args.recipe, seed, out / f"{args.shift}_hidden",
                                                [*data, *args.overrides], EXTRA_RUNS, key, resume=args.resume))
    return 1 if study_hidden.print_hidden(results) else 0


if __name__ == "__main__":
    sys.exit(main())
