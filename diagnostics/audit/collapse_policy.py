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

from diagnostics.audit.contract import StageResult, number, section
from diagnostics.audit.verdict import Verdict, worst_level
from diagnostics.audit.wording import percent
from diagnostics.collapse import VERDICT_LEVELS


def collapsed(stage: StageResult | None) -> bool | None:
    """Whether the collapse check found a collapse; None when it was not run."""
    if stage is None or not stage.collapse or "collapsed" not in stage.collapse:
        return None
    return bool(stage.collapse.get("collapsed"))


def _verdict(stage: StageResult | None) -> str | None:
    if stage is None or not stage.collapse:
        return None
    v = stage.collapse.get("verdict")
    if v:
        return str(v)
    c = collapsed(stage)
    return None if c is None else ("collapsed" if c else "no_shift")


def collapse_level(stage: StageResult) -> str:
    """The collapse finding's level (ok / warn / fail): the section's own ``level`` (which the
    check raises to "fail" for a pile-up), else :data:`diagnostics.collapse.VERDICT_LEVELS`
    of its verdict — the one table the policy and the report both read."""
    lvl = stage.collapse.get("level")
    return str(lvl) if lvl in ("ok", "warn", "fail") else VERDICT_LEVELS.get(_verdict(stage) or "", "ok")


def _mix(d: dict) -> str:
    top = sorted(d.items(), key=lambda kv: -float(kv[1] or 0.0))[:4]
    return ", ".join(f"'{k}' {percent(float(v))}" for k, v in top)


def _phrase(stage: StageResult) -> tuple[str, dict]:
    """What the predictions look like, against the true mix when known, plus evidence."""
    hist = section(stage.collapse, "target", "histogram")
    truth = section(stage.collapse, "true_target_mix")
    ev: dict[str, Any] = {}
    bits = []
    if hist:
        cls, share = max(hist.items(), key=lambda kv: float(kv[1] or 0.0))
        ev["largest_class"], ev["largest_share"] = str(cls), float(share)
        bits.append(f"target predictions {_mix(hist)}")
    if truth:
        bits.append(f"true target mix {_mix(truth)}")
        ev["true_share_of_largest"] = float(truth.get(ev.get("largest_class"), 0.0) or 0.0)
    dist = number(stage.collapse, "prediction_vs_truth")
    if dist is not None:
        ev["prediction_vs_truth"] = dist
    ent, logk = number(stage.collapse, "target", "marginal_entropy"), number(stage.collapse, "target", "log_k")
    if ent is not None and logk is not None:
        ev["marginal_entropy"], ev["log_k"] = ent, logk
    return "; ".join(bits), ev


_TITLES = {"collapsed": "Class collapse on the target", "biased": "Predictions biased on the target",
           "covariate_shift": "Covariate shift: label mix unknown",
           "inconclusive": "Label shift or collapse: undecided",
           "label_shift": "Label shift, no collapse", "no_shift": "No class collapse"}


def _describe(stage: StageResult) -> str:
    v = _verdict(stage) or "no_shift"
    piles = ", ".join(stage.collapse.get("over_predicted") or [])
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


def collapse_verdict(before: StageResult, after: StageResult | None) -> Verdict | None:
    """Class collapse / bias / covariate shift of the deployed model (after, else before),
    with what the before-model did."""
    vb, va = _verdict(before), _verdict(after)
    if vb is None and va is None:
        return None
    if va is None:
        phrase, ev = _phrase(before)
        ev["collapse_verdict"] = vb
        ev["reason"] = str(before.collapse.get("reason") or "")
        text = _describe(before)
        return Verdict("collapse", collapse_level(before), _TITLES.get(vb, vb),
                       f"{text[0].upper()}{text[1:]}.", ev)
    _, ev_b = _phrase(before)
    _, ev_a = _phrase(after)
    ev = {f"{k}_before": v for k, v in ev_b.items()} | {f"{k}_after": v for k, v in ev_a.items()}
    ev["collapse_verdict_before"], ev["collapse_verdict_after"] = vb, va
    level = collapse_level(after)
    if vb == "collapsed" and va != "collapsed":
        title = "Adaptation removed class collapse" if level == "ok" else _TITLES.get(va, va)
        summary = f"Before adaptation {_describe(before)}; after, {_describe(after)}."
    elif va == "collapsed" and vb != "collapsed":
        level, title = "fail", "Adaptation caused class collapse"
        summary = f"Class collapse appeared after adaptation: {_describe(after)}."
        ev["reason"] = str(after.collapse.get("reason") or "")
    elif va == "collapsed":
        level, title = "fail", "Class collapse persists"
        summary = f"The model collapsed on the target before and after adaptation: after, {_describe(after)}."
        ev["reason"] = str(after.collapse.get("reason") or "")
    else:
        title = _TITLES.get(va, va) if level != "ok" or va != "no_shift" else "No class collapse"
        summary = f"After adaptation {_describe(after)}" + (f"; before, {_describe(before)}." if vb != va else ".")
    return Verdict("collapse", worst_level([level]), title, summary, ev)
