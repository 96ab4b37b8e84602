"""The study table shared by ``adaptation_table.py`` (phantom) and ``digits_study.py``.

A study runs one recipe over several seeds through ``adapt-run``'s own machinery
(:func:`domaingap.pipeline.run_recipe`) and prints, per method, mean ± sd over seeds of

* **target (pick)** — target-test accuracy of the epoch the label-free selector picked;
* **target (oracle)** — the best target-test accuracy over the run's epochs (chosen
  with target labels, for reporting only): pick − oracle is the selection regret;
* **source** — source-test accuracy of the picked model (what the adaptation kept);
* the picked epoch per seed.

Expectations are printed as ``[PASS]`` / ``[FAIL]`` lines by :func:`print_checks`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domaingap.pipeline import run_recipe  # noqa: E402
from adapt.method_registry import objectives  # noqa: E402
from adapt.recipe import Recipe, load_recipe, validate_recipe  # noqa: E402

#: rows that are not adaptation methods (baselines)
BASELINES = ("source-only", "target-scratch")


def extra_method_runs(epochs: int) -> list[dict[str, Any]]:
    """The runs every study adds to its recipe: the rows each registered objective declares
    (``ObjectiveSpec.study``: CDAN, CDAN+E, MCC, DeepCORAL, DAN and SHOT for ``epochs`` epochs
    each, TENT as the single online pass it is defined as)."""
    return [{"name": name, "objective": name, "epochs": epochs, **row}
            for name, spec in objectives().items() for row in spec.study]


def study_arguments(doc: str, recipe: str, out: str) -> argparse.ArgumentParser:
    """The command line both study scripts share (recipe, seeds, output folder, resume,
    recipe overrides as key.path=value)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default=recipe)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=out)
    ap.add_argument("--resume", action="store_true", help="load the stages finished in --out")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, key.path=value")
    return ap


@dataclass
class MethodStats:
    """One method's results over seeds (accuracies as fractions; None when unknown)."""

    name: str
    seeds: list[int]
    target: list[float]
    oracle: list[float]
    source: list[float]
    epochs: list[Any]

    @staticmethod
    def _mean(v: list[float]) -> float:
        return float(np.mean(v)) if v else float("nan")

    @property
    def target_mean(self) -> float:
        return self._mean(self.target)

    @property
    def oracle_mean(self) -> float:
        return self._mean(self.oracle)

    @property
    def source_mean(self) -> float:
        return self._mean(self.source)


def with_runs(recipe: Recipe, extra: list[dict[str, Any]]) -> Recipe:
    """``recipe`` plus every run of ``extra`` whose name it does not use yet."""
    raw = recipe.model_dump(mode="json", by_alias=True)
    names = {r["name"] for r in raw["method"]["runs"]}
    raw["method"]["runs"] += [dict(run) for run in extra if run["name"] not in names]
    return validate_recipe(raw, "study recipe")


def run_seeds(recipe_path: str | Path, seeds: list[int], out: str | Path, overrides: list[str] = (),
              extra_runs: list[dict[str, Any]] = (), resume: bool = False) -> dict[str, dict[int, dict]]:
    """Run the recipe (plus ``extra_runs``) once per seed; return {method: {seed: table row}}.
    ``resume``: stages finished in an earlier run of the same folder are loaded, not retrained."""
    rows: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        recipe = load_recipe(recipe_path, [f"seed={seed}", f"output.dir={out}", f"output.name=seed{seed}",
                                           *overrides])
        recipe = with_runs(recipe, list(extra_runs))
        t = time.perf_counter()
        summary = run_recipe(recipe, progress=False, diagnostics=False, resume=resume,
                             overwrite=not resume)  # a fresh study replaces its own folders
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
        for r in summary.table:
            rows.setdefault(r["model"], {})[seed] = r
    return rows


def method_stats(rows: dict[str, dict[int, dict]], seeds: list[int]) -> dict[str, MethodStats]:
    """Collect each method's per-seed accuracies (seeds missing for a method are left out)."""
    out = {}
    for name, per in rows.items():
        have = [s for s in seeds if s in per]
        target = [per[s]["target_acc"] for s in have if per[s].get("target_acc") is not None]
        # no oracle column (epoch-free rows, or a pipeline without it): the pick is the only epoch
        oracle = [per[s].get("oracle_target_acc", per[s]["target_acc"]) for s in have
                  if per[s].get("target_acc") is not None]
        oracle = [o for o in oracle if o is not None]
        source = [per[s]["source_acc"] for s in have if per[s].get("source_acc") is not None]
        epochs = [per[s].get("selected_epoch") for s in have]
        out[name] = MethodStats(name, have, target, oracle, source, epochs)
    return out


def _pm(v: list[float]) -> str:
    if not v:
        return "—"
    sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return f"{100 * np.mean(v):.1f} ± {100 * sd:.1f}"


def print_table(stats: dict[str, MethodStats], title: str) -> None:
    """Markdown table: method | target (pick) | target (oracle) | regret | source | epochs."""
    print(f"\n{title}\n")
    print("| method | target acc % (label-free pick) | target acc % (oracle epoch) | regret | "
          "source acc % | picked epochs |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for s in stats.values():
        regret = s.oracle_mean - s.target_mean if s.target and s.oracle else float("nan")
        epochs = ", ".join("—" if e is None else str(e) for e in s.epochs)
        print(f"| {s.name} | {_pm(s.target)} | {_pm(s.oracle)} | {100 * regret:.1f} | {_pm(s.source)} | "
              f"{epochs} |")


def label_free_methods(stats: dict[str, MethodStats]) -> dict[str, MethodStats]:
    """Adaptation runs that use no target labels (no baseline, no fine-tuning)."""
    return {k: v for k, v in stats.items() if k not in BASELINES and not k.startswith("finetune")}


def print_checks(checks: list[tuple[str, bool]]) -> int:
    """Print ``[PASS]`` / ``[FAIL]`` lines; return the number of failures."""
    print("\nchecks:")
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'FAIL'}] {text}")
    return sum(not ok for _, ok in checks)
