"""Usability verdict: is the model that would be deployed still near chance on the target?

"Adaptation helped: 10 % → 18 %" on ten classes is an improvement to a model nobody can
use. With target labels the deployed model's target accuracy is corrected for chance
(:func:`diagnostics.chance.near_chance`; chance = the most frequent true class's share);
without them the label-free proxy (mean confidence and IM score,
:func:`diagnostics.chance.near_chance_label_free`). No verdict when the model is usable.
"""

from __future__ import annotations

from diagnostics.audit.evidence import AuditEvidence
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict
from diagnostics.chance import near_chance, near_chance_label_free


def usability_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    stage = audit.deployed
    adapted = audit.after is not None and not audit.deployed_before
    name = ("the adapted model" if adapted else
            "the source model, deployed (no run is estimated better)," if audit.after is not None else "the model")
    truth, hist = stage.collapse.true_target_mix, stage.collapse.target.histogram
    k = len(truth or hist or stage.target_test.per_class_recall)
    acc = stage.target_test.accuracy
    if k < 2:
        return None
    if acc is not None:
        check = near_chance(acc, k, label_mix=list(truth.values()) if truth else None, margin=th.chance_margin)
    else:
        conf, im = stage.collapse.target.mean_confidence, stage.collapse.target.im_score
        if conf is None or im is None:
            return None
        check = near_chance_label_free(conf, im, k, margin=th.chance_margin)
    if not check.near:
        return None
    still = "still near chance on the target" + (" after adaptation" if adapted else "")
    return Verdict("usability", "warn", "Still unusable on the target",
                   f"{name[0].upper()}{name[1:]} is {still}: {check.reason}.",
                   {"chance_corrected": check.score, "chance_accuracy": check.chance, "basis": check.basis})
