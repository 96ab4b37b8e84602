"""The phantom adaptation study over seeds: per method, mean ± sd of site-B accuracy at
the label-free pick and at the oracle epoch, site-A accuracy kept; and the acceptance
checks of the adaptation issue.

    python benchmarks/adaptation_table.py [--seeds 0 1 2] [--recipe recipes/phantom_study.yaml]
                                          [--out runs/study] [key.path=value ...]

Every model is trained here (CPU is fine: a few minutes per seed). Target labels are used
only to report site-B accuracy (and the oracle column); epochs are selected label-free
(recipe: method.selection). The table code is shared with ``digits_study.py``
(``benchmarks/study_table.py``), which also adds CDAN, CDAN+E, MCC, CORAL, DAN, SHOT and TENT
to the recipe's runs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import study_table as study  # noqa: E402  (benchmarks/study_table.py)

#: CDAN, CDAN+E, MCC, CORAL, DAN, SHOT (4 epochs each, as DANN) and TENT (one pass)
EXTRA_RUNS = study.extra_method_runs(4)


def main() -> int:
    ap = study.study_arguments(__doc__, "recipes/phantom_study.yaml", "runs/study")
    args = ap.parse_args()

    t0 = time.perf_counter()
    rows = study.run_seeds(args.recipe, args.seeds, args.out, args.overrides, EXTRA_RUNS, resume=args.resume)
    stats = study.method_stats(rows, args.seeds)
    study.print_table(stats, f"phantom site A → site B, seeds {args.seeds} (accuracy %, mean ± sd over seeds), "
                       f"{time.perf_counter() - t0:.0f} s in all")

    src = stats["source-only"]
    unsup = study.label_free_methods(stats)
    checks = []
    if unsup:
        best = max(unsup.values(), key=lambda s: s.target_mean)
        checks.append((f"best unsupervised method ({best.name}) beats source-only on site B by >= 10 points "
                       f"({100 * (best.target_mean - src.target_mean):+.1f})",
                       best.target_mean - src.target_mean >= 0.10))
        worst = min(unsup.values(), key=lambda s: s.source_mean)
        checks.append((f"no unsupervised method loses > 3 points of site A (worst: {worst.name}, "
                       f"{100 * (worst.source_mean - src.source_mean):+.1f})",
                       worst.source_mean - src.source_mean >= -0.03))
    if "dann" in stats:
        d = stats["dann"].target_mean - src.target_mean
        checks.append((f"DANN alone beats source-only on site B ({100 * d:+.1f})", d > 0))
    if "finetune+ewc" in stats and "finetune" in stats:
        e = stats["finetune+ewc"].source_mean - src.source_mean
        f = stats["finetune"].source_mean - src.source_mean
        checks.append((f"EWC fine-tuning keeps site A within 3 points ({100 * e:+.1f})", e >= -0.03))
        checks.append((f"plain fine-tuning loses more of site A ({100 * f:+.1f} vs EWC {100 * e:+.1f})", f < e))
    study.print_checks(checks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
