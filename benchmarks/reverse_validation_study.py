"""Reverse validation as the deployment rule, scored on every label-hidden case set
(issue 17; the rule ``labelshift>rv`` of :mod:`labelfree_combos`, written down before its
held-out test).

    python benchmarks/reverse_validation_study.py [--study runs/labelfree_study]
        [--study-hidden runs/labelfree_study_hidden] [--truth runs/truth_suite_hidden]
        [--digits runs/digits_study] [--rv-seed recipe|N] [--save rows.json]

Reads the saved models of what the studies left (nothing is trained here): each model's
features of the target images the study scores and of the labelled source images (training
and validation, as the model meets the source: per-domain-BatchNorm runs with source
statistics re-estimated), then :func:`adapt.reverse_validation.reverse_validation_accuracy`.
Checks that the recomputed probabilities are the ones each study scored. Prints, per set,
the regret (best true accuracy − the pick's, points) of ``labelshift>rv``, ``rv``, the tool's
rule ``labelshift>estimate`` and the single selectors, and a paired bootstrap interval of
``labelshift>rv`` − ``labelshift>estimate`` pooled.

``--rv-seed``: the reverse network's seed — each case's recipe seed (what ``adapt-run`` does)
or one number for every case; docs/labelfree.md reports seeds 0, 1 and the recipe's.

Sets: the label-free study (explored with rv before the rule was written), the same study
with the labels hidden from ``adapt-run`` (also explored), the truth suite's label-hidden
cases and the digits study's label-hidden seeds (``digits_study.py --hide-labels``) — the
last two are the held-out test.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

import labelfree_combos as combos  # noqa: E402

RULES = ("labelshift>rv_images", "rv_images", "labelshift>rv", "rv", "labelshift>estimate", "estimate", "agreement", "cot", "source_val", "im")


def model_rv(run_dir: Path, name: str, recipe, domains, target, want_target_probs: np.ndarray | None) -> float:
    """Reverse validation of one saved model of a run folder (``source-only`` = the source model)."""
    import torch

    from adapt.evaluate import predict
    from adapt.models import load_checkpoint
    from adapt.reverse_validation import reverse_validation_accuracy
    from domaingap.runs import deployed_on_source, uses_per_domain_bn

    cpu = torch.device("cpu")
    model, _ = load_checkpoint(run_dir / ("source" if name == "source-only" else f"methods/{name}") / "model.pt")
    t = predict(model, target, cpu, return_features=True)
    if want_target_probs is not None and not np.allclose(t["probs"], want_target_probs, atol=1e-4):
        raise RuntimeError(f"{run_dir} {name}: the target probabilities differ from what the study scored")
    cfg = {r.name: r for r in recipe.method.runs}.get(name)
    on_source = deployed_on_source(model, domains, cpu) if cfg is not None and uses_per_domain_bn(cfg) else model
    parts = [predict(on_source, domains.source_split[s], cpu, return_features=True) for s in ("train", "val")]
    return reverse_validation_accuracy(t["features"], t["probs"].argmax(1),
                                       np.concatenate([p["features"] for p in parts]),
                                       np.concatenate([p["labels"] for p in parts]))


#: the reverse network's seed: None = the case recipe's seed, as the tool does (``--rv-seed``)
RV_SEED: int | None = None


def rv_images(recipe, domains, target, target_predictions: np.ndarray) -> float:
    """``rv_images`` (:func:`adapt.reverse_validation.reverse_validation_images`, the tool's
    own function): scored on the source training + validation images; seeded by
    :data:`RV_SEED` (None: the recipe's seed)."""
    from adapt.models import build_model
    from adapt.reverse_validation import reverse_validation_images

    seed = recipe.seed if RV_SEED is None else RV_SEED
    return reverse_validation_images(lambda: build_model(recipe.model.arch, len(domains.classes), recipe.data.channels),
                                     target, target_predictions, domains.source_split["train"],
                                     [domains.source_split["val"]], seed=seed)


def study_set(folder: Path, hidden: bool, epochs: int = 6) -> tuple[dict[str, dict[tuple, float]], list[dict]]:
    """Regrets on a label-free study folder (``labelfree_study.py [--hide-labels]``)."""
    from labelfree_cases import case_cache, case_name
    from labelfree_study import estimator_errors

    from adapt.recipe import load_recipe
    from domaingap.runs import load_domains

    doc = json.loads((folder / ("labelfree_study_hidden.json" if hidden else "labelfree_study.json")).read_text())
    rows = doc["rows"]
    for kind, seed in sorted({(r["shift"], r["seed"]) for r in rows}):
        run_dir = folder / "runs" / case_name(kind, seed, hidden)
        recipe = load_recipe(run_dir / "recipe.yaml")
        domains = load_domains(recipe)
        cache = pickle.loads(case_cache(folder, kind, seed, epochs, hidden).read_bytes())
        for r in rows:
            if (r["shift"], r["seed"]) == (kind, seed):
                r["scores"]["rv"] = model_rv(run_dir, r["model"], recipe, domains, domains.target_split["test"],
                                             cache[r["model"]]["target_probs"])
                r["scores"]["rv_images"] = rv_images(recipe, domains, domains.target_split["test"],
                                                     np.asarray(cache[r["model"]]["target_probs"]).argmax(1))
        print(f"  {folder.name} {kind} seed {seed}: rv computed", flush=True)
    shifts = {r["shift"] for r in rows}
    bands = {s: estimator_errors([r for r in rows if r["shift"] != s])["agreement"]["change_abs_error_p90"]
             for s in shifts}
    return combos.run_regrets(rows, bands, doc["verdict_rows"]), rows


def _labelled_by_key(domains, held, key: Path) -> np.ndarray:
    doc = json.loads(key.read_text())
    return np.array([domains.classes.index(doc["labels"][Path(i).name]) for i in held.ids])


def truth_set(work: Path) -> tuple[dict[str, dict[tuple, float]], list[dict]]:
    """Regrets on the truth suite's label-hidden cases (``truth_suite.py --hide-labels``)."""
    import truth_suite_hidden as hidden

    from adapt.accuracy_estimation.calibration import measured_error
    from adapt.recipe import load_recipe
    from domaingap.runs import load_domains

    rows, verdicts, bands = [], [], {}
    for path in sorted((work / "hidden").glob("*_hidden_scores.json")):
        name = path.name[: -len("_hidden_scores.json")]
        got = hidden.hidden_case_rows(work, name)
        if got is None:
            continue
        scores = json.loads(path.read_text())
        run_dir = work / "hidden" / "runs" / f"{name}_hidden"
        recipe = load_recipe(run_dir / "recipe.yaml")
        domains = load_domains(recipe)
        r, v, n_models = got
        for row in r:
            row["scores"]["rv"] = model_rv(run_dir, row["model"], recipe, domains, domains.target_eval,
                                           np.asarray(scores["models"][row["model"]]["target_probs"]))
            row["scores"]["rv_images"] = rv_images(recipe, domains, domains.target_eval, np.asarray(
                scores["models"][row["model"]]["target_probs"]).argmax(1))
        rows += r
        verdicts += v
        err = measured_error("agreement", n_models=n_models)
        bands[name] = err.change_p90 if err is not None and err.change_p90 is not None else 0.0
        print(f"  truth {name}: rv computed", flush=True)
    return combos.run_regrets(rows, bands, verdicts), rows


def digits_set(folder: Path, shift: str = "textured") -> tuple[dict[str, dict[tuple, float]], list[dict]]:
    """Regrets on the digits study's label-hidden seeds (``digits_study.py --hide-labels``):
    the held-out target images, the key the study wrote beside its data."""
    import torch
    import truth_suite_hidden as hidden

    from adapt.accuracy_estimation.calibration import measured_error
    from adapt.evaluate import predict
    from adapt.models import load_checkpoint
    from adapt.recipe import load_recipe
    from domaingap.runs import deployed_on_source, load_domains, uses_per_domain_bn

    rows, verdicts, bands = [], [], {}
    for run_dir in sorted((folder / f"{shift}_hidden").glob("seed*")):
        seed = run_dir.name
        recipe = load_recipe(run_dir / "recipe.yaml")
        domains = load_domains(recipe)
        key = folder / "data" / shift / seed / "target_key.json"
        truth = _labelled_by_key(domains, domains.target_eval, key)
        cfgs = {r.name: r for r in recipe.method.runs}
        models: dict[str, Any] = {}
        for name in ("source-only", *cfgs):
            model, _ = load_checkpoint(run_dir / ("source" if name == "source-only" else f"methods/{name}") / "model.pt")
            cpu = torch.device("cpu")
            on_source = (deployed_on_source(model, domains, cpu)
                         if name in cfgs and uses_per_domain_bn(cfgs[name]) else model)
            s = predict(on_source, domains.source_eval, cpu)
            models[name] = {"target_probs": predict(model, domains.target_eval, cpu)["probs"].tolist(),
                            "source_probs": s["probs"].tolist(), "source_labels": s["labels"].tolist()}
        r, v = hidden.selector_rows(f"digits-{seed}", {"models": models, "truth": truth.tolist()})
        for row in r:
            row["scores"]["rv"] = model_rv(run_dir, row["model"], recipe, domains, domains.target_eval, None)
            row["scores"]["rv_images"] = rv_images(recipe, domains, domains.target_eval,
                                                   np.asarray(models[row["model"]]["target_probs"]).argmax(1))
        rows += r
        verdicts += v
        err = measured_error("agreement", n_models=len(models))
        bands[f"digits-{seed}"] = err.change_p90 if err is not None and err.change_p90 is not None else 0.0
        print(f"  digits {seed}: rv computed", flush=True)
    return combos.run_regrets(rows, bands, verdicts), rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="runs/labelfree_study")
    ap.add_argument("--study-hidden", default="runs/labelfree_study_hidden")
    ap.add_argument("--truth", default="runs/truth_suite_hidden")
    ap.add_argument("--digits", default="runs/digits_study")
    ap.add_argument("--epochs", type=int, default=6, help="the label-free study's --epochs")
    ap.add_argument("--save", help="write every case's rows (true accuracy, scores with rv) to this JSON")
    ap.add_argument("--rv-seed", default="recipe",
                    help="the reverse network's seed: 'recipe' (each case's recipe seed, as adapt-run does) or a number")
    ap.add_argument("--average", nargs="+", metavar="ROWS_JSON",
                    help="score nothing: read the --save files of runs with other --rv-seed values and "
                         "score the rule on each model's rv_images averaged over them (labelshift>rv_images3)")
    args = ap.parse_args(argv)
    if args.average:
        return averaged(args.average)
    global RV_SEED
    RV_SEED = None if args.rv_seed == "recipe" else int(args.rv_seed)
    import torch

    torch.set_num_threads(1)
    got = {"study (rv explored)": study_set(Path(args.study), False, args.epochs),
           "study, labels hidden (rv explored)": study_set(Path(args.study_hidden), True, args.epochs),
           "truth suite, labels hidden (held out)": truth_set(Path(args.truth)),
           "digits, labels hidden (held out)": digits_set(Path(args.digits))}
    sets = {name: regrets for name, (regrets, _) in got.items()}
    rows = [{**r, "shift": f"{name}/{r['shift']}"} for name, (_, rs) in got.items() for r in rs]
    if args.save:
        from adapt.io import atomic_write_text

        atomic_write_text(args.save, json.dumps(rows, indent=0, default=float))  # whole, or the old file kept
    print("\n| rule (regret, points: mean / worst) | " + " | ".join(sets) + " | held out | pooled |")
    print("| --- |" + " ---: |" * (len(sets) + 2))
    pooled: dict[str, dict] = {}
    for rule in RULES:
        cells, allv, held = [], [], []
        for name, s in sets.items():
            v = [100 * x for x in s.get(rule, {}).values()]
            cells.append(f"{np.mean(v):.1f} / {np.max(v):.1f}" if v else "—")
            allv += v
            held += v if "held out" in name else []
            pooled.setdefault(rule, {}).update({(name, *k): x for k, x in s.get(rule, {}).items()})
        print(f"| {rule} | " + " | ".join(cells) + f" | {np.mean(held):.1f} / {np.max(held):.1f} | "
              f"{np.mean(allv):.1f} / {np.max(allv):.1f} |")
    for rule in ("labelshift>rv_images", "labelshift>rv"):
        for scope, keep in (("pooled", lambda k: True), ("held out", lambda k: "held out" in k[0])):
            a = {k: v for k, v in pooled[rule].items() if keep(k)}
            b = {k: v for k, v in pooled["labelshift>estimate"].items() if keep(k)}
            p = combos.paired(a, b)
            print(f"\n{rule} − labelshift>estimate, {scope} ({p['cases']} cases): {100 * p['mean']:+.1f} "
                  f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] points (95 % paired bootstrap)")
        print(f"\ncases where {rule} and labelshift>estimate differ:")
        for k in sorted(pooled[rule]):
            a, b = pooled[rule][k], pooled["labelshift>estimate"][k]
            if abs(a - b) > 1e-9:
                print(f"  {k}: {rule} {100 * a:.1f}, labelshift>estimate {100 * b:.1f}")
    two_models(rows)
    return 0


def averaged(paths: list[str]) -> int:
    """``labelshift>rv_images3``: each model's rv_images averaged over the runs saved in
    ``paths`` (one per reverse-network seed), scored like the others, per set and pooled."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    key = lambda r: (r["shift"], r["seed"], r["model"])  # noqa: E731
    scores = [{key(r): r["scores"]["rv_images"] for r in rows} for rows in runs]
    rows = [{**r, "scores": {**r["scores"], "rv_images": float(np.mean([sc[key(r)] for sc in scores]))}}
            for r in runs[0]]
    regrets: dict[str, dict[tuple, float]] = {"labelshift>rv_images3": {}, "labelshift>estimate": {}}
    for case in sorted({(r["shift"], r["seed"]) for r in rows}):
        rs = [r for r in rows if (r["shift"], r["seed"]) == case]
        best = max(r["true_acc"] for r in rs)
        for rule, name in (("labelshift>rv_images", "labelshift>rv_images3"), ("labelshift>estimate",) * 2):
            pick = combos.pick_run(rule, rs, 0.0, 0, estimator_order=combos.estimator_order(len(rs)))
            regrets[name][case] = best - pick["true_acc"]
    sets = sorted({c[0].split("/")[0] for c in regrets["labelshift>estimate"]})
    print(f"\nrv_images averaged over {len(paths)} reverse networks ({', '.join(paths)})")
    print("| rule (regret, points: mean / worst) | " + " | ".join(sets) + " | pooled |")
    print("| --- |" + " ---: |" * (len(sets) + 1))
    for name, reg in regrets.items():
        cells = []
        for st in sets:
            v = [100 * x for c, x in reg.items() if c[0].split("/")[0] == st]
            cells.append(f"{np.mean(v):.1f} / {np.max(v):.1f}")
        allv = [100 * x for x in reg.values()]
        print(f"| {name} | " + " | ".join(cells) + f" | {np.mean(allv):.1f} / {np.max(allv):.1f} |")
    p = combos.paired(regrets["labelshift>rv_images3"], regrets["labelshift>estimate"])
    print(f"\nlabelshift>rv_images3 − labelshift>estimate ({p['cases']} cases): {100 * p['mean']:+.1f} "
          f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] points (95 % paired bootstrap)")
    for case in sorted(regrets["labelshift>estimate"]):
        a, b = regrets["labelshift>rv_images3"][case], regrets["labelshift>estimate"][case]
        if abs(a - b) > 1e-9:
            print(f"  {case}: rv_images3 {100 * a:.1f}, estimate {100 * b:.1f}")
    got = combos.one_run_regrets(rows, ("labelshift>estimate", "labelshift>rv_images"))
    print(f"one run ({len(got['always the run'])} pairs): always the run "
          f"{100 * np.mean(got['always the run']):.1f} / {100 * np.max(got['always the run']):.1f}, estimate "
          f"{100 * np.mean(got['labelshift>estimate']):.1f} / {100 * np.max(got['labelshift>estimate']):.1f}, "
          f"rv_images3 {100 * np.mean(got['labelshift>rv_images']):.1f} / {100 * np.max(got['labelshift>rv_images']):.1f}")
    return 0


def two_models(rows: list[dict]) -> None:
    """A recipe with one run: the source model and that run are all there is. Regret of
    always deploying the run, and of each rule over the two, every (case, run) pair."""
    out = combos.one_run_regrets(rows, ("labelshift>estimate", "labelshift>rv_images"))
    n = len(out["always the run"])
    print(f"\none run (the source model + that run, {n} pairs), regret mean / worst:")
    for rule, v in out.items():
        print(f"  {rule}: {100 * np.mean(v):.1f} / {100 * np.max(v):.1f}")
    d = {k: {i: x for i, x in enumerate(v)} for k, v in out.items()}
    p = combos.paired(d["labelshift>rv_images"], d["labelshift>estimate"])
    print(f"  labelshift>rv_images − labelshift>estimate: {100 * p['mean']:+.1f} "
          f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}]")


if __name__ == "__main__":
    sys.exit(main())
