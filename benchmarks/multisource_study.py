"""The multi-source studies of docs/multisource.md: two labelled sources → one unlabelled target.

    python benchmarks/multisource_study.py --case phantom|digits [--seeds 0 1 2] [--out runs/multisource]
                                           [key.path=value ...]

Per seed it runs ``adapt-run``'s own machinery (:func:`domaingap.pipeline.run_recipe`)
three times on the same target split:

* each source alone (``data.sources`` cut to that one entry = the single-source case),
  with the recipe's single-source runs (source-only, AdaBN, DANN);
* both sources: the naive union (source-only, AdaBN and DANN on the union, every image
  drawn alike) and the multi-source methods (DANN with similarity weights, msdann, m3sda).

Cases: ``phantom`` — sites A and C → site B (recipes/multisource_phantom.yaml);
``digits`` — scikit-learn's grey handwritten digits and the same kind of digits through
the scanner style (``adapt.data.real_images.ScannerStyle``), two disjoint halves of the
source digits, → textured digits (MNIST-M protocol; recipes/multisource_digits.yaml).

It prints, per row, mean ± sd over seeds of the target-test accuracy at the label-free
pick (IM), at the oracle epoch (target labels, reporting only) and the source accuracy,
then the issue's expectation as a [PASS]/[FAIL] line: the best multi-source method beats
the better single source (the better of the two, chosen with target labels — the most a
single-source user could get) by >= 3 points. Target labels are used only to report.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import study_table as study  # noqa: E402  (benchmarks/study_table.py)

from adapt.data.real_images import (  # noqa: E402
    ImageSet, ScannerStyle, make_digits_shift, scan_digits, write_image_folder)
from adapt.method_registry import objectives  # noqa: E402
from adapt.recipe import load_recipe, validate_recipe  # noqa: E402
from domaingap.pipeline import run_recipe  # noqa: E402

RECIPES = {"phantom": "recipes/multisource_phantom.yaml", "digits": "recipes/multisource_digits.yaml"}
#: the objectives that align several sources (registered with min_sources 2; the recipes name each run after its objective)
MULTI_SOURCE_OBJECTIVES = tuple(n for n, o in objectives().items() if o.min_sources > 1)


def build_digits(seed: int, out: Path) -> dict[str, Path]:
    """Seed ``seed``'s folders ``out/data/digits/seed<k>/{grey,scanner,target}`` (once): the
    textured shift's source digits split per class into two disjoint halves, the second
    half through the scanner style; the target = the textured target (train + test)."""
    root = out / "data" / "digits" / f"seed{seed}"
    if not (root / "target").is_dir():
        shift = make_digits_shift("textured", seed=seed)
        src = shift.source
        rng = np.random.default_rng([seed, 0x5C4])
        second = np.zeros(len(src), dtype=bool)
        for c in np.unique(src.labels):
            idx = rng.permutation(np.flatnonzero(src.labels == c))
            second[idx[: len(idx) // 2]] = True
        grey = ImageSet(src.images[~second], src.labels[~second], src.digit_ids[~second], "grey")
        scanned = scan_digits(src.images[second], ScannerStyle(), rng)
        scanner = ImageSet(scanned, src.labels[second], src.digit_ids[second], "scanner")
        target = ImageSet(torch.cat([shift.target_train.images, shift.target_test.images]),
                          np.concatenate([shift.target_train.labels, shift.target_test.labels]),
                          np.concatenate([shift.target_train.digit_ids, shift.target_test.digit_ids]), "textured")
        for name, part in (("grey", grey), ("scanner", scanner), ("target", target)):
            write_image_folder(part, root / name, shift.classes)
    return {n: root / n for n in ("grey", "scanner", "target")}


def _variants(recipe_path: str, seed: int, out: Path, overrides: list[str]) -> dict[str, object]:
    """{row prefix: recipe} for this seed: each source alone, then both."""
    base = load_recipe(recipe_path, [f"seed={seed}", f"output.dir={out}", *overrides])
    raw = base.model_dump(mode="json", by_alias=True)
    single_runs = [r for r in raw["method"]["runs"]
                   if r["objective"] not in MULTI_SOURCE_OBJECTIVES and r["source_weights"] == "uniform"]
    out_recipes = {}
    for src in raw["data"]["sources"]:
        one = {**raw, "data": {**raw["data"], "sources": [src]},
               "method": {**raw["method"], "runs": single_runs},
               "output": {**raw["output"], "name": f"seed{seed}-{src['name']}"}}
        out_recipes[f"{src['name']} only"] = validate_recipe(one, recipe_path)
    both = "+".join(s["name"] for s in raw["data"]["sources"])
    raw["output"]["name"] = f"seed{seed}-{both}"
    out_recipes[both] = validate_recipe(raw, recipe_path)
    return out_recipes


def main() -> int:
    ap = study.study_arguments(__doc__, "", "runs/multisource")
    ap.add_argument("--case", default="phantom", choices=sorted(RECIPES))
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: read the finished runs' metrics.json under --out (seeds run apart)")
    args = ap.parse_args()
    recipe_path = args.recipe or RECIPES[args.case]
    out = Path(args.out)
    t0 = time.perf_counter()
    rows: dict[str, dict[int, dict]] = {}
    for seed in args.seeds:
        overrides = list(args.overrides)
        if args.case == "digits" and not args.collect:
            paths = build_digits(seed, out)
            overrides += [f"data.sources.0.path={paths['grey']}", f"data.sources.1.path={paths['scanner']}",
                          f"data.target.path={paths['target']}"]
        for prefix, recipe in _variants(recipe_path, seed, out / args.case, overrides).items():
            if args.collect:
                done = recipe.run_dir / "metrics.json"
                table = json.loads(done.read_text())["comparison"] if done.is_file() else []
                for r in table:
                    rows.setdefault(f"{prefix}: {r['model']}", {})[seed] = r
                continue
            t = time.perf_counter()
            summary = run_recipe(recipe, progress=False, diagnostics=False, resume=args.resume,
                                 overwrite=not args.resume)
            print(f"seed {seed} {prefix}: {time.perf_counter() - t:.0f} s", flush=True)
            for r in summary.table:
                rows.setdefault(f"{prefix}: {r['model']}", {})[seed] = r
    stats = study.method_stats(rows, args.seeds)
    study.print_table(stats, f"multi-source {args.case}, seeds {args.seeds} (accuracy %, mean ± sd over seeds), "
                      f"{time.perf_counter() - t0:.0f} s in all")

    multi_names = ("dann+weights", *MULTI_SOURCE_OBJECTIVES)
    single = {k: v for k, v in stats.items() if " only: " in k}
    union = {k: v for k, v in stats.items() if " only: " not in k and not k.endswith(multi_names)}
    multi = {k: v for k, v in stats.items() if k.endswith(multi_names)}
    if not (single and multi):
        print("\nincomplete: no finished single-source or multi-source rows yet")
        return 1
    best = lambda d: max(d.values(), key=lambda s: s.target_mean)  # noqa: E731
    b_single, b_union, b_multi = best(single), best(union), best(multi)
    print(f"\nbetter single source: {b_single.name} {100 * b_single.target_mean:.1f}; naive union: "
          f"{b_union.name} {100 * b_union.target_mean:.1f}; best multi-source: {b_multi.name} "
          f"{100 * b_multi.target_mean:.1f}")
    gain = b_multi.target_mean - b_single.target_mean
    study.print_checks([(f"the best multi-source method ({b_multi.name}) beats the better single source "
                         f"({b_single.name}) by >= 3 points ({100 * gain:+.1f})", gain >= 0.03)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
