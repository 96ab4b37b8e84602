"""Audit verdicts on hand-made before/after results."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from diagnostics.audit import (
    Audit,
    AuditThresholds,
    StageResult,
    Verdict,
    build_audit,
    compute_verdicts,
    overall_verdict,
)


def stage(name="m", *, src=None, tgt=None, im=None, snd=None, collapsed=None, largest=None,
          mmd2=None, p=None, fd=None, auc=None, spurious=None, c2st=None, change=None) -> dict:
    """A StageResult dict holding only what is given."""
    d: dict = {"name": name, "metrics": {}, "label_free": {}, "gap": {}, "collapse": {}, "spurious": {}}
    if src is not None:
        d["metrics"]["source_test"] = {"accuracy": src, "macro_f1": src, "n": 100}
    d["metrics"]["target_test"] = None if tgt is None else {"accuracy": tgt, "macro_f1": tgt, "n": 100}
    if im is not None:
        d["label_free"]["im_score"] = im
    if snd is not None:
        d["label_free"]["snd"] = snd
    if collapsed is not None:
        share = largest if largest is not None else (0.97 if collapsed else 0.5)
        d["collapse"] = {"collapsed": collapsed, "reason": "one class" if collapsed else "",
                         "target": {"histogram": {"normal": share, "opacity": 1 - share},
                                    "largest_share": share, "marginal_entropy": 0.1, "log_k": math.log(2)}}
    if mmd2 is not None:
        d["gap"]["mmd"] = {"mmd2": mmd2, "p_value": p}
    if fd is not None:
        d["gap"]["frechet"] = {"distance": fd}
    if auc is not None:
        d["gap"]["domain_classifier"] = {"auc": auc}
    if c2st is not None:  # (auc, p) of the classifier two-sample test
        d["gap"]["classifier_test"] = {"auc": c2st[0], "p_value": c2st[1], "permutations": 200, "decidable": True}
    if change is not None:  # a paired accuracy change (diagnostics.paired.AccuracyChange.to_dict())
        d["metrics"]["target_change"] = change
    if spurious is not None:
        d["spurious"] = spurious
    return d


def by_name(verdicts: list[Verdict]) -> dict[str, Verdict]:
    return {v.name: v for v in verdicts}


# --------------------------------------------------------------------------- negative transfer


def test_target_accuracy_fell_is_negative_transfer_fail():
    vs = by_name(compute_verdicts(stage(src=0.95, tgt=0.80), stage(src=0.94, tgt=0.70)))
    v = vs["negative_transfer"]
    assert v.level == "fail"
    assert v.title == "Negative transfer"
    assert (v.evidence["target_accuracy_before"], v.evidence["target_accuracy_after"]) == (0.80, 0.70)
    assert "paired_change" not in v.evidence  # no per-image predictions: the unpaired rule
    assert overall_verdict(vs.values()).level == "fail"
    assert "Negative transfer" in overall_verdict(vs.values()).summary


def test_sound_run_is_not_negative_transfer_and_says_so_with_numbers():
    v = by_name(compute_verdicts(stage(src=0.960, tgt=0.712), stage(src=0.951, tgt=0.885)))["negative_transfer"]
    assert v.level == "ok"
    assert v.summary == ("Adaptation helped: target accuracy 71.2% → 88.5% on the test split "
                         "(+17.3 points; no paired test); source accuracy 96.0% → 95.1%.")
    assert v.evidence["target_accuracy_after"] == pytest.approx(0.885)


@pytest.mark.parametrize("src_after, level", [(0.95, "ok"), (0.92, "warn"), (0.85, "fail")])
def test_source_accuracy_lost_is_graded(src_after, level):
    """Target up, but forgetting on the source: 3 points → warn, 10 points → fail."""
    v = by_name(compute_verdicts(stage(src=0.96, tgt=0.70), stage(src=src_after, tgt=0.85)))["negative_transfer"]
    assert v.level == level
    assert (v.evidence["source_accuracy_before"], v.evidence["source_accuracy_after"]) == (0.96, src_after)


def test_target_within_tolerance_is_a_warning_not_a_failure():
    v = by_name(compute_verdicts(stage(src=0.9, tgt=0.800), stage(src=0.9, tgt=0.795)))["negative_transfer"]
    assert v.level == "warn" and v.title == "Adaptation did not clearly help"
    strict = AuditThresholds(target_tolerance=0.001)
    v2 = by_name(compute_verdicts(stage(src=0.9, tgt=0.800), stage(src=0.9, tgt=0.795), thresholds=strict))
    assert v2["negative_transfer"].level == "fail"


def test_label_free_collapse_and_forgetting_are_said_but_do_not_decide_alone():
    """No target labels and no estimate with a measured error: "can't tell", with the
    observed collapse and the source accuracy lost named (issue 17: one indicator never
    decides; the estimated-accuracy verdict is tested in tests/test_labelfree_verdict.py)."""
    before = stage(src=0.96, im=0.55, snd=2.0, collapsed=False)
    after = stage(src=0.60, im=0.20, snd=2.1, collapsed=True, largest=0.98)
    vs = by_name(compute_verdicts(before, after))
    v = vs["negative_transfer"]
    assert v.level == "fail" and v.title.startswith("Can't tell")
    assert "target labels unknown" in v.summary
    assert "class collapse appeared after adaptation (98.0% of target predictions in one class)" in v.summary
    assert "source accuracy fell 36.0 points" in v.summary
    assert vs["collapse"].level == "fail" and vs["collapse"].title == "Adaptation caused class collapse"


def test_label_free_scores_alone_decide_nothing():
    # IM fell, nothing else: can't tell (IM rises and falls with confident errors)
    v = by_name(compute_verdicts(stage(src=0.9, im=0.6), stage(src=0.9, im=0.4)))["negative_transfer"]
    assert v.level == "warn" and v.title.startswith("Can't tell")
    assert v.evidence["im_score_before"] == 0.6 and v.evidence["im_score_after"] == 0.4
    v = by_name(compute_verdicts(stage(src=0.9, im=0.4, snd=1.0), stage(src=0.89, im=0.6, snd=1.2)))["negative_transfer"]
    assert v.title.startswith("Can't tell")


# --------------------------------------------------------------------------- gap


def test_gap_narrowed_but_never_no_longer_significant_while_the_classifier_separates():
    # the quickstart's case: MMD after p = 0.084, but the classifier test still separates
    b = stage(mmd2=0.409, p=0.002, fd=7.7, auc=1.0, c2st=(1.0, 0.005))
    a = stage(mmd2=0.003, p=0.084, fd=0.13, auc=0.98, c2st=(0.981, 0.005))
    v = by_name(compute_verdicts(b, a))["gap"]
    assert v.level == "ok" and v.title == "Domain gap narrowed, still detectable"
    assert "no longer significant" not in v.summary
    assert "classifier two-sample test AUC 0.981, p = 0.005" in v.summary
    assert "adapted model's own features" in v.summary and "fixed extractor" in v.summary
    # the Fréchet distance (scale-dependent across two feature spaces) is not a reason
    assert "Fréchet" not in v.summary and v.evidence["gap_detected_after"] is True


def test_gap_closed_only_when_both_tests_stop_rejecting():
    b = stage(mmd2=0.30, p=0.001, auc=0.95, c2st=(0.95, 0.005))
    a = stage(mmd2=0.001, p=0.40, auc=0.55, c2st=(0.53, 0.30))
    v = by_name(compute_verdicts(b, a))["gap"]
    assert v.level == "ok" and v.title == "Domain gap closed"


def test_gap_grew():
    b = stage(mmd2=0.05, p=0.01, auc=0.6, c2st=(0.6, 0.01))
    v = by_name(compute_verdicts(b, stage(mmd2=0.2, p=0.005, auc=0.8, c2st=(0.8, 0.005))))["gap"]
    assert v.level == "warn" and v.title == "Domain gap grew"


def test_no_gap_before_is_no_alarm_and_adaptation_not_needed():
    # two halves of one data set: no test rejects before adaptation; the after-model's own
    # features (per-domain BatchNorm) may even separate the domains — no warning either way
    b = stage(src=0.96, tgt=0.95, mmd2=-0.003, p=0.9, auc=0.57, c2st=(0.45, 0.97))
    a = stage(src=0.97, tgt=0.95, mmd2=0.002, p=0.04, auc=0.78, c2st=(0.78, 0.005),
              change={"verdict": "inconclusive", "delta": 0.0, "ci_low": -0.01, "ci_high": 0.01,
                      "mcnemar_p": 1.0, "b": 1, "c": 1, "n": 300, "level": 0.95})
    vs = by_name(compute_verdicts(b, a))
    assert vs["gap"].level == "ok" and "No detectable gap" in vs["gap"].summary
    assert "adaptation not needed" in vs["gap"].summary
    assert vs["negative_transfer"].level == "ok" and vs["negative_transfer"].title == "Adaptation not needed"
    assert overall_verdict(vs.values()).level == "ok"


def test_auc_below_chance_is_no_evidence():
    """One folder against itself: a cross-validated AUC of 0.1 is no gap, not a large one."""
    v = by_name(compute_verdicts(stage(mmd2=-0.001, p=0.95, auc=0.1, c2st=(0.1, 1.0))))["gap"]
    assert v.level == "ok" and v.title == "No detectable gap"


def test_gap_only_report_has_gap_and_accuracy_verdicts():
    vs = by_name(compute_verdicts(stage(src=0.95, tgt=0.48, mmd2=0.2, p=0.0004, auc=0.99)))
    assert set(vs) == {"gap", "accuracy_gap"}
    assert vs["gap"].level == "warn" and vs["gap"].evidence["mmd_p_value"] == 0.0004
    assert vs["accuracy_gap"].level == "warn"
    assert vs["accuracy_gap"].evidence == {"source_accuracy": 0.95, "target_accuracy": 0.48}
    vs = by_name(compute_verdicts(stage(mmd2=0.001, p=0.4, auc=0.52)))
    assert vs["gap"].level == "ok"


# --------------------------------------------------------------------------- paired changes, chance


def _change(verdict, delta, lo, hi, p, b, c, n=360):
    return {"verdict": verdict, "delta": delta, "ci_low": lo, "ci_high": hi, "mcnemar_p": p,
            "b": b, "c": c, "n": n, "level": 0.95}


def test_accuracy_change_is_judged_by_the_paired_test():
    gap = dict(mmd2=0.3, p=0.001, c2st=(0.9, 0.005))
    # +0.7 points on 180 images: the CI crosses 0 -> inconclusive, not "helped"
    small = _change("inconclusive", 0.007, -0.02, 0.03, 0.75, 4, 5, n=180)
    v = by_name(compute_verdicts(stage(src=0.9, tgt=0.60, **gap),
                                 stage(src=0.9, tgt=0.607, change=small, **gap)))["negative_transfer"]
    assert v.level == "warn" and v.title == "Adaptation did not clearly help"
    assert (v.evidence["paired_change"], v.evidence["paired_n"]) == ("inconclusive", 180)
    assert (v.evidence["paired_ci_low"], v.evidence["paired_ci_high"]) == (-0.02, 0.03)
    assert "+0.7 points (95% CI -2.0 to +3.0; McNemar p = 0.750" in v.summary  # golden: how a change reads
    helped = _change("helped", 0.30, 0.25, 0.35, 1e-9, 3, 111)
    v = by_name(compute_verdicts(stage(src=0.9, tgt=0.6, **gap), stage(src=0.9, tgt=0.9, change=helped, **gap)))
    assert v["negative_transfer"].level == "ok" and v["negative_transfer"].evidence["paired_change"] == "helped"
    hurt = _change("hurt", -0.08, -0.12, -0.04, 1e-4, 35, 6)
    v = by_name(compute_verdicts(stage(src=0.9, tgt=0.96, **gap), stage(src=0.9, tgt=0.89, change=hurt, **gap)))
    assert v["negative_transfer"].level == "fail" and v["negative_transfer"].title == "Negative transfer"


def test_near_chance_model_is_still_unusable_even_if_it_improved():
    def ten_class(acc, change=None):
        d = stage(src=0.95, tgt=acc, change=change)
        d["collapse"] = {"collapsed": False, "verdict": "no_shift", "level": "ok",
                         "true_target_mix": {str(k): 0.1 for k in range(10)},
                         "target": {"histogram": {str(k): 0.1 for k in range(10)}}}
        return d

    helped = _change("helped", 0.08, 0.04, 0.12, 1e-4, 2, 30)
    vs = by_name(compute_verdicts(ten_class(0.10), ten_class(0.18, helped)))
    assert vs["negative_transfer"].title == "Adaptation helped"
    assert vs["usability"].level == "warn" and vs["usability"].title == "Still unusable on the target"
    assert vs["usability"].evidence["chance_accuracy"] == pytest.approx(0.1)
    assert vs["usability"].evidence["chance_corrected"] == pytest.approx((0.18 - 0.1) / 0.9)
    assert "usability" not in by_name(compute_verdicts(ten_class(0.10), ten_class(0.90, helped)))


# --------------------------------------------------------------------------- collapse, spurious


def test_collapse_before_and_after():
    assert by_name(compute_verdicts(stage(collapsed=True), stage(collapsed=False)))["collapse"].level == "ok"
    assert by_name(compute_verdicts(stage(collapsed=True), stage(collapsed=True)))["collapse"].level == "fail"
    v = by_name(compute_verdicts(stage(collapsed=True, largest=0.97)))["collapse"]
    assert v.level == "fail" and v.evidence["collapse_verdict"] == "collapsed"
    assert (v.evidence["largest_class"], v.evidence["largest_share"]) == ("normal", 0.97)


def test_collapse_shows_the_true_mix_and_never_claims_a_label_shift_it_could_not_check():
    # the quickstart's site B: balanced truth, 94% of predictions on 'opacity'
    d = stage(collapsed=True, largest=0.06)
    d["collapse"].update(verdict="collapsed", level="fail", over_predicted=["'opacity' (94%)"],
                         true_target_mix={"normal": 0.5, "opacity": 0.5},
                         bbse_target_mix={"normal": 0.06, "opacity": 0.94})
    v = by_name(compute_verdicts(d))["collapse"]
    assert v.level == "fail" and "true target mix 'normal' 50.0%, 'opacity' 50.0%" in v.summary
    assert "label shift" not in v.summary
    u = stage(collapsed=False, largest=0.3)
    u["collapse"].update(verdict="covariate_shift", level="warn", over_predicted=["'normal' (70%)"])
    v = by_name(compute_verdicts(u))["collapse"]
    assert v.level == "warn" and "covariate shift: the label mix cannot be estimated" in v.summary.lower()


def _spur(share, level, flagged):
    return {"source": {"verdict": {"level": level, "flagged": flagged, "region": "top-left corner",
                                   "share": share, "flips": 0.4 if flagged else 0.01, "reason": "r"}}}


def test_spurious_reliance_removed_by_adaptation():
    v = by_name(compute_verdicts(stage(spurious=_spur(0.6, "fail", True)), stage(spurious=_spur(0.1, "ok", False))))
    v = v["spurious"]
    assert v.level == "ok" and v.title == "Spurious feature removed"
    assert ("reliance on top-left corner fell on source (attribution 60.0% → 10.0%; occluding it "
            "changes 40.0% → 1.0% of the predictions)") in v.summary


def test_spurious_trend_compares_one_region_not_two_hot_boxes():
    # After adaptation the hot box moved; the trend must be the flagged region's, measured
    # on the after-model too (reliance_change), not the share of a different box.
    before = {"source": {"verdict": {"level": "fail", "flagged": True, "region": [54, 5, 62, 13],
                                     "share": 0.05, "flips": 0.14, "reason": "r"}}}
    after_sec = {"verdict": {"level": "ok", "flagged": False, "region": [28, 33, 36, 41],
                             "share": 0.047, "flips": 0.06, "reason": "r"}}
    v = by_name(compute_verdicts(stage(spurious=before), stage(spurious={"source": after_sec})))["spurious"]
    assert "[28, 33, 36, 41]" not in v.summary and "fell on source" not in v.summary
    after_sec["reliance_change"] = {"region": [54, 5, 62, 13], "share_before": 0.05, "share_after": 0.012,
                                    "flips_before": 0.14, "flips_after": 0.02}
    v = by_name(compute_verdicts(stage(spurious=before), stage(spurious={"source": after_sec})))["spurious"]
    assert v.title == "Spurious feature removed"
    assert ("reliance on [54, 5, 62, 13] fell on source (attribution 5.0% → 1.2%; occluding it changes "
            "14.0% → 2.0% of the predictions)") in v.summary


def test_spurious_reliance_kept_after_adaptation():
    v = by_name(compute_verdicts(stage(spurious=_spur(0.6, "fail", True)), stage(spurious=_spur(0.5, "fail", True))))
    v = v["spurious"]
    assert v.level == "fail" and v.title == "Spurious feature"
    assert (v.evidence["source_share_before"], v.evidence["source_share_after"]) == (0.6, 0.5)
    assert v.evidence["source_flips"] == 0.4
    # without an explicit level a flagged region still warns
    only = by_name(compute_verdicts(stage(spurious={"target": {"verdict": {"flagged": True, "share": 0.4}}})))
    assert only["spurious"].level == "warn"


# --------------------------------------------------------------------------- contract


def test_missing_sections_give_no_verdict_and_no_error():
    assert compute_verdicts({"name": "empty"}) == []
    assert compute_verdicts({"name": "b", "metrics": None, "gap": None}, {"name": "a", "collapse": None}) == []
    assert overall_verdict([]).level == "ok"


def test_overall_banner_is_the_worst_level():
    vs = [Verdict("a", "ok", "A fine", "fine."), Verdict("b", "warn", "Gap grew", "the gap grew."),
          Verdict("c", "ok", "C fine", "fine.")]
    o = overall_verdict(vs)
    assert o.level == "warn" and "Gap grew" in o.summary and "the gap grew." in o.summary
    vs.append(Verdict("d", "fail", "Negative transfer", "it got worse."))
    assert overall_verdict(vs).level == "fail"
    with pytest.raises(ValueError):
        Verdict("x", "bad", "t", "s")


def test_audit_json_round_trip_with_numpy_and_nan():
    before = stage("source-only", src=0.9, tgt=0.6, mmd2=0.3, p=0.01)
    before["metrics"]["source_test"]["confusion"] = np.array([[40, 10], [5, 45]])
    before["label_free"]["im_score"] = float("nan")  # not finite -> null in JSON
    audit = build_audit(before, stage("adapted", src=0.9, tgt=0.8, mmd2=0.1, p=0.2), classes=["a", "b"],
                        run={"name": "r", "seed": 3, "recipe_text": "x: 1"})
    text = audit.to_json()
    data = json.loads(text)  # strict JSON: allow_nan=False would have raised
    assert data["before"]["metrics"]["source_test"]["confusion"] == [[40, 10], [5, 45]]
    assert data["before"]["label_free"]["im_score"] is None
    assert data["run"]["versions"]  # filled in from the installed packages
    assert data["thresholds"]["source_drop_fail"] == AuditThresholds().source_drop_fail
    again = Audit.from_dict(data)
    assert again.to_dict() == data
    assert [v.level for v in again.verdicts] == [v.level for v in audit.verdicts]
    assert isinstance(again.before, StageResult) and again.after.name == "adapted"


def test_spurious_region_still_relied_on_after_adaptation_is_a_warning():
    # Nothing is flagged after adaptation (attention fell below the share criterion),
    # but hiding the region flagged before still flips 11% of the predictions against 2%
    # for same-size patches: "removed" would overclaim.
    before = {"source": {"verdict": {"level": "fail", "flagged": True, "region": [54, 5, 62, 13],
                                     "share": 0.05, "flips": 0.14, "reason": "r"}}}

    def after(flips_after):
        return {"source": {"verdict": {"level": "ok", "flagged": False, "region": [28, 33, 36, 41],
                                       "share": 0.047, "flips": 0.06, "reason": "r"},
                           "occlusion": {"control_flipped_share": 0.023},
                           "reliance_change": {"region": [54, 5, 62, 13], "share_before": 0.033,
                                               "share_after": 0.027, "flips_before": 0.14,
                                               "flips_after": flips_after}}}

    v = by_name(compute_verdicts(stage(spurious=before), stage(spurious=after(0.109))))["spurious"]
    assert v.level == "warn" and v.title == "Spurious feature reduced, still relied on"
    assert "hiding [54, 5, 62, 13] still changes 10.9% of the predictions (same-size patches elsewhere: 2.3%)" \
        in v.summary
    v = by_name(compute_verdicts(stage(spurious=before), stage(spurious=after(0.03))))["spurious"]
    assert v.level == "ok" and v.title == "Spurious feature removed"


# --------------------------------------------------------------------------- the register of verdicts


def test_coverage_verdicts_come_first_and_survive_the_json():
    """What the audit could not see is a verdict like any other (source-free, a target
    whose labels leave classes out), judged from the audit's Coverage, first in line."""
    from diagnostics.audit import Coverage

    cov = Coverage(source_images=False, target_missing_classes=("eel",))
    a = build_audit(stage(tgt=0.6, collapsed=False), stage(tgt=0.7, collapsed=False), coverage=cov)
    assert [v.name for v in a.verdicts][:2] == ["partial_target_classes", "source_free"]
    assert a.verdicts[0].evidence == {"missing_classes": ["eel"]} and a.verdicts[1].level == "warn"
    assert a.overall.level == "warn"
    back = Audit.from_dict(json.loads(a.to_json()))
    assert back.coverage == cov and back.overall == a.overall
    # an audit that saw everything writes no coverage (audit.json as before)
    assert "coverage" not in build_audit(stage(src=0.9)).to_dict()


def test_the_register_holds_every_verdict():
    """One place per verdict: a Verdict is made only by a policy module of the audit (and
    the banner), and every name those modules give is a registered policy's."""
    import ast
    from pathlib import Path

    from diagnostics.audit import POLICIES

    names = [p.name for p in POLICIES]
    assert len(names) == len(set(names))
    root = Path(__file__).resolve().parents[1]
    made: dict[str, set] = {}
    for folder in ("adapt", "diagnostics", "domaingap"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                called = getattr(node, "func", None)
                if isinstance(node, ast.Call) and getattr(called, "id", getattr(called, "attr", None)) == "Verdict":
                    arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "name"), None)
                    made.setdefault(str(path.relative_to(root)), set()).add(getattr(arg, "value", None))
    banner = "diagnostics/audit/verdict.py"
    assert made.pop(banner) == {"overall"}
    assert made and all(p.startswith("diagnostics/audit/") and p.endswith("_policy.py") for p in made), sorted(made)
    assert set().union(*made.values()) == set(names)


def test_each_policy_judges_typed_evidence_and_names_its_verdict():
    """Every registered policy is a pure function of the typed evidence: handed evidence
    rich enough for it, it gives a verdict under its own name."""
    from diagnostics.audit import POLICIES, AuditEvidence, Coverage, StageResult

    rich = stage(src=0.9, tgt=0.1, mmd2=0.2, p=0.001, collapsed=True, spurious=_spur(0.6, "fail", True))
    rich["collapse"]["target"]["histogram"] = {str(i): 0.1 for i in range(10)}
    sources = {"names": ["A", "B"], "mmd2": {"A": 0.1, "B": 0.2}, "weights": {"A": 0.6, "B": 0.4}}
    full = AuditEvidence.of(StageResult.from_dict(rich), StageResult.from_dict(rich), sources,
                            Coverage(source_images=False, target_missing_classes=("eel",)))
    one = AuditEvidence.of(StageResult.from_dict(rich))
    for policy in POLICIES:
        got = policy.judge(full, AuditThresholds()) or policy.judge(one, AuditThresholds())
        assert got is not None and got.name == policy.name, policy.name
