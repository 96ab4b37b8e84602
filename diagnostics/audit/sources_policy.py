"""Sources verdict: with several labelled sources, does every one of them help?

Reads the audit's ``sources`` section, parsed into :class:`~diagnostics.audit.evidence.Sources`
(written by the orchestration: each source's gap to the target and its weight,
``domaingap/source_weights.py``; with ``method.leave_one_source_out`` its contribution,
``domaingap/source_contribution.py``):

    {names, statistic, images {name: n}, mmd2 {name: d}, weights {name: w},
     leave_one_out: {estimator, measured_error {accuracy_mean, accuracy_p90, change_p90},
                     all {estimated_accuracy, im_score}, without {name: {...}},
                     contribution {name: estimate(all) − estimate(without name)}} | None}

* no contribution measured → ``ok``: the gaps and weights only, and what was not measured;
* a source whose removal raises the label-free estimate by more than
  ``AuditThresholds.source_hurts`` → ``warn`` naming it (the largest such), with the
  estimator's measured error: beyond its measured change error the verdict says the
  source hurts; within it, that the source may hurt and the estimate cannot tell;
* otherwise ``ok``: every source's contribution is stated.

Target labels are never read (the contract's reporting-only accuracies are ignored).
"""

from __future__ import annotations

from diagnostics.audit.evidence import AuditEvidence
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict
from diagnostics.audit.wording import percent, points, statistic


def sources_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    src = audit.sources
    names = src.names
    if len(names) < 2:
        return None
    gaps, weights, loo = src.mmd2, src.weights, src.leave_one_out
    evidence: dict = {}
    for n in names:
        if n in gaps:
            evidence[f"{n}: MMD² to target"] = round(gaps[n], 4)
        if n in weights:
            evidence[f"{n}: weight"] = round(weights[n], 3)
    gap_text = ", ".join(f"{n} {statistic(gaps[n])} (weight {weights.get(n, 0.0):.2f})" for n in names if n in gaps)
    contrib = loo.contribution
    if not contrib:
        return Verdict("sources", "ok", "Sources: gaps measured, contributions not",
                       f"Gap of each source to the target (MMD²): {gap_text}. Each source's contribution was not "
                       "measured (set method.leave_one_source_out: true).", evidence)
    for n in names:
        if n in contrib:
            evidence[f"{n}: contribution (estimated accuracy)"] = round(contrib[n], 4)
    band = loo.change_p90
    if band is not None:
        evidence["estimator change error p90"] = round(band, 4)
    est_all = loo.estimated_accuracy_all
    worst = min((n for n in names if n in contrib), key=lambda n: contrib[n])
    c = contrib[worst]
    said = ", ".join(f"{n} {points(contrib[n])}" for n in names if n in contrib)
    if c < -th.source_hurts:
        without = loo.estimated_accuracy_without.get(worst)
        beyond = band is None or -c > band
        claim = (f"source {worst} seems to hurt" if beyond else
                 f"source {worst} may hurt, within the estimator's measured change error (±{100 * band:.1f} points), "
                 "so this is inconclusive")
        return Verdict("sources", "warn", f"Sources: {worst} may hurt the target",
                       f"Left out, {worst} raises the label-free estimate of target accuracy from "
                       f"{percent(est_all or 0)} to {percent(without or 0)}: {claim}. Contributions: {said}. "
                       f"Gaps (MMD²): {gap_text}. Try the run without it, or source_weights: similarity.",
                       evidence)
    return Verdict("sources", "ok", "Sources: every source contributes",
                   f"No source lowers the label-free estimate of target accuracy by more than "
                   f"{points(th.source_hurts)} (contributions: {said}). Gaps (MMD²): {gap_text}.", evidence)
