"""Paired comparisons: McNemar against scipy's exact binomial test, bootstrap intervals
that cover the truth, and helped / hurt / inconclusive decided by both."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.errors import UserError
from diagnostics.chance import near_chance, near_chance_label_free
from diagnostics.paired import accuracy_change, mcnemar_exact, mean_change, paired_bootstrap_ci


def _pairs(b, c, both_right, both_wrong):
    before = [1] * b + [0] * c + [1] * both_right + [0] * both_wrong
    after = [0] * b + [1] * c + [1] * both_right + [0] * both_wrong
    return np.array(before), np.array(after)


def test_mcnemar_matches_the_exact_binomial_test():
    from scipy.stats import binomtest

    for b, c in [(0, 10), (3, 12), (7, 7), (20, 31)]:
        p, bb, cc = mcnemar_exact(*_pairs(b, c, 50, 5))
        assert (bb, cc) == (b, c)
        assert p == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9)
    assert mcnemar_exact(*_pairs(0, 10, 0, 0))[0] == pytest.approx(2 * 0.5**10)
    assert mcnemar_exact(*_pairs(0, 0, 10, 3))[0] == 1.0


def test_small_gain_on_180_images_is_inconclusive():
    # "+0.7 points on 180 images": 1 more right than wrong among the changed predictions
    before, after = _pairs(4, 5, 120, 51)
    res = accuracy_change(np.zeros(180, dtype=int), 1 - before, 1 - after)  # label 0, pred 0 = right
    assert res.delta == pytest.approx(1 / 180)
    assert res.verdict == "inconclusive" and res.ci_low < 0 < res.ci_high
    assert "McNemar" in res.phrase()
    json.dumps(res.to_dict())


def test_clear_gain_helps_and_clear_loss_hurts():
    labels = np.zeros(200, dtype=int)
    before, after = _pairs(3, 30, 100, 67)
    helped = accuracy_change(labels, 1 - before, 1 - after)
    assert helped.verdict == "helped" and helped.ci_low > 0 and helped.mcnemar_p < 0.001
    hurt = accuracy_change(labels, 1 - after, 1 - before)
    assert hurt.verdict == "hurt" and hurt.ci_high < 0
    # probabilities [N, K] are argmaxed
    probs = np.eye(2)[1 - after]
    assert accuracy_change(labels, 1 - before, probs).delta == pytest.approx(helped.delta)


def test_bootstrap_interval_covers_the_true_difference():
    rng = np.random.default_rng(0)
    covered = 0
    for r in range(40):
        base = rng.normal(0.3, 0.1, size=150)
        after = base + 0.02 + rng.normal(0, 0.05, size=150)
        _, lo, hi = paired_bootstrap_ci(base, after, n_boot=500, seed=r)
        covered += lo <= 0.02 <= hi
    assert covered >= 34  # nominal 95% of 40 = 38; binomial slack


def test_mean_change_words():
    rng = np.random.default_rng(1)
    a = rng.normal(0.036, 0.01, size=120)
    same = mean_change(a, a + rng.normal(0.001, 0.01, size=120))
    assert same.word == "no clear change"  # 3.6% → 3.7% is noise
    assert mean_change(a, a + 0.02).word == "rose" and mean_change(a, a - 0.02).word == "fell"
    assert mean_change(a, rng.normal(0.1, 0.01, size=80), paired=False).word == "rose"
    with pytest.raises(UserError, match="equal lengths"):
        mean_change(a, a[:10])


def test_near_chance():
    ten = near_chance(0.18, 10)  # 18% on 10 classes: above chance, still unusable
    assert ten.near and ten.chance == pytest.approx(0.1) and ten.score == pytest.approx(0.08 / 0.9)
    assert not near_chance(0.9, 10).near
    # a 90/10 target: 88% accuracy is worse than always answering the majority class
    assert near_chance(0.88, 2, label_mix=[0.9, 0.1]).near
    assert near_chance_label_free(0.12, 0.5, 10).near  # unsure of everything
    assert near_chance_label_free(0.99, 0.01, 10).near  # confident, one class: no information
    assert not near_chance_label_free(0.9, 1.8, 10).near


def test_the_audit_pairs_the_two_models_on_the_same_images():
    from types import SimpleNamespace

    from diagnostics.audit import StageResult
    from domaingap.run_audit import _add_paired_changes

    labels = np.repeat([0, 1], 100)
    right = np.eye(2)[labels]
    wrong = np.eye(2)[1 - labels]

    def feats(probs, lab=labels):
        return SimpleNamespace(probs=probs, labels=lab)

    after = StageResult(name="adapted")
    before_probs = np.where(np.arange(200)[:, None] < 120, right, wrong)  # 60% right
    _add_paired_changes(after, (feats(right), feats(before_probs)), (feats(right), feats(right)), seed=0)
    tc = after.metrics["target_change"]
    assert tc["verdict"] == "helped" and tc["c"] == 80 and tc["b"] == 0 and tc["n"] == 200
    assert after.metrics["source_change"]["verdict"] == "inconclusive"
    # unknown target labels: no paired accuracy
    unl = StageResult(name="adapted")
    _add_paired_changes(unl, (feats(right), feats(right, -np.ones(200, int))),
                        (feats(right), feats(right, -np.ones(200, int))), seed=0)
    assert "target_change" not in unl.metrics
