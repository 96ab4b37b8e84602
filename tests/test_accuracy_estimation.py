"""Label-free accuracy estimators: known answers worked by hand and invariants.

ATC puts exactly the source accuracy's share of source scores above its threshold and is
then a share of target scores; DoC is the paper's formula; agreement = 1 − disagreement;
COT is 0 when one-hot predictions carry the source label mix and 1 − 1/K for uniform
predictions. The shipped calibration is the study's measured output, and its default is
the estimator it measured most accurate."""

from __future__ import annotations

import numpy as np
import pytest

from adapt.accuracy_estimation import (
    agreement_estimate, agreement_rate, atc_estimate, atc_threshold, confidence_scores, cot_error,
    disagreement_rate, estimate_all, estimate_atc, estimate_doc,
)
from adapt.accuracy_estimation.calibration import default_estimator, load_calibration, measured_error


def _probs(maxp: np.ndarray, pred: np.ndarray, k: int = 3) -> np.ndarray:
    """Rows with probability ``maxp`` on ``pred`` and the rest spread evenly."""
    p = np.repeat(((1 - maxp) / (k - 1))[:, None], k, axis=1)
    p[np.arange(len(pred)), pred] = maxp
    return p


def test_atc_threshold_keeps_the_source_accuracy_share_above_it():
    scores = np.array([0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5])
    correct = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0, 0], bool)  # 6 of 10 right
    t = atc_threshold(scores, correct)
    assert t == 0.65 and np.mean(scores > t) == 0.6
    assert atc_estimate(np.array([0.99, 0.66, 0.64, 0.1]), t) == 0.5  # 0.99 and 0.66 lie above 0.65
    assert atc_threshold(scores, np.ones(10, bool)) == -np.inf  # all right: every target image counts


def test_atc_on_the_source_itself_returns_the_source_accuracy():
    rng = np.random.default_rng(0)
    maxp = rng.uniform(0.4, 1.0, 200)
    labels = rng.integers(0, 3, 200)
    pred = np.where(rng.random(200) < 0.7, labels, (labels + 1) % 3)
    p = _probs(maxp, pred)
    acc = np.mean(pred == labels)
    for score in ("max_softmax", "neg_entropy"):
        assert estimate_atc(p, labels, p, score) == pytest.approx(acc, abs=1 / 200)
    # neg-entropy ranks these rows as max-softmax does (entropy falls as max p rises here)
    assert np.all(np.diff(confidence_scores(p[np.argsort(maxp)], "neg_entropy")) >= -1e-12)


def test_doc_is_source_accuracy_minus_the_confidence_drop():
    ps = _probs(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0, 1, 2, 0]))
    ys = np.array([0, 1, 0, 0])  # 3 of 4 right
    pt = _probs(np.array([0.5, 0.6]), np.array([1, 1]))
    # 0.75 − (mean(0.9, 0.8, 0.7, 0.6) − mean(0.5, 0.6)) = 0.75 − (0.75 − 0.55) = 0.55
    assert estimate_doc(ps, ys, pt) == pytest.approx(0.55)
    assert estimate_doc(ps, ys, ps) == pytest.approx(0.75)  # no shift: the source accuracy


def test_agreement_is_one_minus_disagreement():
    a, b, c = np.array([0, 1, 2, 2]), np.array([0, 1, 1, 0]), np.array([0, 0, 2, 2])
    assert agreement_rate(a, b) == 0.5 and disagreement_rate(a, b) == 0.5
    assert agreement_rate(a, a) == 1.0
    assert agreement_estimate(a, [b, c]) == pytest.approx((0.5 + 0.75) / 2)  # median of two = mean
    broken = np.array([1, 0, 0, 1])  # agrees with a nowhere
    assert agreement_estimate(a, [c, c, b, broken, c]) == 0.75  # the median ignores one broken peer
    assert agreement_estimate(a, [c, c, b, broken, c], "mean") == pytest.approx((3 * 0.75 + 0.5 + 0) / 5)
    with pytest.raises(ValueError):
        agreement_estimate(a, [])


def test_cot_is_zero_when_predictions_carry_the_source_label_mix():
    ys = np.array([0, 0, 1, 2, 2, 2])
    pt = np.eye(3)[np.array([2, 0, 2, 1, 2, 0])]  # one-hot, same mix, another order
    assert cot_error(pt, ys) == pytest.approx(0.0)
    assert cot_error(np.full((6, 3), 1 / 3), ys) == pytest.approx(2 / 3)  # uniform: 1 − 1/K
    # all predicted class 0, labels half 0 half 1: half the mass must move at cost 1
    assert cot_error(np.eye(2)[[0, 0]], np.array([0, 1])) == pytest.approx(0.5)


def test_cot_equals_the_transport_between_every_prediction_and_every_source_label():
    """Known answer: the W1 problem as the paper writes it, n_t × n_s (one point per source
    label), solved by POT — COT solves it with the label side merged into its K vertices."""
    import ot

    rng = np.random.default_rng(5)
    for k, n, m in ((2, 300, 250), (5, 120, 400), (10, 60, 90), (4, 200, 150)):
        p = rng.dirichlet(np.full(k, 0.3), n)
        y = rng.integers(0, k - 1 if k == 4 else k, m)  # k = 4: one class absent from the source labels
        full = ot.emd2(np.full(n, 1 / n), np.full(m, 1 / m), 1.0 - p[:, y])
        assert cot_error(p, y) == pytest.approx(full, abs=1e-12), (k, n, m)


def test_estimate_all_uses_only_what_it_is_given():
    p = np.eye(3)[[0, 1, 2, 0]] * 0.9 + 0.1 / 3
    assert set(estimate_all(p)) == {"avg_conf"}
    full = estimate_all(p, p, np.array([0, 1, 2, 0]), [np.array([0, 1, 2, 1])])
    assert set(full) == {"avg_conf", "atc", "atc_maxprob", "doc", "cot", "agreement", "agreement_mean"}
    assert full["agreement"] == 0.75 and full["doc"] == pytest.approx(1.0)


def test_shipped_calibration_is_measured_and_its_default_has_the_lowest_change_error():
    cal = load_calibration()
    assert cal.get("command", "").startswith("python benchmarks/labelfree_study.py")
    errs = cal["estimators"]
    best = min((e for e in errs if errs[e]["change_abs_error_mean"] is not None),
               key=lambda e: errs[e]["change_abs_error_mean"])
    assert default_estimator(cal) == best
    m = measured_error(best, cal)
    assert m.n_models >= 20 and m.accuracy_p90 >= m.accuracy_mean >= 0
    assert measured_error("no-such-estimator", cal) is None
