"""Class-collapse verdict: predictions piling onto few classes, before and after.

Each stage's ``collapse`` section carries the measured verdict
(:func:`diagnostics.collapse.collapse_report`): with the target's labels the true label
mix decides (``collapsed`` / ``biased`` / ``label_shift`` / ``no_shift``); without them a
label shift is claimed only when its own assumption check passed, else ``covariate_shift``
("the label mix cannot be estimated") or ``inconclusive``. This policy words it, with the
true mix beside the predictions when it is known.
"""

from __future__ import annotations

from typing import Any

from diagnostics.audit.evidence import AuditEvidence, StageEvidence
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict
from diagnostics.audit.wording import percent


def _mix(d: dict) -> str:
    top = sorted(d.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"'{k}' {percent(v)}" for k, v in top)


def _phrase(stage: StageEvidence) -> tuple[str, dict]:
    """What the predictions look like, against the true mix when known, plus evidence."""
    c = stage.collapse
    hist, truth = c.target.histogram, c.true_target_mix
    ev: dict[str, Any] = {}
    bits = []
    if hist:
        cls, share = max(hist.items(), key=lambda kv: kv[1])
        ev["largest_class"], ev["largest_share"] = str(cls), share
        bits.append(f"target predictions {_mix(hist)}")
    if truth:
        bits.append(f"true target mix {_mix(truth)}")
        ev["true_share_of_largest"] = truth.get(ev.get("largest_class"), 0.0)
    if c.prediction_vs_truth is not None:
        ev["prediction_vs_truth"] = c.prediction_vs_truth
    if c.target.marginal_entropy is not None and c.target.log_k is not None:
        ev["marginal_entropy"], ev["log_k"] = c.target.marginal_entropy, c.target.log_k
    return "; ".join(bits), ev


_TITLES = {"collapsed": "Class collapse on the target", "biased": "Predictions biased on the target",
           "covariate_shift": "Covariate shift: label mix unknown",
           "inconclusive": "Label shift or collapse: undecided",
           "label_shift": "Label shift, no collapse", "no_shift": "No class collapse"}


def _describe(stage: StageEvidence) -> str:
    v = stage.collapse.verdict or "no_shift"
    piles = ", ".join(stage.collapse.over_predicted)
    phrase, _ = _phrase(stage)
    if v == "collapsed":
        return f"predictions pile onto {piles or 'few classes'} ({phrase})"
    if v == "biased":
        return f"predictions lean towards {piles} against the true mix ({phrase})"
    if v == "covariate_shift":
        return (f"covariate shift: the label mix cannot be estimated; predictions pile onto "
                f"{piles or 'a few classes'} ({phrase})")
    if v == "inconclusive":
        return f"BBSE reads a label shift whose assumption could not be checked ({phrase})"
    if v == "label_shift":
        return f"the target has another label mix and the predictions follow it ({phrase})"
    return f"no collapse ({phrase})" if phrase else "no collapse"


def collapse_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    """Class collapse / bias / covariate shift of the deployed model (after, else before),
    with what the before-model did."""
    before, after = audit.before, audit.after
    vb, va = before.collapse.verdict, None if after is None else after.collapse.verdict
    if vb is None and va is None:
        return None
    if va is None:
        phrase, ev = _phrase(before)
        ev["collapse_verdict"] = vb
        ev["reason"] = before.collapse.reason
        text = _describe(before)
        return Verdict("collapse", before.collapse.level, _TITLES.get(vb, vb),
                       f"{text[0].upper()}{text[1:]}.", ev)
    _, ev_b = _phrase(before)
    _, ev_a = _phrase(after)
    ev = {f"{k}_before": v for k, v in ev_b.items()} | {f"{k}_after": v for k, v in ev_a.items()}
    ev["collapse_verdict_before"], ev["collapse_verdict_after"] = vb, va
    level = after.collapse.level
    if vb == "collapsed" and va != "collapsed":
        title = "Adaptation removed class collapse" if level == "ok" else _TITLES.get(va, va)
        summary = f"Before adaptation {_describe(before)}; after, {_describe(after)}."
    elif va == "collapsed" and vb != "collapsed":
        level, title = "fail", "Adaptation caused class collapse"
        summary = f"Class collapse appeared after adaptation: {_describe(after)}."
        ev["reason"] = after.collapse.reason
    elif va == "collapsed":
        level, title = "fail", "Class collapse persists"
        summary = f"The model collapsed on the target before and after adaptation: after, {_describe(after)}."
        ev["reason"] = after.collapse.reason
    else:
        title = _TITLES.get(va, va) if level != "ok" or va != "no_shift" else "No class collapse"
        summary = f"After adaptation {_describe(after)}" + (f"; before, {_describe(before)}." if vb != va else ".")
    return Verdict("collapse", level, title, summary, ev)
