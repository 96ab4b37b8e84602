"""Planted fairness case: does group DRO lift the worst group on the target? (docs/fairness.md)

``recipes/fairness_phantom.yaml``: phantom site A -> site B with the planted ``scanner``
group (``minority: 0.05``: 5 % of each class contradicts the scanner/label correlation),
``small_cnn``, 12 epochs without patience (a fixed budget), then AdaBN on site B. Two arms
per seed, everything else equal:

* ``erm`` — plain training (``train.fairness: null``), the epoch kept by average source
  validation accuracy;
* ``group_dro`` — ``train.fairness: {objective: group_dro, group: scanner, step_size: 0.01,
  selection: worst_group_accuracy}``: Sagawa et al.'s default step size and their model
  selection, the epoch with the best worst (scanner x class) cell on the *source*
  validation split. Nothing is tuned, least of all on the target test split.

No guard in either arm (``train.guard: null``): the study measures the objective alone.
Images are 32 px; the recipe's 1,200 source images (``--source-n``), 2,000 site-B images
in each run (``--target-n``). Per run: target test accuracy and worst (scanner x class)
cell accuracy, computed by fairlearn, for the source-only model and for the deployed AdaBN
model. The runs' target test split (300 images) holds only 4-10 images per minority cell,
so every source model is also measured on a larger site-B set (``--eval-target-n``, default
20,000 images: its test split of 3,000 holds 60-80 per minority cell), with AdaBN
re-estimated on that set's training split (``adabn-large``; 0 skips it). Prints the tables
(mean ± sd over seeds, and ERM against group DRO per seed) and writes them as JSON.

Run:  python benchmarks/fairness_study.py [--seeds 0 1 2] [--source-n N] [--target-n N] [--eval-target-n N] [--out DIR]
(finished runs are reused: a killed study continues)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from adapt.models import load_checkpoint
from adapt.recipe import load_recipe
from domaingap.fairness_run import group_metrics_section
from domaingap.pipeline import run_recipe
from domaingap.runs import adabn_on, load_domains

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fairness_phantom.yaml"
#: both arms: a fixed budget of EPOCHS epochs, no patience (Sagawa et al. train a fixed
#: budget and keep the best epoch by validation; patience 3 stopped a flat group-DRO run at epoch 4)
COMMON = ["train.epochs=12", "train.patience=null"]
#: ERM keeps its epoch by average source validation accuracy, group DRO by worst-group
#: source validation accuracy (Sagawa et al.'s protocol: the groups are known on the source)
ARMS = {"erm": ["train.fairness=null"], "group_dro": ["train.fairness.selection=worst_group_accuracy"]}
STAGES = {"source-only": "source", "adabn": "methods/adabn"}


def cells(model: torch.nn.Module, domains) -> dict:
    """Target test accuracy, worst (scanner x class) cell and per-cell accuracies (fairlearn)."""
    rep = group_metrics_section(model, domains, "scanner", torch.device("cpu"))["target_test"]
    n = sum(c["n"] for c in rep["per_cell"].values())
    acc = sum(c["accuracy"] * c["n"] for c in rep["per_cell"].values()) / n
    return {"accuracy": acc, "worst_group_accuracy": rep["worst_group_accuracy"], "worst_cell": rep["worst_cell"],
            "per_cell": rep["per_cell"]}


def run_arm(seed: int, arm: str, out: Path, source_n: int = 1200, target_n: int = 2000,
            large: tuple | None = None) -> dict:
    name = f"s{seed}_{arm}"
    overrides = [f"seed={seed}", "data.image_size=32", f"data.source.n={source_n}", f"data.target.n={target_n}",
                 "train.guard=null", "train.device=cpu", f"output.dir={out}", f"output.name={name}",
                 *COMMON, *ARMS[arm]]
    recipe = load_recipe(RECIPE, overrides)
    run_dir = out / name
    if not (run_dir / "metrics.json").is_file():
        run_recipe(recipe, overwrite=True, progress=False, diagnostics=False)
    domains = load_domains(recipe)
    row = {"seed": seed, "arm": arm}
    for stage, folder in STAGES.items():
        row[stage] = cells(load_checkpoint(run_dir / folder / "model.pt")[0], domains)
    if large is not None:  # the same source model on a larger site-B set, AdaBN re-estimated on its train split
        model, _ = load_checkpoint(run_dir / STAGES["source-only"] / "model.pt")
        row["adabn-large"] = cells(adabn_on(model, large[1].target_split["train"], torch.device("cpu")), large[1])
    return row


def large_target(seed: int, source_n: int, n: int) -> tuple:
    """(n, domains) of a site-B set of ``n`` images, for a finer worst-group measurement."""
    recipe = load_recipe(RECIPE, [f"seed={seed}", "data.image_size=32", f"data.source.n={source_n}",
                                  f"data.target.n={n}", "train.device=cpu"])
    return n, load_domains(recipe)


def table(rows: list[dict]) -> str:
    lines = ["| model | arm | target accuracy % | worst-group target accuracy % | worst cell (per seed) |",
             "| --- | --- | ---: | ---: | --- |"]
    for stage in [*STAGES, *(["adabn-large"] if "adabn-large" in rows[0] else [])]:
        for arm in ARMS:
            rs = [r for r in rows if r["arm"] == arm]
            acc = np.array([100 * r[stage]["accuracy"] for r in rs])
            wg = np.array([100 * r[stage]["worst_group_accuracy"] for r in rs])
            cells = ", ".join(r[stage]["worst_cell"] for r in rs)
            lines.append(f"| {stage} | {arm} | {acc.mean():.1f} ± {acc.std(ddof=1) if len(acc) > 1 else 0:.1f} | "
                         f"{wg.mean():.1f} ± {wg.std(ddof=1) if len(wg) > 1 else 0:.1f} | {cells} |")
    return "\n".join(lines)


def per_seed_table(rows: list[dict], stage: str = "adabn") -> str:
    """ERM against group DRO per seed (the deployed model): target accuracy and worst-group
    accuracy, and the differences the expectation is about (group DRO minus ERM, points)."""
    lines = ["| seed | ERM acc % | DRO acc % | Δ acc | ERM worst % | DRO worst % | Δ worst |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    deltas = []
    for seed in sorted({r["seed"] for r in rows}):
        by = {r["arm"]: r[stage] for r in rows if r["seed"] == seed}
        if set(by) != set(ARMS):
            continue
        e, d = by["erm"], by["group_dro"]
        da, dw = 100 * (d["accuracy"] - e["accuracy"]), 100 * (d["worst_group_accuracy"] - e["worst_group_accuracy"])
        deltas.append((da, dw))
        lines.append(f"| {seed} | {100 * e['accuracy']:.1f} | {100 * d['accuracy']:.1f} | {da:+.1f} | "
                     f"{100 * e['worst_group_accuracy']:.1f} | {100 * d['worst_group_accuracy']:.1f} | {dw:+.1f} |")
    if len(deltas) > 1:
        da, dw = np.array(deltas).T
        lines.append(f"| mean ± sd | | | {da.mean():+.1f} ± {da.std(ddof=1):.1f} | | | "
                     f"{dw.mean():+.1f} ± {dw.std(ddof=1):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--source-n", type=int, default=1200, help="source images (the recipe's 1200)")
    parser.add_argument("--target-n", type=int, default=2000, help="target images of the runs")
    parser.add_argument("--eval-target-n", type=int, default=20000,
                        help="also evaluate every source model, with AdaBN, on a site-B set of N images")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fairness_study"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        large = large_target(seed, args.source_n, args.eval_target_n) if args.eval_target_n else None
        rows += [run_arm(seed, arm, args.out, args.source_n, args.target_n, large) for arm in args.arms]
    (args.out / "fairness_study.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))
    for stage in ("source-only", "adabn", "adabn-large") if args.eval_target_n else ("source-only", "adabn"):
        print(f"\n{stage}:\n" + per_seed_table(rows, stage))


if __name__ == "__main__":
    main()
