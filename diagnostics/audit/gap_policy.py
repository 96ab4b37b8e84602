"""Gap verdict: did the domain gap shrink (before vs after), or, with one model, is there one?"""

from __future__ import annotations

from typing import Any

from diagnostics.audit.contract import StageResult, number
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict
from diagnostics.audit.wording import p_phrase, statistic


def _gap_figures(stage: StageResult) -> dict[str, float]:
    """The comparable size of each gap statistic (smaller = closer domains).

    The domain-classifier AUC counts as its distance from chance, max(AUC, 1 − AUC),
    so a classifier that is wrong in a consistent way still shows a gap.
    """
    out: dict[str, float] = {}
    mmd2 = number(stage.gap, "mmd", "mmd2")
    if mmd2 is not None:
        out["MMD²"] = mmd2
    fd = number(stage.gap, "frechet", "distance")
    if fd is not None:
        out["Fréchet distance"] = fd
    auc = number(stage.gap, "domain_classifier", "auc")
    if auc is not None:
        out["domain-classifier AUC"] = max(auc, 1.0 - auc)
    ot = number(stage.gap, "transport", "distance")
    if ot is not None:
        out["transport distance"] = ot
    return out


def gap_verdict(before: StageResult, after: StageResult | None, th: AuditThresholds) -> Verdict | None:
    """Did the domain gap shrink? (before vs after; or, alone, is there one?)"""
    b = _gap_figures(before)
    if not b:
        return None
    if after is None or not _gap_figures(after):
        return _gap_only_verdict(before, th)
    a = _gap_figures(after)
    common = [k for k in b if k in a]
    if not common:
        return _gap_only_verdict(before, th)
    fell, rose = [], []
    parts = []
    evidence: dict[str, Any] = {}
    for k in common:
        x0, x1 = b[k], a[k]
        scale = max(abs(x0), 1e-12)
        rel = (x1 - x0) / scale
        if rel < -th.gap_rel_change:
            fell.append(k)
        elif rel > th.gap_rel_change:
            rose.append(k)
        parts.append(f"{k} {statistic(x0)} → {statistic(x1)}")
        slug = k.replace("²", "2").replace("é", "e").replace(" ", "_").replace("-", "_").lower()
        evidence[f"{slug}_before"] = x0
        evidence[f"{slug}_after"] = x1
    p_before, p_after = number(before.gap, "mmd", "p_value"), number(after.gap, "mmd", "p_value")
    if p_after is not None:
        evidence["mmd_p_value_after"] = p_after
    n = len(common)
    numbers = "; ".join(parts)
    if len(fell) * 2 > n:
        level, title = "ok", "Domain gap shrank"
        head = f"The domain gap shrank ({len(fell)} of {n} statistics fell)"
    elif len(rose) * 2 > n:
        level, title = "warn", "Domain gap grew"
        head = f"The domain gap grew after adaptation ({len(rose)} of {n} statistics rose)"
    else:
        level, title = "warn", "Domain gap unchanged"
        head = f"The domain gap did not clearly shrink ({len(fell)} of {n} statistics fell)"
    tail = ""
    if p_after is not None and level == "ok":
        tail = (
            f"; MMD test after adaptation {p_phrase(p_after)}"
            + (" (still significant)" if p_after < th.alpha
               else " (no longer significant)" if p_before is not None and p_before < th.alpha
               else " (not significant)")
        )
    return Verdict("gap", level, title, f"{head}: {numbers}{tail}.", evidence)


def _gap_only_verdict(stage: StageResult, th: AuditThresholds) -> Verdict:
    """One model only (``diagnose gap``): is the gap statistically and practically there?"""
    p = number(stage.gap, "mmd", "p_value")
    mmd2 = number(stage.gap, "mmd", "mmd2")
    auc = number(stage.gap, "domain_classifier", "auc")
    fd = number(stage.gap, "frechet", "distance")
    lo, hi = number(stage.gap, "frechet", "ci_low"), number(stage.gap, "frechet", "ci_high")
    parts, evidence = [], {}
    if mmd2 is not None:
        parts.append(f"MMD² {statistic(mmd2)}" + (f" ({p_phrase(p)})" if p is not None else ""))
        evidence["mmd2"] = mmd2
        if p is not None:
            evidence["mmd_p_value"] = p
    if fd is not None:
        ci = f" [95% CI {statistic(lo)}–{statistic(hi)}]" if lo is not None and hi is not None else ""
        parts.append(f"Fréchet distance {statistic(fd)}{ci}")
        evidence["frechet_distance"] = fd
    if auc is not None:
        parts.append(f"domain-classifier AUC {auc:.3f}")
        evidence["domain_classifier_auc"] = auc
    significant = p is not None and p < th.alpha
    large = auc is not None and max(auc, 1 - auc) >= th.auc_large
    if significant or large:
        level, title = "warn", "Domains differ"
        head = "Source and target differ measurably"
    elif p is not None or auc is not None:
        level, title = "ok", "No measurable gap"
        head = "No significant difference between source and target"
    else:
        level, title = "ok", "Domain gap measured"
        head = "Domain gap measured"
    return Verdict("gap", level, title, f"{head}: {'; '.join(parts)}.", evidence)
