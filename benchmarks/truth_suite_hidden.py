"""The truth suite with the target labels hidden: ``python benchmarks/truth_suite.py --hide-labels``.

Every ``adapt-run`` case of the suite whose target has labels runs again as a user without
labels would run it: the target becomes a **flat folder** of PNGs under shuffled numeric
names (no class sub-folder, nothing in a name that tells the class), given to ``adapt-run``
with ``labeled: false``. The labels go to a key file *outside* that folder which only this
script reads, after ``adapt-run`` has finished: it loads every saved model (the source
model and each run), predicts the held-out target images the audit measured (validation +
test, rebuilt from the recipe), and scores them with the key.

Agreement, the default label-free estimator (docs/labelfree.md), needs other models: with
the source model and one run both get the same agreement and the estimated change is 0
by construction. So each case's runs are joined by two cheap **peers** (AdaBN, unless the
case has it, and one epoch of TENT); the case's own run stays the audited one
(``method.audit_run``), so the audit's label-free verdict is about it, and the run the
selector recommends (rank 1 of the methods table) is scored as the pick.

Per case: true change (audited run − source model, from the hidden labels), the audit's
estimated change ± its measured band, the label-free verdict, whether the verdict is
wrong by issue 17's rules (``negative transfer`` for a true gain ≥ 10 points, ``helped``
for a true loss ≥ 3 points; ``can't tell`` is never wrong), and the regret of the pick
(best true accuracy among all the case's models − that of the recommended run, points).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: the two peers every hidden case gets (agreement needs models to compare)
PEERS = ({"name": "peer-adabn", "adabn": True, "epochs": 0},
         {"name": "peer-tent", "objective": "tent", "epochs": 1})


@dataclass
class HiddenCase:
    """One label-hidden ``adapt-run`` case (``run`` = the case's own run, audited)."""

    name: str
    truth: str
    source: str
    target: str
    runs: list[dict]
    obtained: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    @property
    def audited(self) -> str:
        return self.runs[0]["name"]


#: label-hidden cases beyond the suite's twins (no labelled counterpart with an expected
#: verdict): a partial gain, a wrecked model on unshifted data, a texture shift
EXTRA = (
    ("mild_scanner_adabn", "mild scanner change that AdaBN partly undoes", "src_train", "tgt_mild",
     [{"name": "adabn", "adabn": True, "epochs": 0}]),
    ("clean_misconfigured_dann", "no shift; DANN with domain weight 30 and learning rate 0.3 wrecks the model",
     "src_train", "tgt_clean", [{"name": "dann-hurt", "objective": "dann", "epochs": 4, "lr": 0.3,
                                 "dann": {"weight": 30.0}}]),
    ("textured_dann", "MNIST-M-style textured digits (photographs behind the strokes), DANN", "src_train",
     "tgt_textured", [{"name": "dann", "objective": "dann", "epochs": 4, "dann": {"weight": 1.0}}]),
)


def hidden_cases(cases: list, names: list[str] | None = None) -> list[HiddenCase]:
    """The label-hidden twin of every suite case in ``cases`` that runs ``adapt-run`` on a
    labelled target (``Case.hidden`` = (source, target, runs)), then the :data:`EXTRA` cases
    (those named in ``names``; all when ``names`` is None or empty)."""
    twins = [HiddenCase(c.name, c.truth, *c.hidden) for c in cases if c.hidden is not None]
    return twins + [HiddenCase(*e) for e in EXTRA if not names or e[0] in names]


def with_peers(runs: list[dict]) -> list[dict]:
    """The case's runs, then each of :data:`PEERS` whose settings no run of the case has."""
    settings = [{k: v for k, v in r.items() if k != "name"} for r in runs]
    return [*runs, *(p for p in PEERS if {k: v for k, v in p.items() if k != "name"} not in settings)]


def hide_labels(labelled: Path, flat: Path, key: Path, seed: int = 0) -> Path:
    """Copy the ImageFolder ``labelled`` (``<class>/<file>.png``) to the flat folder ``flat``
    as ``<k>.png`` (k a seeded shuffle of the files) and write the key
    ``{"classes": [...], "labels": {"<k>.png": class}}`` to ``key`` (outside ``flat``)."""
    if key.resolve().is_relative_to(flat.resolve()):
        raise ValueError(f"the key {key} must lie outside the unlabelled folder {flat}")
    files = sorted((p for p in labelled.glob("*/*.png")), key=lambda p: (p.parent.name, int(p.stem)))
    order = np.random.default_rng(seed).permutation(len(files))
    if flat.exists():
        shutil.rmtree(flat)
    flat.mkdir(parents=True)
    labels = {}
    for k, i in enumerate(order):
        name = f"{k:05d}.png"
        shutil.copyfile(files[i], flat / name)
        labels[name] = files[i].parent.name
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text(json.dumps({"classes": sorted({v for v in labels.values()}), "labels": labels}, indent=0))
    return flat


def score_models(run_dir: Path, recipe_path: Path, key: Path) -> dict[str, Any]:
    """Every saved model's true accuracy on the held-out target images (validation + test,
    as the audit measures), from the hidden ``key``. Also its predictions per file, so the
    figures can be checked against the key independently."""
    import torch

    from adapt.evaluate import predict
    from adapt.models import load_checkpoint
    from adapt.recipe import load_recipe
    from domaingap.runs import deployed_on_source, load_domains, uses_per_domain_bn

    recipe = load_recipe(recipe_path)
    domains = load_domains(recipe)
    held = domains.target_eval
    if bool((held.labels >= 0).any()):
        raise RuntimeError("the label-hidden run's target carries labels")
    doc = json.loads(key.read_text())
    names = [Path(i).name for i in held.ids]
    truth = np.array([domains.classes.index(doc["labels"][n]) for n in names])
    paths = {"source-only": run_dir / "source" / "model.pt",
             **{r.name: run_dir / "methods" / r.name / "model.pt" for r in recipe.method.runs}}
    run_cfgs = {r.name: r for r in recipe.method.runs}
    out: dict[str, Any] = {"files": names, "models": {}}
    cpu = torch.device("cpu")
    for model_name, path in paths.items():
        model, _ = load_checkpoint(path)
        probs = predict(model, held, cpu)["probs"]
        pred = probs.argmax(1)
        # as the model meets the source (a per-domain-BN run: source statistics re-estimated),
        # on the held-out source images the audit reads: what source validation scores
        cfg = run_cfgs.get(model_name)
        on_source = deployed_on_source(model, domains, cpu) if cfg is not None and uses_per_domain_bn(cfg) else model
        src = predict(on_source, domains.source_eval, cpu)
        out["models"][model_name] = {"accuracy": float(np.mean(pred == truth)),
                                     "predictions": [domains.classes[int(p)] for p in pred],
                                     "target_probs": probs.tolist(), "source_probs": src["probs"].tolist(),
                                     "source_labels": src["labels"].tolist()}
    out["truth"] = truth.tolist()
    return out


def selector_rows(case: str, scores: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """Every model of one case as a row of the label-free study (its true accuracy from the
    key; every estimate and selector score from predictions alone) and the label-free
    verdict of every run against the source model, as the audit reads it (estimators and
    bands for this many models, :func:`diagnostics.labelfree_estimates.accuracy_estimates`),
    so that the study's run selectors (:mod:`labelfree_combos`) can be scored here too."""
    from labelfree_study import case_rows

    from diagnostics.audit.labelfree_policy import LabelFreeEvidence, labelfree_outcome
    from diagnostics.labelfree_estimates import accuracy_estimates

    truth = np.asarray(scores["truth"])
    models = {n: {"target_probs": np.asarray(m["target_probs"]), "hidden_target_labels": truth,
                  "source_probs": np.asarray(m["source_probs"]), "source_labels": np.asarray(m["source_labels"]),
                  "mixval": float("nan"), "epochs": []} for n, m in scores["models"].items()}
    rows = case_rows(case, 0, models)
    preds = {n: m["target_probs"].argmax(1) for n, m in models.items()}
    est = {n: accuracy_estimates(m["target_probs"], m["source_probs"], m["source_labels"],
                                 [p for k, p in preds.items() if k != n]) for n, m in models.items()}
    share = {r["model"]: r["largest_share"] for r in rows}
    verdicts = []
    for name in models:
        if name == "source-only":
            continue
        eb, ea = est["source-only"]["estimates"], est[name]["estimates"]
        primary = est[name]["default"]
        names = [n for n in (primary, est[name]["corroborating"]) if n and n in eb and n in ea]
        if not names:
            continue
        ev = LabelFreeEvidence({n: eb[n]["accuracy"] for n in names}, {n: ea[n]["accuracy"] for n in names},
                               {n: ea[n]["change_band"] for n in names}, share["source-only"], share[name])
        out = labelfree_outcome(ev, names[0], names[1] if len(names) > 1 else None)
        true = {r["model"]: r["true_acc"] for r in rows}
        verdicts.append({"shift": case, "seed": 0, "model": name, "outcome": out.outcome,
                         "estimator": names[0], "estimated_change": out.change, "band": out.band,
                         "true_change": true[name] - true["source-only"]})
    return rows, verdicts


def audit_label_shift_reading(audit_json: Path) -> dict | None:
    """The audit's own label-free reading of the source model's target predictions (its
    ``before`` collapse verdict, from the model's features), or None without an audit."""
    if not audit_json.is_file():
        return None
    collapse = (json.loads(audit_json.read_text()).get("before") or {}).get("collapse") or {}
    return {"verdict": collapse["verdict"], "on": "the audit"} if "verdict" in collapse else None


def hidden_case_rows(work: Path, name: str) -> tuple[list[dict], list[dict], int] | None:
    """One label-hidden case's study rows and verdicts (:func:`selector_rows`), every row
    carrying the audit's own label-shift reading of the source model, and its number of
    models; None when the case left no scored predictions."""
    path = work / "hidden" / f"{name}_hidden_scores.json"
    if not path.is_file():
        return None
    scores = json.loads(path.read_text())
    if "truth" not in scores:
        return None
    rows, verdicts = selector_rows(name, scores)
    reading = audit_label_shift_reading(work / "hidden" / "runs" / f"{name}_hidden" / "audit.json")
    if reading:
        rows = [{**r, "label_shift": reading} for r in rows]
    return rows, verdicts, len(scores["models"])


def selector_regrets(cases: list["HiddenCase"], work: Path) -> dict[str, dict[tuple, float]]:
    """{selector: {(case, 0): regret}} over every model of each label-hidden case (source
    model, the case's runs, the peers) for the study's single and combined run selectors;
    the agreement band is the one the audit shows for the case's number of models."""
    import labelfree_combos as combos

    from adapt.accuracy_estimation.calibration import measured_error

    rows, verdicts, bands = [], [], {}
    for c in cases:
        got = None if c.error else hidden_case_rows(work, c.name)
        if got is None:
            continue
        r, v, n_models = got
        rows += r
        verdicts += v
        err = measured_error("agreement", n_models=n_models)
        bands[c.name] = err.change_p90 if err is not None and err.change_p90 is not None else 0.0
    return combos.run_regrets(rows, bands, verdicts) if rows else {}


def verdict_wrong(outcome: str, true_change: float) -> bool:
    """Issue 17's rules: never "negative transfer" for a true gain ≥ 10 points, never
    "helped" for a true loss ≥ 3 points ("can't tell" is never wrong)."""
    return ((outcome == "negative transfer" and true_change >= 0.10)
            or (outcome == "helped" and true_change <= -0.03))


def read_hidden(audit: dict, scores: dict[str, Any], audited: str) -> dict[str, Any]:
    """The case's row: truth from ``scores`` (hidden labels), the rest from ``audit.json``."""
    acc = {n: m["accuracy"] for n, m in scores["models"].items()}
    tr = next((v for v in audit["verdicts"] if v["name"] == "negative_transfer"), {})
    ev = tr.get("evidence") or {}
    pick = next((r.get("model") for r in audit.get("methods_table") or [] if r.get("label_free_rank") == 1), None)
    true_change = acc[audited] - acc["source-only"]
    outcome = ev.get("labelfree_outcome", "none")
    return {
        "source_acc": acc["source-only"], "audited_acc": acc[audited], "true_change": true_change,
        "estimated_change": ev.get("estimated_change"), "band": ev.get("estimated_change_band"),
        "verdict": outcome, "wrong": verdict_wrong(outcome, true_change),
        "pick": pick, "regret": (max(acc.values()) - acc[pick]) if pick in acc else None,
        "accuracies": acc,
    }


def run_hidden(case: HiddenCase, suite, work: Path, ts) -> dict[str, Any]:
    """Hide the target's labels, ``adapt-run`` the case with its peers, score with the key.
    ``ts``: the truth-suite module (its CLI runner ``adapt_run`` and ``read_audit``)."""
    hidden = work / "hidden"
    key = hidden / "keys" / f"{case.target}.json"
    flat = hidden / "targets" / case.target
    if not flat.is_dir():
        hide_labels(suite.paths[case.target], flat, key)
    name = f"{case.name}_hidden"
    run = ts.adapt_run(name, hidden, suite.paths[case.source], flat, with_peers(case.runs),
                       audit_run=case.audited, target_labeled=False)
    scores = score_models(run, hidden / f"{name}.yaml", key)
    (hidden / f"{name}_scores.json").write_text(json.dumps(scores))
    return read_hidden(ts.read_audit(run), scores, case.audited)


def run_hidden_cases(cases: list[HiddenCase], suite, work: Path, ts) -> list[HiddenCase]:
    for case in cases:
        t = time.perf_counter()
        try:
            case.obtained = run_hidden(case, suite, work, ts)
        except Exception as err:  # a crash is reported in the table, not fatal
            case.error = f"{type(err).__name__}: {err}"
        case.seconds = time.perf_counter() - t
    return cases


def _pts(x: float | None, signed: bool = True) -> str:
    return "—" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def hidden_table(cases: list[HiddenCase]) -> str:
    lines = ["| case | truth | source-only → audited run (hidden labels) | true change | "
             "estimated change ± band | label-free verdict | verdict wrong | pick | regret of the pick | s |",
             "| --- | --- | --- | ---: | ---: | --- | :---: | --- | ---: | ---: |"]
    for c in cases:
        o = c.obtained
        if c.error:
            lines.append(f"| {c.name} | {c.truth} | {c.error} | | | | **crash** | | | {c.seconds:.0f} |")
            continue
        band = "—" if o["band"] is None else f"{100 * o['band']:.1f}"
        lines.append(
            f"| {c.name} | {c.truth} | {_pts(o['source_acc'], False)} % → {_pts(o['audited_acc'], False)} % "
            f"({c.audited}) | {_pts(o['true_change'])} | {_pts(o['estimated_change'])} ± {band} | {o['verdict']} | "
            f"{'**YES**' if o['wrong'] else 'no'} | {o['pick']} | {_pts(o['regret'], False)} | {c.seconds:.0f} |")
    return "\n".join(lines)
