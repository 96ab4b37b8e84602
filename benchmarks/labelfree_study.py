"""The label-free study: how wrong is each accuracy estimate, each selector's pick and the
label-free verdict, on shifts whose target labels exist but are hidden from the tool?

    python benchmarks/labelfree_study.py [--seeds 0 1] [--shifts scanner textured mild labelshift clean]
                                         [--out runs/labelfree_study] [--write-calibration] [--hide-labels]

Every shift is built from images that ship inside packages (scikit-learn's handwritten
digits; scikit-image's photographs for the textured target) by
:mod:`adapt.data.real_images`, at 16×16 px, and run through ``adapt-run``'s own machinery
(:func:`domaingap.pipeline.run_recipe`: source model, AdaBN, DANN, SHOT, TENT, epoch
selection by MixVal so that every per-epoch score is logged). Then, per model, the
target-test predictions (and held-out source-validation predictions, as the model is
deployed on the source) go to the estimators of :mod:`adapt.accuracy_estimation`
— which never see a target label — and the hidden labels score them:

* estimator error: |estimated − true target accuracy| per model, and
  |estimated change − true change| per adapted run (change = run − source-only);
* selector regret (points): best true accuracy − true accuracy of the pick, over the
  models of one case (runs) and over the epochs of one run (epochs, from ``selection.json``);
* the label-free verdict (:mod:`diagnostics.audit.labelfree_policy`) against the true
  change, with bands measured leaving the verdict's own shift out (no case judges itself).

``--hide-labels`` gives ``adapt-run`` the target as a flat unlabelled folder (labels in a key
outside it, read after training); the combined selectors of :mod:`labelfree_combos` are
scored beside the single ones and chosen leaving one shift out.

``--write-calibration`` writes ``adapt/accuracy_estimation/calibration.json``
(what the audit's "± band" is read from). Target labels are read by this script only
after the estimates are made.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # labelfree_combos, labelfree_cases

from adapt.data.real_images import DIGIT_CLASSES  # noqa: E402
from adapt.io import atomic_write_json  # noqa: E402
from adapt.selection import label_free_scores  # noqa: E402
from adapt.accuracy_estimation import agreement_estimate, estimate_all  # noqa: E402
from adapt.accuracy_estimation.calibration import CALIBRATION_PATH, most_accurate  # noqa: E402
from diagnostics.collapse import collapse_report  # noqa: E402
from diagnostics.label_shift import change_bound_under_label_shift  # noqa: E402
from diagnostics.audit.labelfree_policy import LabelFreeEvidence, labelfree_outcome  # noqa: E402
from labelfree_cases import SHIFTS, run_case, with_source_features  # noqa: E402

# ----------------------------------------------------------------------------- measurement


def case_rows(kind: str, seed: int, models: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per model: true accuracy, every estimate, selector scores (no label used
    for anything but ``true_acc``)."""
    preds = {n: m["target_probs"].argmax(1) for n, m in models.items()}
    src = models.get("source-only")
    # one reading per case: the audit's unlabelled collapse / label-shift verdict of the source
    # model (BBSE, then its assumption checked on the model's features as the audit does;
    # without them, on its outputs) — labelfree_combos: labelshift>estimate
    shift = None
    if src is not None:
        feats = "source_features" in src
        fs, ft = (src["source_features"], src["target_features"]) if feats else (src["source_probs"], src["target_probs"])
        shift = {"verdict": collapse_report(src["target_probs"], source_probs=src["source_probs"],
                                            source_labels=src["source_labels"], source_features=fs,
                                            target_features=ft, seed=seed).verdict,
                 "on": "features" if feats else "outputs"}
    bounds = {}
    if shift is not None and shift["verdict"] == "label_shift":  # what the audit's verdict reads then
        bounds = {n: change_bound_under_label_shift(src["source_probs"], src["source_labels"], src["target_probs"],
                                                    m["target_probs"], seed=seed)
                  for n, m in models.items() if n != "source-only"}
    rows = []
    for name, m in models.items():
        others = [p for n, p in preds.items() if n != name]
        est = estimate_all(m["target_probs"], m["source_probs"], m["source_labels"], others, seed=seed)
        lf = label_free_scores(m["target_probs"])
        share = np.bincount(preds[name], minlength=m["target_probs"].shape[1]).max() / len(preds[name])
        rows.append({
            "shift": kind, "seed": seed, "model": name,
            "true_acc": float(np.mean(preds[name] == m["hidden_target_labels"])),  # the hidden labels
            "source_acc": float(np.mean(m["source_probs"].argmax(1) == m["source_labels"])),
            "largest_share": float(share), "n_source": int(len(m["source_labels"])), "n_target": int(len(preds[name])),
            "estimates": est,
            "scores": {"im": lf["im"], "snd": lf["snd"], "mixval": m["mixval"],
                       "source_val": float(np.mean(m["source_probs"].argmax(1) == m["source_labels"])), **est},
            "epochs": m["epochs"], "label_shift": shift, "label_shift_bound": bounds.get(name),
        })
    return rows


def _q90(v: list[float]) -> float:
    return float(np.quantile(np.asarray(v), 0.9)) if v else float("nan")


def estimator_errors(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per estimator: mean / 90th-percentile |error| of accuracy and of change (fractions)."""
    out: dict[str, dict[str, Any]] = {}
    names = sorted({k for r in rows for k in r["estimates"]})
    cases = sorted({(r["shift"], r["seed"]) for r in rows})
    for est in names:
        acc_err, ch_err = [], []
        for case in cases:
            rs = [r for r in rows if (r["shift"], r["seed"]) == case and est in r["estimates"]]
            base = next((r for r in rs if r["model"] == "source-only"), None)
            for r in rs:
                acc_err.append(abs(r["estimates"][est] - r["true_acc"]))
                if base is not None and r is not base:
                    est_change = r["estimates"][est] - base["estimates"][est]
                    ch_err.append(abs(est_change - (r["true_acc"] - base["true_acc"])))
        out[est] = {"accuracy_abs_error_mean": float(np.mean(acc_err)), "accuracy_abs_error_p90": _q90(acc_err),
                    "accuracy_abs_error_max": float(np.max(acc_err)),
                    "change_abs_error_mean": float(np.mean(ch_err)) if ch_err else None,
                    "change_abs_error_p90": _q90(ch_err) if ch_err else None,
                    "n_models": len(acc_err), "n_changes": len(ch_err)}
    return out


#: the estimators whose value depends on how many models are compared (the peers)
PEER_ESTIMATORS = {"agreement": "median", "agreement_mean": "mean"}


def peer_count_errors(models: dict[str, Any]) -> dict[str, dict[int, dict[str, list[float]]]]:
    """The agreement estimators' errors when only ``k`` of a case's models are there, as in
    an audit of a recipe with fewer runs: for every k from 2 to all, every subset of k models
    that holds the source model (the audit always has it) — each model's agreement with the
    others of the subset against its hidden accuracy, each run's estimated change against its
    true change. ``{estimator: {k: {"accuracy": [|err|], "change": [|err|]}}}`` (fractions)."""
    from itertools import combinations

    preds = {n: m["target_probs"].argmax(1) for n, m in models.items()}
    truth = {n: float(np.mean(preds[n] == m["hidden_target_labels"])) for n, m in models.items()}
    runs = [n for n in models if n != "source-only"]
    out: dict[str, dict[int, dict[str, list[float]]]] = {e: {} for e in PEER_ESTIMATORS}
    if "source-only" not in models:
        return out
    for k in range(2, len(models) + 1):
        for chosen in combinations(runs, k - 1):
            group = ["source-only", *chosen]
            for est, reduce in PEER_ESTIMATORS.items():
                value = {n: agreement_estimate(preds[n], [preds[m] for m in group if m != n], reduce) for n in group}
                errs = out[est].setdefault(k, {"accuracy": [], "change": []})
                errs["accuracy"] += [abs(value[n] - truth[n]) for n in group]
                errs["change"] += [abs((value[n] - value["source-only"]) - (truth[n] - truth["source-only"]))
                                   for n in chosen]
    return out


def peer_count_summary(per_case: list[dict[str, dict[int, dict[str, list[float]]]]]) -> dict[str, dict[str, Any]]:
    """Pool :func:`peer_count_errors` over cases: per estimator and number of models k, the
    mean / 90th-percentile |error| of accuracy and of change, as in ``estimator_errors``."""
    out: dict[str, dict[str, Any]] = {}
    for est in PEER_ESTIMATORS:
        ks = sorted({k for case in per_case for k in case.get(est, {})})
        for k in ks:
            acc = [e for case in per_case for e in case.get(est, {}).get(k, {}).get("accuracy", [])]
            ch = [e for case in per_case for e in case.get(est, {}).get(k, {}).get("change", [])]
            out.setdefault(est, {})[str(k)] = {
                "accuracy_abs_error_mean": float(np.mean(acc)), "accuracy_abs_error_p90": _q90(acc),
                "change_abs_error_mean": float(np.mean(ch)) if ch else None,
                "change_abs_error_p90": _q90(ch) if ch else None,
                "n_models": len(acc), "n_changes": len(ch)}
    return out


def regret_over_runs(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per selector, per case: best true accuracy − true accuracy of the model it scores highest."""
    out: dict[str, list[float]] = {}
    for case in sorted({(r["shift"], r["seed"]) for r in rows}):
        rs = [r for r in rows if (r["shift"], r["seed"]) == case]
        best = max(r["true_acc"] for r in rs)
        for sel in sorted({k for r in rs for k in r["scores"]}):
            cand = [r for r in rs if sel in r["scores"] and np.isfinite(r["scores"][sel])]
            if len(cand) == len(rs):
                pick = max(cand, key=lambda r: r["scores"][sel])  # first on ties
                out.setdefault(sel, []).append(best - pick["true_acc"])
    return out


def regret_over_epochs(rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per selector, per trained run with ≥ 2 epochs: best − picked oracle accuracy of the epochs."""
    keys = {"im": "im", "snd": "snd", "dev": "dev", "source_val": "source_val_accuracy", "mixval": "mixval",
            "atc": "atc", "doc": "doc", "last": "epoch"}
    out: dict[str, list[float]] = {}
    for r in rows:
        eps = [e for e in r["epochs"] if e.get("oracle_target_accuracy") is not None]
        if len(eps) < 2 or r["model"] == "source-only":
            continue
        best = max(e["oracle_target_accuracy"] for e in eps)
        for sel, key in keys.items():
            scored = [e for e in eps if e.get(key) is not None and np.isfinite(float(e[key]))]
            if len(scored) == len(eps):
                pick = max(scored, key=lambda e: float(e[key]))
                out.setdefault(sel, []).append(best - pick["oracle_target_accuracy"])
    return out


def verdict_checks(rows: list[dict[str, Any]], primary: str, secondary: str) -> list[dict[str, Any]]:
    """The label-free verdict of every adapted run against its true change; the bands of
    each shift's verdicts are measured on the other shifts only."""
    out = []
    for shift in sorted({r["shift"] for r in rows}):
        others = [r for r in rows if r["shift"] != shift]
        cal = estimator_errors(others) if others else {}
        for case in sorted({(r["shift"], r["seed"]) for r in rows if r["shift"] == shift}):
            rs = [r for r in rows if (r["shift"], r["seed"]) == case]
            base = next(r for r in rs if r["model"] == "source-only")
            for r in rs:
                if r is base:
                    continue
                ev = LabelFreeEvidence(
                    estimates_before={k: base["estimates"][k] for k in (primary, secondary)},
                    estimates_after={k: r["estimates"][k] for k in (primary, secondary)},
                    change_bands={k: (cal.get(k) or {}).get("change_abs_error_p90") for k in (primary, secondary)},
                    largest_share_before=base["largest_share"], largest_share_after=r["largest_share"],
                    n_classes=len(DIGIT_CLASSES),
                    label_shift_bound=(r["label_shift_bound"]["low"], r["label_shift_bound"]["high"])
                    if r.get("label_shift_bound") else None)
                outcome = labelfree_outcome(ev, primary, secondary)
                out.append({"shift": shift, "seed": case[1], "model": r["model"],
                            "true_change": r["true_acc"] - base["true_acc"], "outcome": outcome.outcome,
                            "estimated_change": outcome.change, "band": outcome.band})
    return out


# ----------------------------------------------------------------------------- output


def _pts(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def print_tables(rows, errors, runs_regret, epochs_regret, verdicts) -> None:
    print("\n## Per model (accuracy %, target labels hidden from every estimate)\n")
    names = list(errors)
    print("| shift | seed | model | true | " + " | ".join(names) + " |")
    print("| --- | --- | --- | ---: | " + " | ".join("---:" for _ in names) + " |")
    for r in rows:
        print(f"| {r['shift']} | {r['seed']} | {r['model']} | {_pts(r['true_acc'])} | "
              + " | ".join(_pts(r["estimates"].get(n)) for n in names) + " |")
    print("\n## Estimator error (points; |estimate − truth|)\n")
    print("| estimator | accuracy mean | accuracy p90 | accuracy max | change mean | change p90 | models | changes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, e in sorted(errors.items(), key=lambda kv: kv[1]["accuracy_abs_error_mean"]):
        print(f"| {n} | {_pts(e['accuracy_abs_error_mean'])} | {_pts(e['accuracy_abs_error_p90'])} | "
              f"{_pts(e['accuracy_abs_error_max'])} | {_pts(e['change_abs_error_mean'])} | "
              f"{_pts(e['change_abs_error_p90'])} | {e['n_models']} | {e['n_changes']} |")
    for title, reg in (("over runs (which model to deploy)", runs_regret),
                       ("over epochs (which checkpoint)", epochs_regret)):
        print(f"\n## Selector regret {title} (points; oracle − pick)\n")
        print("| selector | mean | worst | cases |")
        print("| --- | ---: | ---: | ---: |")
        for sel, v in sorted(reg.items(), key=lambda kv: np.mean(kv[1])):
            print(f"| {sel} | {_pts(float(np.mean(v)))} | {_pts(float(np.max(v)))} | {len(v)} |")
    print("\n## Label-free verdict vs the true change (bands measured leaving the shift out)\n")
    print("| shift | seed | run | true change | estimated change ± band | verdict |")
    print("| --- | --- | --- | ---: | ---: | --- |")
    for v in verdicts:
        print(f"| {v['shift']} | {v['seed']} | {v['model']} | {100 * v['true_change']:+.1f} | "
              f"{100 * v['estimated_change']:+.1f} ± {_pts(v['band'])} | {v['outcome']} |")


def paired_regret(reg: dict[str, list[float]], a: str, b: str, seed: int = 0) -> dict[str, float] | None:
    """Selector ``a`` against ``b`` on the same cases: mean regret difference (a − b), its
    95 % paired bootstrap interval (2,000 resamples), and on how many cases each was better."""
    if a not in reg or b not in reg or len(reg[a]) != len(reg[b]):
        return None
    d = np.asarray(reg[a]) - np.asarray(reg[b])
    rng = np.random.default_rng(seed)
    boot = [rng.choice(d, len(d)).mean() for _ in range(2000)]
    return {"mean": float(d.mean()), "ci_low": float(np.quantile(boot, 0.025)),
            "ci_high": float(np.quantile(boot, 0.975)), "a_better": int((d < 0).sum()),
            "b_better": int((d > 0).sum()), "cases": len(d)}


def verdict_summary(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    wrong_neg = [v for v in verdicts if v["outcome"] == "negative transfer" and v["true_change"] >= 0.10]
    wrong_help = [v for v in verdicts if v["outcome"] == "helped" and v["true_change"] <= -0.03]
    large = [v for v in verdicts if abs(v["true_change"]) >= 0.20]
    named = [v for v in large if (v["true_change"] > 0 and v["outcome"] == "helped")
             or (v["true_change"] < 0 and v["outcome"] in ("negative transfer", "did not help"))]
    return {"n": len(verdicts), "negative_transfer_on_gain_ge_10": len(wrong_neg),
            "helped_on_loss_ge_3": len(wrong_help), "large_changes": len(large),
            "large_changes_direction_named": len(named)}


def combined_selectors(rows: list[dict[str, Any]], verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """The combined rules of :mod:`labelfree_combos` beside the single selectors, and the
    selector chosen leaving each shift out (printed; returned for the study's JSON)."""
    import labelfree_combos as combos

    if len({r["shift"] for r in rows}) < 2:  # the rules' bands and loso need another shift
        print("\n(combined selectors: need two shifts or more)")
        return {}
    bands = {s: estimator_errors([r for r in rows if r["shift"] != s])["agreement"]["change_abs_error_p90"]
             for s in {r["shift"] for r in rows}}
    out: dict[str, Any] = {"agreement_change_band_without_shift": bands}
    for where, reg, base in (("runs", combos.run_regrets(rows, bands, verdicts), "source_val"),
                             ("epochs", combos.epoch_regrets(rows), "im")):
        if not reg:  # label-hidden runs log no per-epoch oracle accuracy
            continue
        reg["loso"], chosen = combos.loso({k: v for k, v in reg.items()})
        print(combos.summary_table(reg, f"over {where}"))
        print(f"  loso chose, per held-out shift: {chosen}")
        vs = {sel: combos.paired(v, reg[base]) for sel, v in reg.items() if sel != base}
        for sel, p in vs.items():
            print(f"  over {where}: {sel} − {base} = {100 * p['mean']:+.1f} [{100 * p['ci_low']:+.1f}, "
                  f"{100 * p['ci_high']:+.1f}] points ({p['cases']} cases)")
        out[where] = {"regret": {sel: {"mean": float(np.mean(list(v.values()))), "worst": float(np.max(list(v.values()))),
                                       "cases": len(v)} for sel, v in reg.items()},
                      "loso_choice": chosen, f"vs_{base}": vs}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--out", default="runs/labelfree_study")
    ap.add_argument("--write-calibration", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="re-measure cached cases instead of training them")
    ap.add_argument("--hide-labels", action="store_true",
                    help="give adapt-run the target as a flat unlabelled folder (labels read only to score)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out)
    rows: list[dict[str, Any]] = []
    peers: list[dict[str, Any]] = []
    for seed in args.seeds:  # every shift of one seed first: a partial study still covers every shift
        for kind in args.shifts:
            t = time.perf_counter()
            models = run_case(kind, seed, out, args.epochs, args.reuse, args.hide_labels)
            models = with_source_features(kind, seed, out, args.epochs, models, args.hide_labels)
            rows += case_rows(kind, seed, models)
            peers.append(peer_count_errors(models))
            print(f"{kind} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    errors = estimator_errors(rows)
    # an audit compares the models of one recipe (often 3: source, AdaBN, one more): the
    # agreement estimators' band is measured for each number of models, not only for all
    for est, by_k in peer_count_summary(peers).items():
        if est in errors:
            errors[est]["by_models"] = by_k
    runs_regret, epochs_regret = regret_over_runs(rows), regret_over_epochs(rows)
    # the default: the lowest mean error of the accuracy *change* (what the verdict reads)
    primary, secondary = most_accurate({e: v["change_abs_error_mean"] for e, v in errors.items()})
    verdicts = verdict_checks(rows, primary, secondary)
    print_tables(rows, errors, runs_regret, epochs_regret, verdicts)
    combined = combined_selectors(rows, verdicts)
    vs = verdict_summary(verdicts)
    paired = {}
    print("\n## Against the default selector (im), same cases: regret difference (points), 95 % paired bootstrap\n")
    for where, reg in (("epochs", epochs_regret), ("runs", runs_regret)):
        for sel in sorted(reg):
            p = paired_regret(reg, sel, "im") if sel != "im" else None
            if p is not None:
                paired[f"{sel} vs im over {where}"] = p
                print(f"  over {where}: {sel} − im = {100 * p['mean']:+.1f} [{100 * p['ci_low']:+.1f}, "
                      f"{100 * p['ci_high']:+.1f}]; better on {p['a_better']}, worse on {p['b_better']} "
                      f"of {p['cases']}")
    print("\n## The agreement estimators' error by the number of models compared (points, p90 / mean)\n")
    print("| estimator | models | accuracy p90 | accuracy mean | change p90 | change mean | changes |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for est in PEER_ESTIMATORS:
        for k, e in (errors.get(est, {}).get("by_models") or {}).items():
            ch = e["change_abs_error_p90"]
            print(f"| {est} | {k} | {100 * e['accuracy_abs_error_p90']:.1f} | {100 * e['accuracy_abs_error_mean']:.1f} | "
                  + (f"{100 * ch:.1f} | {100 * e['change_abs_error_mean']:.1f}" if ch is not None else "— | —")
                  + f" | {e['n_changes']} |")
    print(f"\nverdicts: {vs}\nprimary estimator {primary}, corroborating {secondary}; "
          f"{time.perf_counter() - t0:.0f} s in all")
    doc = {
        "estimators": errors, "default_estimator": primary, "corroborating_estimator": secondary,
        "selector_regret_over_runs": {k: {"mean": float(np.mean(v)), "worst": float(np.max(v)), "cases": len(v)}
                                      for k, v in runs_regret.items()},
        "selector_regret_over_epochs": {k: {"mean": float(np.mean(v)), "worst": float(np.max(v)), "cases": len(v)}
                                        for k, v in epochs_regret.items()},
        "selector_vs_im": paired, "verdicts": vs, "combined_selectors": combined, "shifts": args.shifts, "seeds": args.seeds, "epochs": args.epochs,
        "cases": len({(r["shift"], r["seed"]) for r in rows}),
        "date": datetime.date.today().isoformat(),
        "command": "python benchmarks/labelfree_study.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    atomic_write_json(out / ("labelfree_study_hidden.json" if args.hide_labels else "labelfree_study.json"), {**doc, "rows": [{k: v for k, v in r.items() if k != "epochs"}
                                                                    for r in rows], "verdict_rows": verdicts})
    if args.write_calibration:
        atomic_write_json(CALIBRATION_PATH, doc)
        print(f"wrote {CALIBRATION_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
