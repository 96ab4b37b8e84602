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
    from domaingap.runs import load_domains

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
    out: dict[str, Any] = {"files": names, "models": {}}
    for model_name, path in paths.items():
        model, _ = load_checkpoint(path)
        pred = predict(model, held, torch.device("cpu"))["probs"].argmax(1)
        out["models"][model_name] = {"accuracy": float(np.mean(pred == truth)),
                                     "predictions": [domains.classes[int(p)] for p in pred]}
    return out


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
