"""A study with the target's labels hidden (``digits_study.py --hide-labels``; issue 17, item 4).

The tool gets the target as a flat folder of unlabelled PNGs (``labeled: false``); the labels
go to a key file outside it (:func:`truth_suite_hidden.hide_labels`) that only this module
reads, after ``adapt-run`` has finished. Per seed, every model (the source model and every
run) is scored on the held-out target images the run's deployment ranking read; then, per
run, its true change (run − source model), the estimated change ± the band measured for this
many models, the label-free verdict (as the audit reads it: :func:`truth_suite_hidden.
selector_rows`) and whether it is wrong by the issue's rules; and the model the tool
deployed (``method.deploy``: by default ``estimate``) with its regret (best true accuracy − the pick's).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import study_table as study
import truth_suite_hidden as hidden
from adapt.evaluate import predict
from adapt.recipe import load_recipe
from diagnostics.ranking import recommended_run
from domaingap.pipeline import run_recipe
from domaingap.runs import held_out_sample, load_domains


def hide(target: Path, root: Path, seed: int) -> tuple[Path, Path]:
    """The labelled ImageFolder ``target`` as ``root/target_flat`` + ``root/target_key.json``."""
    flat, key = root / "target_flat", root / "target_key.json"
    if not flat.is_dir():
        hidden.hide_labels(target, flat, key, seed=seed)
    return flat, key


def hidden_seed(recipe_path: str | Path, seed: int, out: Path, overrides: list[str], extra_runs: list[dict],
                key: Path, resume: bool = False) -> dict[str, Any]:
    """Run one seed on the unlabelled target; score it with ``key`` afterwards."""
    import torch

    recipe = load_recipe(recipe_path, [f"seed={seed}", f"output.dir={out}", f"output.name=seed{seed}",
                                       "data.target.labeled=false", *overrides])
    recipe = study.with_runs(recipe, list(extra_runs))
    t = time.perf_counter()
    summary = run_recipe(recipe, progress=False, diagnostics=False, resume=resume, overwrite=not resume)
    seconds = time.perf_counter() - t
    dep = summary.deployment
    images = dep.ranked_on
    if images is None or bool((images.labels >= 0).any()):
        raise RuntimeError("the label-hidden run's target carries labels, or nothing was ranked")
    doc = json.loads(key.read_text())
    domains = load_domains(recipe)
    truth = np.array([domains.classes.index(doc["labels"][Path(i).name]) for i in images.ids])
    source = held_out_sample(domains.source_eval, recipe.diagnostics.max_samples, recipe.seed)
    cpu = torch.device("cpu")
    models = {}
    for name, st in {"source-only": summary.source, **summary.runs}.items():
        s = predict(st.source_model, source, cpu)  # as deployed on the source
        models[name] = {"target_probs": dep.ranked_features[name].probs.tolist(),
                        "source_probs": s["probs"].tolist(), "source_labels": s["labels"].tolist()}
    rows, verdicts = hidden.selector_rows(f"seed{seed}", {"models": models, "truth": truth.tolist()})
    acc = {r["model"]: r["true_acc"] for r in rows}
    # the rule before (method.deploy: selection): the run IM scores highest at its chosen epoch
    im_pick = recommended_run({n: st.selection for n, st in summary.runs.items()}, "im")
    return {"seed": seed, "seconds": seconds, "accuracy": acc, "verdicts": verdicts, "pick": dep.name,
            "estimator": dep.ranking.rule if dep.ranking.rule != "estimate" else dep.ranking.estimator,
            "regret": max(acc.values()) - acc[dep.name],
            "im_pick": im_pick, "im_regret": max(acc.values()) - acc[im_pick]}


def print_hidden(results: list[dict[str, Any]]) -> int:
    """The per-run table and the pick; returns the number of wrong verdicts."""
    print("\n| seed | run | true acc % | true change | estimated change ± band | label-free verdict | wrong |")
    print("| --- | --- | ---: | ---: | ---: | --- | :---: |")
    wrong = 0
    for res in results:
        for v in res["verdicts"]:
            bad = hidden.verdict_wrong(v["outcome"], v["true_change"])
            wrong += bad
            band = "—" if v["band"] is None else f"{100 * v['band']:.1f}"
            print(f"| {res['seed']} | {v['model']} | {100 * res['accuracy'][v['model']]:.1f} | "
                  f"{100 * v['true_change']:+.1f} | {100 * v['estimated_change']:+.1f} ± {band} ({v['estimator']}) | "
                  f"{v['outcome']} | {'**YES**' if bad else 'no'} |")
    print("\n| seed | source-only true % | best true % | deployed (rule) | its true % | regret | "
          "IM's run (the rule before) | its true % | regret | s |")
    print("| --- | ---: | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: |")
    for res in results:
        acc = res["accuracy"]
        print(f"| {res['seed']} | {100 * acc['source-only']:.1f} | {100 * max(acc.values()):.1f} | "
              f"{res['pick']} ({res['estimator']}) | {100 * acc[res['pick']]:.1f} | {100 * res['regret']:.1f} | "
              f"{res['im_pick']} | {100 * acc[res['im_pick']]:.1f} | {100 * res['im_regret']:.1f} | "
              f"{res['seconds']:.0f} |")
    large = [v for r in results for v in r["verdicts"] if abs(v["true_change"]) >= 0.20]
    named = [v for v in large if (v["true_change"] > 0 and v["outcome"] == "helped")
             or (v["true_change"] < 0 and v["outcome"] in ("negative transfer", "did not help"))]
    print(f"\n{wrong} wrong verdicts of {sum(len(r['verdicts']) for r in results)}; direction named for "
          f"{len(named)} of {len(large)} changes of >= 20 points")
    return wrong
