"""Class-collapse verdict: one class swallowing the target predictions, before and after."""

from __future__ import annotations

from typing import Any

from diagnostics.audit.contract import StageResult, number, section
from diagnostics.audit.verdict import Verdict
from diagnostics.audit.wording import percent


def collapsed(stage: StageResult | None) -> bool | None:
    """Whether the collapse check found a collapse; None when it was not run."""
    if stage is None or not stage.collapse or "collapsed" not in stage.collapse:
        return None
    return bool(stage.collapse.get("collapsed"))


def _collapse_phrase(stage: StageResult) -> tuple[str, dict]:
    """"the largest class 'normal' holds 97.0% of target predictions; ..." plus its evidence."""
    hist = section(stage.collapse, "target", "histogram")
    ev: dict[str, Any] = {}
    phrase = ""
    if hist:
        cls, share = max(hist.items(), key=lambda kv: float(kv[1] or 0.0))
        phrase = f"the largest class '{cls}' holds {percent(float(share))} of target predictions"
        ev["largest_class"] = str(cls)
        ev["largest_share"] = float(share)
    ent, logk = number(stage.collapse, "target", "marginal_entropy"), number(stage.collapse, "target", "log_k")
    if ent is not None and logk is not None:
        phrase += ("; " if phrase else "") + f"marginal entropy {ent:.2f} of log K = {logk:.2f}"
        ev["marginal_entropy"], ev["log_k"] = ent, logk
    return phrase, ev


def collapse_verdict(before: StageResult, after: StageResult | None) -> Verdict | None:
    """Class collapse: one class swallowing the target predictions (before and after)."""
    cb, ca = collapsed(before), collapsed(after)
    if cb is None and ca is None:
        return None
    if after is None or ca is None:
        phrase, ev = _collapse_phrase(before)
        reason = str(before.collapse.get("reason") or "")
        if cb:
            return Verdict(
                "collapse", "fail", "Class collapse on the target",
                f"The model collapsed on the target: {phrase or reason}.", {**ev, "reason": reason},
            )
        return Verdict(
            "collapse", "ok", "No class collapse",
            "No class collapse on the target" + (f": {phrase}." if phrase else "."), ev,
        )
    phrase_b, ev_b = _collapse_phrase(before)
    phrase_a, ev_a = _collapse_phrase(after)
    ev = {f"{k}_before": v for k, v in ev_b.items()} | {f"{k}_after": v for k, v in ev_a.items()}
    reason = str(after.collapse.get("reason") or "")
    if ca and not cb:
        ev["reason"] = reason
        return Verdict(
            "collapse", "fail", "Adaptation caused class collapse",
            f"Class collapse appeared after adaptation: {phrase_a or reason}.", ev,
        )
    if ca and cb:
        ev["reason"] = reason
        return Verdict(
            "collapse", "fail", "Class collapse persists",
            f"The model collapsed on the target before and after adaptation: {phrase_a or reason}.", ev,
        )
    if cb and not ca:
        return Verdict(
            "collapse", "ok", "Adaptation removed class collapse",
            f"Adaptation removed the class collapse: before, {phrase_b}; after, {phrase_a}.", ev,
        )
    return Verdict(
        "collapse", "ok", "No class collapse",
        "No class collapse before or after adaptation" + (f": after, {phrase_a}." if phrase_a else "."), ev,
    )
