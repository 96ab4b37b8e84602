"""Negative-transfer verdict (did adaptation make the model worse?) and, with one model,
the accuracy-gap verdict (how much accuracy does it lose from source to target?)."""

from __future__ import annotations

from typing import Any

from diagnostics.audit.collapse_policy import collapsed
from diagnostics.audit.contract import StageResult, number
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict, worst_level
from diagnostics.audit.wording import percent, points, statistic


def transfer_verdict(before: StageResult, after: StageResult, th: AuditThresholds) -> Verdict | None:
    """Negative transfer: did adaptation make the model worse?

    With target labels: target accuracy after < before − tolerance fails. Without them the
    evidence is label-free: IM / SND scores that fell, class collapse that appeared, and
    source accuracy lost (forgetting; ``source_drop_warn`` / ``source_drop_fail``).
    """
    sb, sa = before.accuracy("source_test"), after.accuracy("source_test")
    tb, ta = before.accuracy("target_test"), after.accuracy("target_test")
    evidence: dict[str, Any] = {}
    levels: list[str] = []
    problems: list[str] = []

    src_text = ""
    if sb is not None and sa is not None:
        drop = sb - sa
        evidence.update(source_accuracy_before=sb, source_accuracy_after=sa)
        src_text = f"source accuracy {percent(sb)} → {percent(sa)}"
        if drop >= th.source_drop_fail:
            levels.append("fail")
            problems.append(f"source accuracy fell {100 * drop:.1f} points ({percent(sb)} → {percent(sa)})")
        elif drop >= th.source_drop_warn:
            levels.append("warn")
            problems.append(f"source accuracy fell {100 * drop:.1f} points ({percent(sb)} → {percent(sa)})")

    if tb is not None and ta is not None:
        delta = ta - tb
        evidence.update(target_accuracy_before=tb, target_accuracy_after=ta)
        tgt_text = f"target accuracy {percent(tb)} → {percent(ta)} ({points(delta)})"
        if delta < -th.target_tolerance:
            level = "fail"
            title = "Negative transfer"
            lead = "Adaptation hurt"
        elif delta <= th.target_tolerance:
            level = worst_level(["warn", *levels])
            title = "Adaptation did not help"
            lead = "Adaptation did not help"
        else:
            level = worst_level(["ok", *levels])
            title = "Adaptation helped" if level == "ok" else "Adaptation helped the target, cost the source"
            lead = "Adaptation helped"
        if collapsed(after) and not collapsed(before):
            level = "fail"
            problems.append("the adapted model collapsed onto few classes")
        summary = f"{lead}: {tgt_text}" + (f"; {src_text}" if src_text else "")
        if problems and lead != "Adaptation hurt":
            summary += " — but " + "; ".join(problems)
        return Verdict("negative_transfer", level, title, summary + ".", evidence)

    # ---- no target labels: label-free evidence only
    signals: list[str] = []
    for key, label in (("im_score", "IM score"), ("snd", "SND")):
        x0, x1 = number(before.label_free, key), number(after.label_free, key)
        if x0 is None or x1 is None:
            continue
        evidence[f"{key}_before"], evidence[f"{key}_after"] = x0, x1
        text = f"{label} {statistic(x0)} → {statistic(x1)}"
        if x1 < x0 - th.label_free_rel_drop * max(abs(x0), 1e-12):
            levels.append("warn")
            problems.append(f"{label} fell ({statistic(x0)} → {statistic(x1)})")
        else:
            signals.append(text)
    cb, ca = collapsed(before), collapsed(after)
    if ca:
        largest = number(after.collapse, "target", "largest_share")
        if largest is not None:
            evidence["target_largest_share_after"] = largest
        if not cb:
            levels.append("fail")
            problems.append(
                "class collapse appeared after adaptation"
                + (f" ({percent(largest)} of target predictions in one class)" if largest is not None else "")
            )
    if sb is None and not evidence:
        return None
    level = worst_level(levels)
    if level == "ok":
        title = "No sign of negative transfer"
        parts = signals + ([src_text] if src_text else [])
        summary = "No sign of negative transfer (target labels unknown)" + (
            f": {'; '.join(parts)}." if parts else "."
        )
    else:
        title = "Negative transfer likely" if level == "fail" else "Possible negative transfer"
        summary = f"{title} (target labels unknown): {'; '.join(problems)}"
        if src_text and not any(p.startswith("source accuracy") for p in problems):
            summary += f"; {src_text}"
        summary += "."
    return Verdict("negative_transfer", level, title, summary, evidence)


def accuracy_gap_verdict(stage: StageResult, th: AuditThresholds) -> Verdict | None:
    """One model only: how much accuracy does it lose from source to target?"""
    s, t = stage.accuracy("source_test"), stage.accuracy("target_test")
    if s is None or t is None:
        return None
    drop = s - t
    ev = {"source_accuracy": s, "target_accuracy": t}
    if drop > th.accuracy_gap_warn:
        return Verdict(
            "accuracy_gap", "warn", "Accuracy drops on the target",
            f"The model loses accuracy on the target: source {percent(s)} → target {percent(t)} ({points(-drop)}).",
            ev,
        )
    return Verdict(
        "accuracy_gap", "ok", "Accuracy holds on the target",
        f"Accuracy holds on the target: source {percent(s)}, target {percent(t)} ({points(-drop)}).",
        ev,
    )
