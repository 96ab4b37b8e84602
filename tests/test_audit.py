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
          mmd2=None, p=None, fd=None, auc=None, spurious=None) -> dict:
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
    assert "80.0% → 70.0% (-10.0 points)" in v.summary
    assert overall_verdict(vs.values()).level == "fail"
    assert "Negative transfer" in overall_verdict(vs.values()).summary


def test_sound_run_is_not_negative_transfer_and_says_so_with_numbers():
    v = by_name(compute_verdicts(stage(src=0.960, tgt=0.712), stage(src=0.951, tgt=0.885)))["negative_transfer"]
    assert v.level == "ok"
    assert v.summary == ("Adaptation helped: target accuracy 71.2% → 88.5% (+17.3 points); "
                         "source accuracy 96.0% → 95.1%.")
    assert v.evidence["target_accuracy_after"] == pytest.approx(0.885)


@pytest.mark.parametrize("src_after, level", [(0.95, "ok"), (0.92, "warn"), (0.85, "fail")])
def test_source_accuracy_lost_is_graded(src_after, level):
    """Target up, but forgetting on the source: 3 points → warn, 10 points → fail."""
    v = by_name(compute_verdicts(stage(src=0.96, tgt=0.70), stage(src=src_after, tgt=0.85)))["negative_transfer"]
    assert v.level == level
    if level != "ok":
        assert f"source accuracy fell {100 * (0.96 - src_after):.1f} points" in v.summary


def test_target_within_tolerance_is_a_warning_not_a_failure():
    v = by_name(compute_verdicts(stage(src=0.9, tgt=0.800), stage(src=0.9, tgt=0.795)))["negative_transfer"]
    assert v.level == "warn" and v.title == "Adaptation did not help"
    strict = AuditThresholds(target_tolerance=0.001)
    v2 = by_name(compute_verdicts(stage(src=0.9, tgt=0.800), stage(src=0.9, tgt=0.795), thresholds=strict))
    assert v2["negative_transfer"].level == "fail"


def test_label_free_negative_transfer_when_collapse_appears_after():
    """No target labels: collapse after adaptation (and IM falling) flags negative transfer."""
    before = stage(src=0.96, im=0.55, snd=2.0, collapsed=False)
    after = stage(src=0.60, im=0.20, snd=2.1, collapsed=True, largest=0.98)
    vs = by_name(compute_verdicts(before, after))
    v = vs["negative_transfer"]
    assert v.level == "fail"
    assert "target labels unknown" in v.summary
    assert "class collapse appeared after adaptation (98.0% of target predictions in one class)" in v.summary
    assert "IM score fell (0.55 → 0.2)" in v.summary
    assert "source accuracy fell 36.0 points" in v.summary
    assert vs["collapse"].level == "fail" and vs["collapse"].title == "Adaptation caused class collapse"


def test_label_free_signals_alone():
    # IM fell, nothing else: a warning
    v = by_name(compute_verdicts(stage(src=0.9, im=0.6), stage(src=0.9, im=0.4)))["negative_transfer"]
    assert v.level == "warn" and "IM score fell" in v.summary
    # IM and SND up, source held: no sign of negative transfer
    v = by_name(compute_verdicts(stage(src=0.9, im=0.4, snd=1.0), stage(src=0.89, im=0.6, snd=1.2)))["negative_transfer"]
    assert v.level == "ok"
    assert v.summary.startswith("No sign of negative transfer (target labels unknown): IM score 0.4 → 0.6")


# --------------------------------------------------------------------------- gap


def test_gap_shrank_when_most_statistics_fell():
    b = stage(mmd2=0.30, p=0.001, fd=60.0, auc=0.95)
    a = stage(mmd2=0.05, p=0.30, fd=20.0, auc=0.97)  # AUC rose, the other two fell
    v = by_name(compute_verdicts(b, a))["gap"]
    assert v.level == "ok" and v.title == "Domain gap shrank"
    assert "2 of 3 statistics fell" in v.summary and "MMD² 0.3 → 0.05" in v.summary
    assert "p = 0.300 (no longer significant)" in v.summary


def test_gap_grew():
    v = by_name(compute_verdicts(stage(mmd2=0.05, fd=10.0, auc=0.6), stage(mmd2=0.2, fd=30.0, auc=0.8)))["gap"]
    assert v.level == "warn" and v.title == "Domain gap grew"
    assert "3 of 3 statistics rose" in v.summary


def test_auc_counts_as_distance_from_chance():
    """AUC 0.1 is as separable as 0.9: moving 0.1 → 0.5 closes the gap."""
    v = by_name(compute_verdicts(stage(auc=0.1), stage(auc=0.5)))["gap"]
    assert v.title == "Domain gap shrank"


def test_gap_only_report_has_gap_and_accuracy_verdicts():
    vs = by_name(compute_verdicts(stage(src=0.95, tgt=0.48, mmd2=0.2, p=0.0004, auc=0.99)))
    assert set(vs) == {"gap", "accuracy_gap"}
    assert vs["gap"].level == "warn" and "MMD² 0.2 (p < 0.001)" in vs["gap"].summary
    assert vs["accuracy_gap"].level == "warn" and "source 95.0% → target 48.0% (-47.0 points)" in vs["accuracy_gap"].summary
    vs = by_name(compute_verdicts(stage(mmd2=0.001, p=0.4, auc=0.52)))
    assert vs["gap"].level == "ok"


# --------------------------------------------------------------------------- collapse, spurious


def test_collapse_before_and_after():
    assert by_name(compute_verdicts(stage(collapsed=True), stage(collapsed=False)))["collapse"].level == "ok"
    assert by_name(compute_verdicts(stage(collapsed=True), stage(collapsed=True)))["collapse"].level == "fail"
    v = by_name(compute_verdicts(stage(collapsed=True, largest=0.97)))["collapse"]
    assert v.level == "fail" and "the largest class 'normal' holds 97.0% of target predictions" in v.summary


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
    assert v.level == "fail"
    assert "The adapted model relies on a spurious region" in v.summary
    assert "occluding it changes 40.0% of the predictions" in v.summary
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
