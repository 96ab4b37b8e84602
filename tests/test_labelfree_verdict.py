"""The label-free verdict (issue 17): "helped" / "did not help" / "negative transfer" /
"can't tell" from the estimated accuracy change and its measured band, never from one
indicator; and, on models whose true accuracies are known by construction (hidden from
the estimators), never "negative transfer" for a true gain ≥ 10 points nor "helped" for a
true loss ≥ 3 points."""

from __future__ import annotations

import numpy as np
import pytest

from diagnostics.audit import StageResult, compute_verdicts
from diagnostics.audit.labelfree_policy import LabelFreeEvidence, labelfree_outcome
from diagnostics.labelfree_estimates import accuracy_estimates, estimate_text


def _ev(d1, d2=None, b1=0.08, b2=0.10, share_before=0.2, share_after=0.2):
    before = {"p": 0.5, **({"s": 0.5} if d2 is not None else {})}
    after = {"p": 0.5 + d1, **({"s": 0.5 + d2} if d2 is not None else {})}
    return LabelFreeEvidence(before, after, {"p": b1, "s": b2}, share_before, share_after)


@pytest.mark.parametrize("d1, d2, shares, expected", [
    (+0.20, +0.10, (0.2, 0.2), "helped"),
    (+0.05, +0.10, (0.2, 0.2), "can't tell"),          # the interval crosses 0
    (+0.20, -0.05, (0.2, 0.2), "can't tell"),          # the second estimator disagrees
    (+0.20, +0.10, (0.2, 0.9), "can't tell"),          # collapse appeared: a gain is not believed
    (-0.20, +0.05, (0.2, 0.2), "did not help"),        # a loss by one indicator only
    (-0.20, -0.20, (0.2, 0.2), "negative transfer"),   # two estimators agree on a loss
    (-0.20, None, (0.2, 0.9), "negative transfer"),    # estimated loss + collapse observed
    (-0.20, None, (0.2, 0.2), "did not help"),
])
def test_outcome_needs_the_interval_and_an_independent_signal(d1, d2, shares, expected):
    out = labelfree_outcome(_ev(d1, d2, share_before=shares[0], share_after=shares[1]), "p",
                            "s" if d2 is not None else None)
    assert out.outcome == expected
    assert out.change == pytest.approx(d1) and out.band == 0.08


def test_no_measured_band_means_cant_tell():
    ev = _ev(-0.4, -0.4, b1=None)
    assert labelfree_outcome(ev, "p", "s").outcome == "can't tell"


# ----------------------------------------------------------------- truth known by construction

K, N = 10, 600
CAL = {  # a calibration document: what the study writes (the bands here are the test's own)
    "estimators": {n: {"accuracy_abs_error_mean": 0.05, "accuracy_abs_error_p90": 0.08,
                       "change_abs_error_mean": 0.04, "change_abs_error_p90": 0.07, "n_models": 30, "n_changes": 20}
                   for n in ("atc", "doc", "cot", "agreement", "avg_conf", "atc_maxprob")},
    "default_estimator": "agreement", "corroborating_estimator": "atc", "cases": 6, "date": "test",
    "command": "python benchmarks/labelfree_study.py (test)",
}


def _model(labels, acc, rng):
    """Probabilities of a model right on a random ``acc`` share of ``labels`` [n], wrong
    (another random class) elsewhere; confident when right, less when wrong."""
    n = len(labels)
    right = np.zeros(n, bool)
    right[rng.choice(n, int(round(acc * n)), replace=False)] = True
    pred = np.where(right, labels, (labels + rng.integers(1, K, n)) % K)
    conf = np.where(right, rng.uniform(0.7, 1.0, n), rng.uniform(0.3, 0.8, n))
    p = np.repeat(((1 - conf) / (K - 1))[:, None], K, axis=1)
    p[np.arange(n), pred] = conf
    return p


def _case(acc_before, acc_after, seed):
    rng = np.random.default_rng(seed)
    yt, ys = rng.integers(0, K, N), rng.integers(0, K, N)
    accs = {"source-only": acc_before, "adapted": acc_after, "other1": rng.uniform(0.3, 0.8),
            "other2": rng.uniform(0.3, 0.8)}
    tp = {n: _model(yt, a, rng) for n, a in accs.items()}
    sp = {n: _model(ys, 0.95, rng) for n in accs}
    est = {n: accuracy_estimates(tp[n], sp[n], ys, [tp[m].argmax(1) for m in accs if m != n], CAL)
           for n in accs}
    stages = []
    for n in ("source-only", "adapted"):
        share = float(np.bincount(tp[n].argmax(1), minlength=K).max() / N)
        stages.append(StageResult.from_dict({
            "name": n, "metrics": {"source_test": {"accuracy": 0.95}, "target_test": None},
            "label_free": {"im_score": 0.5, "accuracy": est[n]},
            "collapse": {"collapsed": False, "target": {"largest_share": share}}}))
    v = {x.name: x for x in compute_verdicts(stages[0], stages[1])}["negative_transfer"]
    return v, est


@pytest.mark.parametrize("before, after", [(0.2, 0.6), (0.3, 0.45), (0.6, 0.3), (0.7, 0.66), (0.5, 0.5)])
def test_verdict_never_contradicts_a_known_change(before, after):
    for seed in range(4):
        v, est = _case(before, after, seed)
        outcome = v.evidence["labelfree_outcome"]
        if after - before >= 0.10:
            assert outcome != "negative transfer", v.summary
        if after - before <= -0.03:
            assert outcome != "helped", v.summary
        assert "target labels unknown" in v.summary and "±" in v.summary
        assert estimate_text(est["adapted"]).startswith("estimated ")


def test_estimator_without_measured_error_is_not_shown():
    rng = np.random.default_rng(0)
    p = _model(rng.integers(0, K, 50), 0.5, rng)
    section = accuracy_estimates(p, calibration={"estimators": {}})
    assert section["estimates"] == {} and estimate_text(section) is None


def _study():
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("labelfree_study", root / "benchmarks" / "labelfree_study.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["labelfree_study"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_agreement_error_is_measured_per_number_of_models_by_hand():
    # 4 target images, all of class 0: source-only right on 2, r1 on 3, r2 on 4
    study = _study()
    onehot = lambda preds: np.eye(2)[preds]  # noqa: E731
    y = np.zeros(4, dtype=int)
    models = {n: {"target_probs": onehot(np.array(p)), "hidden_target_labels": y}
              for n, p in (("source-only", [0, 0, 1, 1]), ("r1", [0, 0, 0, 1]), ("r2", [0, 0, 0, 0]))}
    errs = study.peer_count_errors(models)["agreement"]
    # k = 2: {S, r1} agree on 3/4 → both 0.75; {S, r2} on 2/4 → both 0.5
    assert sorted(errs[2]["accuracy"]) == pytest.approx(sorted([0.25, 0.0, 0.0, 0.5]))
    assert sorted(errs[2]["change"]) == pytest.approx([0.25, 0.5])  # estimated change 0 both times
    # k = 3: medians S (0.75, 0.5) → 0.625, r1 (0.75, 0.75) → 0.75, r2 (0.5, 0.75) → 0.625
    assert sorted(errs[3]["accuracy"]) == pytest.approx(sorted([0.125, 0.0, 0.375]))
    assert sorted(errs[3]["change"]) == pytest.approx(sorted([0.125, 0.5]))
    pooled = study.peer_count_summary([{"agreement": errs}])["agreement"]
    assert pooled["3"]["change_abs_error_mean"] == pytest.approx(0.3125) and pooled["2"]["n_changes"] == 2


def test_the_band_is_the_one_measured_for_the_models_compared():
    # the audit of a recipe with 3 models shows agreement's error measured with 3 models
    # (was: the error measured with all 7 of the study's models, too narrow for 3)
    from adapt.accuracy_estimation.calibration import measured_error

    entry = lambda p90: {"accuracy_abs_error_mean": p90 / 2, "accuracy_abs_error_p90": p90,  # noqa: E731
                         "change_abs_error_mean": p90 / 2, "change_abs_error_p90": p90, "n_models": 10, "n_changes": 5}
    cal = {"estimators": {"agreement": {**entry(0.09), "by_models": {"3": entry(0.25), "7": entry(0.09)}}},
           "default_estimator": "agreement"}
    assert measured_error("agreement", cal, n_models=3).change_p90 == 0.25
    assert measured_error("agreement", cal, n_models=5).change_p90 == 0.25  # 5 was not measured: 3's error
    assert measured_error("agreement", cal, n_models=9).change_p90 == 0.09
    assert measured_error("agreement", cal, n_models=2) is None  # fewer than ever measured: not shown
    assert measured_error("agreement", cal).change_p90 == 0.09
    rng = np.random.default_rng(0)
    p = [_model(rng.integers(0, K, 60), acc, rng) for acc in (0.5, 0.7, 0.8)]
    section = accuracy_estimates(p[0], other_target_preds=[p[1].argmax(1), p[2].argmax(1)], calibration=cal)
    assert section["estimates"]["agreement"]["band"] == 0.25
    assert accuracy_estimates(p[0], other_target_preds=[p[1].argmax(1)], calibration=cal)["estimates"] == {}


def test_the_default_estimator_is_the_most_accurate_for_the_models_compared():
    # agreement is the most accurate with 7 models and COT with 3 (as measured): the audit
    # of 3 models reads COT first and agreement corroborates; of 7, the other way round
    from adapt.accuracy_estimation.calibration import most_accurate

    entry = lambda m: {"accuracy_abs_error_mean": m, "accuracy_abs_error_p90": 2 * m,  # noqa: E731
                       "change_abs_error_mean": m, "change_abs_error_p90": 2 * m, "n_models": 10, "n_changes": 5}
    cal = {"estimators": {"agreement": {**entry(0.04), "by_models": {"3": entry(0.12), "7": entry(0.04)}},
                          "cot": entry(0.08), "atc": entry(0.2)},
           "default_estimator": "agreement", "corroborating_estimator": "cot"}
    rng = np.random.default_rng(1)
    labels = rng.integers(0, K, 80)
    p = [_model(labels, acc, rng) for acc in (0.5, 0.6, 0.7, 0.8, 0.9, 0.6, 0.7)]
    src = _model(labels, 0.95, rng)
    three = accuracy_estimates(p[0], src, labels, [q.argmax(1) for q in p[1:3]], calibration=cal)
    seven = accuracy_estimates(p[0], src, labels, [q.argmax(1) for q in p[1:]], calibration=cal)
    assert (three["default"], three["corroborating"]) == ("cot", "agreement")
    assert (seven["default"], seven["corroborating"]) == ("agreement", "cot")
    assert most_accurate({"agreement": 0.1, "agreement_mean": 0.11, "doc": 0.3}) == ("agreement", "doc")
    assert most_accurate({"x": None}) == (None, None)


def test_under_a_label_shift_the_bound_decides_and_the_blind_estimates_cannot_claim_a_gain():
    from diagnostics.audit.labelfree_policy import LabelFreeEvidence, labelfree_outcome

    def ev(d1, bound, after_share=0.3):
        return LabelFreeEvidence({"agreement": 0.8, "cot": 0.8}, {"agreement": 0.8 + d1, "cot": 0.8 + d1},
                                 {"agreement": 0.05, "cot": 0.05}, 0.3, after_share, label_shift_bound=bound)

    # the estimates alone would say "helped" (+20 ± 5, both up): under a label shift they
    # are blind, and the bound crosses 0 — can't tell
    assert labelfree_outcome(ev(0.20, None), "agreement", "cot").outcome == "helped"
    assert labelfree_outcome(ev(0.20, (-0.1, 0.02)), "agreement", "cot").outcome == "can't tell"
    # the bound below 0: a loss; corroborated by the estimate's sign → negative transfer
    assert labelfree_outcome(ev(-0.01, (-0.15, -0.04)), "agreement", "cot").outcome == "negative transfer"
    out = labelfree_outcome(ev(0.02, (-0.15, -0.04)), "agreement", "cot")
    assert out.outcome == "did not help" and any("pure label shift" in r for r in out.reasons)
