"""The label-shift assumption check: passes under a pure label shift, fails under a
covariate shift, and the stratified re-weighting hits the requested mix exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.errors import UserError
from diagnostics.label_shift import label_shift_check, subsample_to_mix

MU = 3.0 * np.eye(3, 8)  # three well separated classes in 8 dimensions


def _domain(rng, mix, n, warp=None):
    y = rng.choice(3, size=n, p=mix)
    x = MU[y] + rng.standard_normal((n, 8))
    return (x if warp is None else warp(x)), y


def test_stratified_subsample_has_the_mix_and_no_duplicates():
    y = np.repeat([0, 1, 2], [100, 50, 10])
    idx = subsample_to_mix(y, [0.5, 0.25, 0.25], seed=0)
    # the scarcest class (10 rows at 25%) limits the total to 40: 20 / 10 / 10
    assert np.bincount(y[idx], minlength=3).tolist() == [20, 10, 10]
    assert len(np.unique(idx)) == len(idx)
    idx0 = subsample_to_mix(y, [1.0, 0.0, 0.0], seed=0)
    assert np.bincount(y[idx0], minlength=3).tolist() == [100, 0, 0]
    with pytest.raises(UserError, match="classes"):
        subsample_to_mix(np.zeros(10, dtype=int), [0.5, 0.5])


def test_pure_label_shift_passes():
    rng = np.random.default_rng(0)
    xs, ys = _domain(rng, [1 / 3] * 3, 600)
    mix = np.array([0.6, 0.3, 0.1])
    passed = 0
    for r in range(5):
        xt, _ = _domain(rng, mix, 400)
        passed += label_shift_check(xs, ys, xt, mix, permutations=99, seed=r).passed
    assert passed >= 4  # each run has a 5% false-alarm rate at most (α split over 2 tests)


def test_covariate_shift_fails_even_with_the_right_mix():
    rng = np.random.default_rng(1)
    xs, ys = _domain(rng, [1 / 3] * 3, 600)
    # the true target mix, but each class's images changed (contrast + offset)
    xt, _ = _domain(rng, [1 / 3] * 3, 400, warp=lambda x: 0.7 * x + 0.4 * MU[0])
    res = label_shift_check(xs, ys, xt, [1 / 3] * 3, permutations=99, seed=0)
    assert not res.passed and min(res.mmd_p, res.classifier_p) < 0.025
    assert "covariate shift" in res.reason
    json.dumps(res.to_dict())


# ---------------------------------------------------------- the change bound under a label shift
def test_the_change_bound_holds_the_true_change_of_a_run_that_rebalances_a_label_shift():
    """Known truth: a pure label shift (a third each → 70 / 20 / 10 %), the source model
    (the Bayes classifier of the source) and a run that moves predictions off class 0 (what
    aligning the marginals does there). The true change, from the hidden labels, lies in the
    bound; the bound's top is below zero — a loss shown without a target label."""
    from diagnostics.label_shift import change_bound_under_label_shift

    rng = np.random.default_rng(4)
    xs, ys = _domain(rng, [1 / 3] * 3, 600)
    xt, yt = _domain(rng, [0.7, 0.2, 0.1], 600)

    def probs(x, bias=(0.0, 0.0, 0.0)):
        logit = -0.5 * ((x[:, None, :] - MU[None]) ** 2).sum(-1) + np.asarray(bias)
        p = np.exp(logit - logit.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    ps, pt_source, pt_run = probs(xs), probs(xt), probs(xt, bias=(-3.0, 1.5, 1.5))
    true = float(np.mean(pt_run.argmax(1) == yt) - np.mean(pt_source.argmax(1) == yt))
    bound = change_bound_under_label_shift(ps, ys, pt_source, pt_run, seed=0)
    assert true < -0.05  # the run does lose
    assert bound["low"] <= true <= bound["high"] < 0, (true, bound)
    assert bound["source_accuracy"] == pytest.approx(np.mean(pt_source.argmax(1) == yt), abs=0.03)
    # the run identical to the source model: no change, and the bound cannot show a loss
    same = change_bound_under_label_shift(ps, ys, pt_source, pt_source, seed=0)
    assert same["low"] <= 0.0 <= same["high"]
