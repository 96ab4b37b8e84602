"""Negative-transfer verdict (did adaptation make the model better, worse, or can we not
tell?) and, with one model, the accuracy-gap verdict.

A change of accuracy is judged by a PAIRED test on the same held-out target images
(``after.metrics["target_change"]``, :func:`diagnostics.paired.accuracy_change`: an exact
McNemar test and a paired bootstrap interval of the difference): "helped" / "hurt" only
when both agree, otherwise "inconclusive". When no gap was detected before adaptation,
an inconclusive change is no warning: adaptation was not needed.
"""

from __future__ import annotations

from typing import Any

from diagnostics.audit.collapse_policy import collapsed
from diagnostics.audit.contract import StageResult, number, section
from diagnostics.audit.gap_policy import gap_tests
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict, worst_level
from diagnostics.audit.wording import percent, points, statistic


def change_phrase(ch: dict) -> str:
    """'+3.9 points (95% CI +1.1 to +6.7; McNemar p = 0.004; 12 images right→wrong, 31 wrong→right of 360)'."""
    p = float(ch["mcnemar_p"])
    pp = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    lvl = 100 * float(ch.get("level", 0.95))
    return (f"{points(float(ch['delta']))} ({lvl:.0f}% CI {100 * float(ch['ci_low']):+.1f} to "
            f"{100 * float(ch['ci_high']):+.1f}; McNemar {pp}; {int(ch['b'])} images right→wrong, "
            f"{int(ch['c'])} wrong→right of {int(ch['n'])})")


def _source_problems(sb, sa, th, levels, problems, evidence) -> str:
    if sb is None or sa is None:
        return ""
    drop = sb - sa
    evidence.update(source_accuracy_before=sb, source_accuracy_after=sa)
    if drop >= th.source_drop_fail:
        levels.append("fail")
        problems.append(f"source accuracy fell {100 * drop:.1f} points ({percent(sb)} → {percent(sa)})")
    elif drop >= th.source_drop_warn:
        levels.append("warn")
        problems.append(f"source accuracy fell {100 * drop:.1f} points ({percent(sb)} → {percent(sa)})")
    return f"source accuracy {percent(sb)} → {percent(sa)}"


def transfer_verdict(before: StageResult, after: StageResult, th: AuditThresholds) -> Verdict | None:
    """Negative transfer: did adaptation make the model worse? (see the module docstring)

    Without target labels the evidence is label-free: IM / SND scores that fell, class
    collapse that appeared, and source accuracy lost (``source_drop_warn`` / ``_fail``).
    """
    sb, sa = before.accuracy("source_test"), after.accuracy("source_test")
    tb, ta = before.accuracy("target_test"), after.accuracy("target_test")
    evidence: dict[str, Any] = {}
    levels: list[str] = []
    problems: list[str] = []
    src_text = _source_problems(sb, sa, th, levels, problems, evidence)
    no_gap = gap_tests(before, th.alpha)["detected"] is False
    change = section(after.metrics, "target_change")

    if (tb is not None and ta is not None) or change:
        if tb is not None and ta is not None:
            evidence.update(target_accuracy_before=tb, target_accuracy_after=ta)
            tgt_text = f"target accuracy {percent(tb)} → {percent(ta)} on the test split"
        else:
            tgt_text = ""
        if change:
            outcome = str(change.get("verdict"))
            evidence.update(paired_change=outcome, paired_delta=float(change["delta"]),
                            paired_ci_low=float(change["ci_low"]), paired_ci_high=float(change["ci_high"]),
                            mcnemar_p_value=float(change["mcnemar_p"]), paired_n=int(change["n"]))
            paired = f"paired on {int(change['n'])} held-out target images: {change_phrase(change)}"
            tgt_text = f"{tgt_text}; {paired}" if tgt_text else paired
        else:
            # no per-image predictions: the old point rule, said to be unpaired
            delta = ta - tb
            outcome = ("hurt" if delta < -th.target_tolerance else
                       "helped" if delta > th.target_tolerance else "inconclusive")
            tgt_text += f" ({points(delta)}; no paired test)"
        if outcome == "hurt":
            level, title, lead = "fail", "Negative transfer", "Adaptation hurt"
        elif outcome == "helped":
            level = worst_level(["ok", *levels])
            title = "Adaptation helped" if level == "ok" else "Adaptation helped the target, cost the source"
            lead = "Adaptation helped"
        elif no_gap:
            level = worst_level(["ok", *levels])
            title, lead = "Adaptation not needed", "No detectable gap and no measurable change"
        else:
            level = worst_level(["warn", *levels])
            title, lead = "Adaptation did not clearly help", "Adaptation did not clearly help (CI crosses 0)"
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
