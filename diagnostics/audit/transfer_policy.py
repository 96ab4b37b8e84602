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

from diagnostics.audit.evidence import AuditEvidence, PairedChange, StageEvidence
from diagnostics.audit.gap_policy import gap_tests
from diagnostics.audit.labelfree_policy import LabelFreeEvidence, labelfree_outcome
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict, worst_level
from diagnostics.audit.wording import p_phrase, percent, points


def change_phrase(ch: PairedChange) -> str:
    """'+3.9 points (95% CI +1.1 to +6.7; McNemar p = 0.004; 12 images right→wrong, 31 wrong→right of 360)'."""
    return (f"{points(ch.delta)} ({100 * ch.level:.0f}% CI {100 * ch.ci_low:+.1f} to "
            f"{100 * ch.ci_high:+.1f}; McNemar {p_phrase(ch.mcnemar_p)}; {ch.b} images right→wrong, "
            f"{ch.c} wrong→right of {ch.n})")


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


def transfer_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    """Negative transfer: did adaptation make the model worse? (see the module docstring)

    Without target labels: :func:`labelfree_verdict` (estimated accuracy change with its
    measured band, corroborated; source accuracy lost is reported beside it). One model
    only: no verdict (:func:`accuracy_gap_verdict` speaks).
    """
    before, after = audit.before, audit.after
    if after is None:
        return None
    sb, sa = before.source_test.accuracy, after.source_test.accuracy
    tb, ta = before.target_test.accuracy, after.target_test.accuracy
    evidence: dict[str, Any] = {}
    levels: list[str] = []
    problems: list[str] = []
    src_text = _source_problems(sb, sa, th, levels, problems, evidence)
    no_gap = gap_tests(before, th.alpha)["detected"] is False
    change = after.target_change

    if (tb is not None and ta is not None) or change:
        if tb is not None and ta is not None:
            evidence.update(target_accuracy_before=tb, target_accuracy_after=ta)
            tgt_text = f"target accuracy {percent(tb)} → {percent(ta)} on the test split"
        else:
            tgt_text = ""
        if change:
            outcome = change.verdict
            evidence.update(paired_change=outcome, paired_delta=change.delta, paired_ci_low=change.ci_low,
                            paired_ci_high=change.ci_high, mcnemar_p_value=change.mcnemar_p, paired_n=change.n)
            paired = f"paired on {change.n} held-out target images: {change_phrase(change)}"
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
        if after.collapse.collapsed and not before.collapse.collapsed:
            level = "fail"
            problems.append("the adapted model collapsed onto few classes")
        summary = f"{lead}: {tgt_text}" + (f"; {src_text}" if src_text else "")
        if problems and lead != "Adaptation hurt":
            summary += " — but " + "; ".join(problems)
        return Verdict("negative_transfer", level, title, summary + ".", evidence)

    # ---- no target labels: estimated accuracies with measured bands (labelfree_policy)
    return labelfree_verdict(before, after, evidence, levels, problems, src_text)


def labelfree_verdict(before: StageEvidence, after: StageEvidence, evidence: dict, levels: list[str],
                      problems: list[str], src_text: str) -> Verdict | None:
    """Without target labels: "helped" / "did not help" / "negative transfer" / "can't
    tell" from the estimated accuracy change and its measured band, corroborated by an
    independent estimator and by collapse (:func:`labelfree_policy.labelfree_outcome`).
    IM and SND are shown as context; they decide nothing."""
    eb, ea = before.label_free, after.label_free
    primary = ea.default
    if after.collapse.collapsed and not before.collapse.collapsed:  # observed, not estimated: always said
        levels.append("warn")
        largest = after.collapse.target.largest_share
        problems.append("class collapse appeared after adaptation"
                        + (f" ({percent(largest)} of target predictions in one class)" if largest is not None else ""))
    for key, x0, x1 in (("im_score", eb.im_score, ea.im_score), ("snd", eb.snd, ea.snd)):
        if x0 is not None and x1 is not None:
            evidence[f"{key}_before"], evidence[f"{key}_after"] = x0, x1
    if not primary or primary not in eb.estimates:
        if not evidence:
            return None
        level = worst_level(["warn", *levels])
        summary = ("Can't tell whether adaptation helped (target labels unknown): no accuracy estimator with a "
                   "measured error applies to this run")
        summary += (f"; {src_text}" if src_text else "") + (" — " + "; ".join(problems) if problems else "") + "."
        return Verdict("negative_transfer", level, "Can't tell (target labels unknown)", summary, evidence)
    names = [n for n in (primary, ea.corroborating) if n and n in eb.estimates and n in ea.estimates]
    ev = LabelFreeEvidence(
        estimates_before={n: eb.estimates[n].accuracy for n in names},
        estimates_after={n: ea.estimates[n].accuracy for n in names},
        change_bands={n: ea.estimates[n].change_band for n in names},
        largest_share_before=before.collapse.target.largest_share,
        largest_share_after=after.collapse.target.largest_share,
        label_shift_bound=ea.label_shift_bound)
    out = labelfree_outcome(ev, primary, names[1] if len(names) > 1 else None)
    pb, pa = eb.estimates[primary], ea.estimates[primary]
    evidence.update(labelfree_outcome=out.outcome, estimator=primary,
                    estimated_target_accuracy_before=pb.accuracy, estimated_target_accuracy_after=pa.accuracy,
                    estimate_band=pa.band, estimated_change=out.change, estimated_change_band=out.band)
    if ea.label_shift_bound is not None:
        evidence["label_shift_change_bound"] = list(ea.label_shift_bound)
    est = (f"estimated target accuracy {100 * pb.accuracy:.0f} % ± {100 * pb.band:.0f} → "
           f"{100 * pa.accuracy:.0f} % ± {100 * pa.band:.0f} "
           f"({primary}; bands = measured 90th-percentile error)")
    title, level = {
        "helped": ("Adaptation helped (estimated)", "ok"),
        "did not help": ("Adaptation did not help (estimated)", "warn"),
        "negative transfer": ("Negative transfer (estimated)", "fail"),
        "can't tell": ("Can't tell whether adaptation helped", "warn"),
    }[out.outcome]
    level = worst_level([level, *levels])
    summary = f"{title} (target labels unknown): {est}; " + "; ".join(out.reasons)
    if src_text:
        summary += f"; {src_text}"
    if problems:
        summary += " — but " + "; ".join(problems)
    return Verdict("negative_transfer", level, title, summary + ".", evidence)


def accuracy_gap_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    """One model only: how much accuracy does it lose from source to target?"""
    if audit.after is not None:
        return None
    s, t = audit.before.source_test.accuracy, audit.before.target_test.accuracy
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
