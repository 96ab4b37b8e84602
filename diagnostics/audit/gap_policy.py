"""Gap verdict: is there a gap at all, and (before vs after) did adaptation close it?

Three rules keep it honest:

* **Two tests.** The gap is "detected" when the MMD permutation test or the classifier
  two-sample test rejects at α (a test whose permutations cannot reach α says nothing);
  it is "not detected" only when every available test that can decide fails to reject.
  So "no longer significant" is never said while the classifier still separates the
  domains.
* **No gap, no alarm.** When the gap before adaptation is not detected, the verdict is
  ok — "no detectable gap; adaptation not needed" — whatever the after-model shows.
* **One space for the data, each model's own for alignment.** The before stage is the
  source model: its features are the fixed extractor in which the data gap is measured
  (the same images, the same extractor, before and after). The after stage's figures are
  in the adapted model's OWN feature space, labelled so; only scale-free statistics
  (the tests' p-values, the classifier AUC, MMD² with the median-heuristic bandwidth) are
  compared across the two spaces — a Fréchet or transport distance changes with the
  features' scale, so it is shown, never used to say "closer".
"""

from __future__ import annotations

from typing import Any

from diagnostics.audit.evidence import AuditEvidence, StageEvidence, TwoSampleTest
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict
from diagnostics.audit.wording import p_phrase, statistic


def gap_tests(stage: StageEvidence | None, alpha: float) -> dict[str, Any]:
    """The two tests of one stage's gap: {detected: bool | None, parts: [str], evidence}.

    ``detected`` is True when a test that can decide rejects at ``alpha``, False when every
    such test fails to reject, None when no test was run (or none could decide).
    """
    if stage is None:
        return {"detected": None, "parts": [], "evidence": {}}
    parts, ev, decided = [], {}, []
    mmd: TwoSampleTest = stage.gap.mmd
    if mmd.p_value is not None:
        parts.append(f"MMD test {p_phrase(mmd.p_value)}"
                     + (f" (MMD² {statistic(mmd.statistic)})" if mmd.statistic is not None else "")
                     + ("" if mmd.decidable else " — too few permutations to decide"))
        ev["mmd_p_value"] = mmd.p_value
        if mmd.decidable:
            decided.append(mmd.p_value < alpha)
    ct: TwoSampleTest = stage.gap.classifier_test
    if ct.p_value is not None:
        parts.append(f"classifier two-sample test AUC {ct.statistic:.3f}, {p_phrase(ct.p_value)}"
                     + ("" if ct.decidable else " — too few permutations to decide"))
        ev["classifier_test_p_value"], ev["classifier_test_auc"] = ct.p_value, ct.statistic
        if ct.decidable:
            decided.append(ct.p_value < alpha)
    elif (auc := stage.gap.domain_classifier_auc) is not None:
        parts.append(f"domain-classifier AUC {auc:.3f} (no permutation test)")
        ev["domain_classifier_auc"] = auc
    detected = None if not decided else any(decided)
    return {"detected": detected, "parts": parts, "evidence": ev}


def gap_direction(before: float, after: float, rel_change: float, *, auc: bool = False) -> str:
    """Which way a scale-free gap statistic (smaller = closer) moved from ``before`` to
    ``after``: "closer", "further" or "unchanged" (a move within ``rel_change`` × |before|,
    ``AuditThresholds.gap_rel_change``). An AUC (``auc=True``) counts from chance: below
    0.5 is 0.5, no evidence of a gap; an MMD² below 0 (the unbiased estimate's noise) is 0.
    The one rule for the verdict and the report's table."""
    floor = 0.5 if auc else 0.0
    before, after = max(before, floor), max(after, floor)
    margin = rel_change * max(abs(before), 1e-12)
    if after < before - margin:
        return "closer"
    if after > before + margin:
        return "further"
    return "unchanged"


def _scale_free(stage: StageEvidence) -> dict[str, float]:
    """Statistics comparable across feature spaces (smaller = closer): the classifier
    test's AUC (chance 0.5; below 0.5 counts as 0.5 — no evidence) and MMD² (median-
    heuristic bandwidth: invariant to the features' scale)."""
    out: dict[str, float] = {}
    auc = stage.gap.classifier_test.statistic
    if auc is None:
        auc = stage.gap.domain_classifier_auc
    if auc is not None:
        out["classifier AUC"] = max(auc, 0.5)
    mmd2 = stage.gap.mmd.statistic
    if mmd2 is not None:
        out["MMD²"] = max(mmd2, 0.0)
    return out


def gap_verdict(ev: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    """Is there a gap (before), and did adaptation close it (after)? See the module docstring."""
    before, after = ev.before, ev.after
    tb = gap_tests(before, th.alpha)
    if not tb["parts"]:
        return None
    if after is None or not gap_tests(after, th.alpha)["parts"]:
        return _gap_only_verdict(before, tb)
    ta = gap_tests(after, th.alpha)
    evidence = {f"{k}_before": v for k, v in tb["evidence"].items()}
    evidence |= {f"{k}_after": v for k, v in ta["evidence"].items()}
    data = f"data gap in the source model's features (fixed extractor): {'; '.join(tb['parts'])}"
    own = f"in the adapted model's own features: {'; '.join(ta['parts'])}"
    if tb["detected"] is False:
        return Verdict("gap", "ok", "No detectable gap",
                       f"No detectable gap between source and target; adaptation not needed — {data}.",
                       {**evidence, "gap_detected_before": False})
    if tb["detected"] is None:
        return Verdict("gap", "warn", "Gap undecided",
                       f"The tests could not decide whether source and target differ — {data}.", evidence)
    sb, sa = _scale_free(before), _scale_free(after)
    moved = [(k, sb[k], sa[k]) for k in sb if k in sa]
    fell = [k for k, x0, x1 in moved if gap_direction(x0, x1, th.gap_rel_change) == "closer"]
    rose = [k for k, x0, x1 in moved if gap_direction(x0, x1, th.gap_rel_change) == "further"]
    change = "; ".join(f"{k} {statistic(x0)} → {statistic(x1)}" for k, x0, x1 in moved)
    for k, x0, x1 in moved:
        slug = "classifier_auc" if k.startswith("classifier") else "mmd2"
        evidence[f"{slug}_before"], evidence[f"{slug}_after"] = x0, x1
    evidence["gap_detected_before"] = True
    evidence["gap_detected_after"] = ta["detected"]
    if ta["detected"] is False:
        return Verdict("gap", "ok", "Domain gap closed",
                       f"The domains are no longer told apart in the adapted model's features ({change}) — "
                       f"{own}; {data}.", evidence)
    if rose and not fell:
        return Verdict("gap", "warn", "Domain gap grew",
                       f"The domains are easier to tell apart after adaptation ({change}) — {own}; {data}.",
                       evidence)
    if fell and not rose:
        return Verdict("gap", "ok", "Domain gap narrowed, still detectable",
                       f"The domain gap narrowed but the domains are still told apart ({change}) — "
                       f"{own}; {data}.", evidence)
    return Verdict("gap", "warn", "Domain gap not closed",
                   f"The domain gap did not clearly shrink ({change or 'no comparable statistic'}) — "
                   f"{own}; {data}.", evidence)


def _gap_only_verdict(stage: StageEvidence, tests: dict[str, Any]) -> Verdict:
    """One model only (``diagnose gap``): is there a gap?"""
    ev = dict(tests["evidence"])
    frechet = stage.gap.frechet
    fd = frechet.distance
    parts = list(tests["parts"])
    if fd is not None:
        lo, hi, centre = frechet.ci_low, frechet.ci_high, frechet.ci_centre
        ci = ""
        if lo is not None and hi is not None:
            ci = (f" (bias-corrected {statistic(centre)}, 95% CI {statistic(lo)}–{statistic(hi)})"
                  if centre is not None else f" [95% CI {statistic(lo)}–{statistic(hi)}]")
        parts.append(f"Fréchet distance {statistic(fd)}{ci}")
        ev["frechet_distance"] = fd
    extractor = frechet.extractor or "the model's features"
    where = f" in {extractor}"
    if tests["detected"]:
        return Verdict("gap", "warn", "Domains differ",
                       f"Source and target differ measurably{where}: {'; '.join(parts)}.", ev)
    if tests["detected"] is False:
        return Verdict("gap", "ok", "No detectable gap",
                       f"No detectable difference between source and target{where}: {'; '.join(parts)}.", ev)
    return Verdict("gap", "warn", "Gap undecided",
                   f"The tests could not decide whether source and target differ{where}: {'; '.join(parts)}.", ev)
