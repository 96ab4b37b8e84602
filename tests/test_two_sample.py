"""Classifier two-sample test: exact AUC, ridge scores equal a refit, p-values uniform
under H0, power under a shift, and no false alarm on duplicated data."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.errors import UserError
from diagnostics.two_sample import (
    auc_from_scores,
    classifier_two_sample_test,
    min_permutations,
    ridge_out_of_fold_scores,
)


def test_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, size=60).astype(float)  # many ties
    d = rng.integers(0, 2, size=60)
    assert auc_from_scores(s, d) == pytest.approx(roc_auc_score(d, s), abs=1e-12)
    # several columns, each with its own labels
    d2 = np.stack([d, 1 - d], 1)
    s2 = np.stack([s, s], 1)
    np.testing.assert_allclose(auc_from_scores(s2, d2), [roc_auc_score(d, s), roc_auc_score(1 - d, s)])


def test_ridge_scores_equal_a_refit_per_fold():
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    for dim in (5, 40):  # primal (D < N) and dual (D > N) systems
        z = rng.standard_normal((30, dim))
        d = rng.integers(0, 2, size=30).astype(float)
        folds = np.arange(30) % 3
        got = ridge_out_of_fold_scores(z, d, folds, ridge=0.7)[:, 0]
        for k in range(3):
            tr, te = folds != k, folds == k
            sc = StandardScaler().fit(z[tr])
            model = Ridge(alpha=0.7 * tr.sum()).fit(sc.transform(z[tr]), d[tr])
            np.testing.assert_allclose(got[te], model.predict(sc.transform(z[te])), atol=1e-9)


def test_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(2)
    ps = np.array([
        classifier_two_sample_test(rng.standard_normal((30, 6)), rng.standard_normal((30, 6)),
                                   permutations=39, seed=r, folds=3).p_value
        for r in range(150)
    ])
    # exact test: P(p ≤ 0.1) = 0.1 and P(p ≤ 0.5) = 0.5 (binomial 3-sigma bands at n = 150)
    assert 0.1 - 0.075 <= (ps <= 0.1).mean() <= 0.1 + 0.075
    assert 0.5 - 0.125 <= (ps <= 0.5).mean() <= 0.5 + 0.125


def test_power_under_a_mean_shift_and_json():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((120, 32))
    y = rng.standard_normal((120, 32)) + 0.3
    res = classifier_two_sample_test(x, y, permutations=99, seed=0)
    assert res.auc > 0.8 and res.p_value == pytest.approx(0.01) and res.significant
    json.dumps(res.to_dict())


def test_one_set_against_itself_is_no_evidence():
    # ``diagnose gap DIR DIR``: each held-out row's twin in the training folds carries the
    # other label, so the out-of-fold AUC falls below 0.5 — which is no evidence at all.
    rng = np.random.default_rng(4)
    x = rng.standard_normal((100, 16))
    res = classifier_two_sample_test(x, x.copy(), permutations=99, seed=0)
    assert res.auc < 0.5
    assert res.p_value > 0.5 and not res.significant


def test_too_few_permutations_cannot_decide():
    assert min_permutations(0.05) == 19 and min_permutations(0.01) == 99
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((50, 4)), rng.standard_normal((50, 4)) + 5.0
    res = classifier_two_sample_test(x, y, permutations=1, seed=0)
    assert res.auc > 0.99 and not res.decidable and not res.significant and res.p_value == 0.5
    assert classifier_two_sample_test(x, y, permutations=19, seed=0).significant


def test_bad_arguments():
    with pytest.raises(UserError, match="permutations"):
        classifier_two_sample_test(np.zeros((10, 2)), np.ones((10, 2)), permutations=0)
    with pytest.raises(UserError, match="dimensions"):
        classifier_two_sample_test(np.zeros((10, 2)), np.ones((10, 3)))
    with pytest.raises(UserError, match="folds"):
        classifier_two_sample_test(np.zeros((3, 2)), np.ones((3, 2)), folds=5)
