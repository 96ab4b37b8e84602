"""The audit's sentence on which model is deployed and why (``Audit.deployment``), and the
run-to-run spread of copies of a run (``method.runs[].copies``)."""

from __future__ import annotations

from typing import Mapping

__all__ = ["deployment_text"]


def deployment_text(dep: Mapping | None) -> str | None:
    """One sentence: which model is deployed and why (``Audit.deployment``)."""
    if not dep or not dep.get("model"):
        return None
    model, rule, audited = dep["model"], dep.get("rule"), dep.get("audited")
    reading = dep.get("source_reading") or {}
    ranked = rule in ("estimate", "reverse_validation")
    if ranked and reading.get("verdict") == "label_shift":
        text = (f"Deployed: {model} — the shift reads as a pure label shift (only the class mix changed: "
                "the label mix estimated from the source model's predictions differs from the source's beyond "
                "chance, and the source images re-weighted to it match the target's features). Under a label "
                "shift aligning the domains moves correct predictions towards the old class mix, and the accuracy "
                "estimates rate that as a gain, so the source model is kept whatever they say")
    elif rule == "reverse_validation":
        ranking = dep.get("ranking") or []
        top = next((r.get("reverse_validation") for r in ranking if r.get("model") == model), None)
        score = f"is right on {100 * top:.0f} % of the labelled source images" if top is not None else "scores"
        text = (f"Deployed: {model} — the highest reverse-validation score of the {len(ranking)} models: a small "
                f"network that learns the {dep.get('images')} held-out target images as {model} labels them "
                f"{score} (ties broken by {dep.get('estimator')})")
    elif rule == "estimate":
        ranking = dep.get("ranking") or []
        est = dep.get("estimator")
        text = (f"Deployed: {model} — the highest estimated target accuracy of the {len(ranking)} models "
                f"({est}, on {dep.get('images')} held-out target images; ties broken by {dep.get('corroborating')})")
    elif rule == "audit_run":
        text = f"Deployed: {model} — named by the recipe (method.audit_run)"
    else:
        text = f"Deployed: {model} — the run the checkpoint selector scores highest (method.deploy: selection)"
    if audited and audited != model and reading.get("verdict") == "label_shift" and ranked:
        text += f"; the audit compares the best-ranked run, {audited}"
    elif audited and audited != model:
        better = "scores higher" if rule == "reverse_validation" else "is estimated higher"
        text += f". No run {better} than the source model; the audit compares the best-ranked run, {audited}"
    text += "."
    for g in dep.get("copies") or []:  # run-to-run spread of copies that differ only in their seed
        runs = ", ".join(g.get("runs") or [])
        parts = []
        if g.get("estimated"):
            parts.append(f"estimated {100 * g['estimated']['min']:.0f}–{100 * g['estimated']['max']:.0f} % "
                         f"({g.get('estimator')})")
        if g.get("true"):
            parts.append(f"measured {100 * g['true']['min']:.1f}–{100 * g['true']['max']:.1f} % on the target test split")
        d = g.get("disagreement") or {}
        if d:
            parts.append(f"two copies disagree on {100 * d['mean']:.0f} % of the held-out target images "
                         f"(at most {100 * d['max']:.0f} %)")
        seeds = ", ".join(str(x) for x in g.get("seeds") or [])
        text += f" Run to run — {runs} (seeds {seeds}): " + "; ".join(parts) + "."
    return text
