"""The adaptation study over seeds: method x seed -> site A accuracy, site B accuracy,
selected epoch; means; and the acceptance checks of the adaptation issue.

    python benchmarks/adaptation_table.py [--seeds 0 1 2] [--recipe recipes/phantom_study.yaml]
                                          [--out runs/study] [key.path=value ...]

Every model is trained here (CPU is fine: a few minutes per seed). Target labels are used
only to report site-B accuracy; epochs are selected label-free (recipe: method.selection).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.pipeline import run_recipe  # noqa: E402
from adapt.recipe import load_recipe  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="recipes/phantom_study.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    rows: dict[str, dict[int, dict]] = defaultdict(dict)
    t0 = time.perf_counter()
    for seed in args.seeds:
        recipe = load_recipe(args.recipe, [f"seed={seed}", f"output.dir={args.out}",
                                           f"output.name=seed{seed}", *args.overrides])
        t = time.perf_counter()
        summary = run_recipe(recipe, overwrite=True, progress=False, diagnostics=False)  # a re-run replaces
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
        for r in summary.table:
            rows[r["model"]][seed] = r

    pct = lambda v: "  —  " if v is None else f"{100 * v:5.1f}"  # noqa: E731
    print(f"\nmethod x seed (site A = source test, site B = target test; accuracy %), "
          f"{time.perf_counter() - t0:.0f} s in all\n")
    head = "| method | " + " | ".join(f"seed {s}: A / B / epoch" for s in args.seeds) + " | mean A | mean B |"
    print(head)
    print("| --- |" + " --- |" * len(args.seeds) + " ---: | ---: |")
    means = {}
    for name, per in rows.items():
        cells = []
        for s in args.seeds:
            r = per.get(s)
            ep = "—" if r is None or r["selected_epoch"] is None else str(r["selected_epoch"])
            cells.append("—" if r is None else f"{pct(r['source_acc'])} / {pct(r['target_acc'])} / {ep}")
        a = np.mean([per[s]["source_acc"] for s in args.seeds if s in per])
        b = np.mean([per[s]["target_acc"] for s in args.seeds if s in per and per[s]["target_acc"] is not None])
        means[name] = (a, b)
        print(f"| {name} | " + " | ".join(cells) + f" | {pct(a)} | {pct(b)} |")

    print("\nchecks:")
    src_a, src_b = means["source-only"]
    adapted = {k: v for k, v in means.items() if k not in ("source-only", "target-scratch")}
    unsup = {k: v for k, v in adapted.items() if not k.startswith("finetune")}
    checks = []
    if unsup:
        best = max(unsup, key=lambda k: unsup[k][1])
        checks.append((f"best unsupervised method ({best}) beats source-only on site B by >= 10 points "
                       f"({100 * (unsup[best][1] - src_b):+.1f})", unsup[best][1] - src_b >= 0.10))
    if "dann" in means:
        checks.append((f"DANN alone beats source-only on site B ({100 * (means['dann'][1] - src_b):+.1f})",
                       means["dann"][1] > src_b))
    worst = min(unsup, key=lambda k: unsup[k][0]) if unsup else None
    if worst is not None:
        checks.append((f"no unsupervised method loses > 3 points of site A (worst: {worst}, "
                       f"{100 * (unsup[worst][0] - src_a):+.1f})", unsup[worst][0] - src_a >= -0.03))
    if "finetune+ewc" in means and "finetune" in means:
        e, f = means["finetune+ewc"][0] - src_a, means["finetune"][0] - src_a
        checks.append((f"EWC fine-tuning keeps site A within 3 points ({100 * e:+.1f})", e >= -0.03))
        checks.append((f"plain fine-tuning loses more of site A ({100 * f:+.1f} vs EWC {100 * e:+.1f})", f < e))
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
