"""Domain classifier: chance for one distribution, perfect for far-apart ones."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.errors import UserError
from diagnostics.domain_classifier import domain_classifier, proxy_a_distance


def test_identical_distributions_are_at_chance():
    rng = np.random.default_rng(0)
    xs, xt = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    res = domain_classifier(xs, xt, folds=5, seed=0)
    assert abs(res.auc - 0.5) < 0.1
    assert abs(res.proxy_a_distance) < 0.5
    json.dumps(res.to_dict())


def test_far_apart_distributions_are_separable():
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((200, 8))
    xt = rng.standard_normal((200, 8)) + 4.0
    res = domain_classifier(xs, xt, folds=5, seed=0)
    assert res.auc > 0.99 and res.accuracy > 0.98
    assert res.proxy_a_distance == pytest.approx(2 * (1 - 2 * res.error))
    assert res.proxy_a_distance > 1.9


def test_proxy_a_distance_formula_and_balancing():
    assert proxy_a_distance(0.5) == 0.0
    assert proxy_a_distance(0.0) == 2.0
    assert proxy_a_distance(0.25) == pytest.approx(1.0)
    rng = np.random.default_rng(2)
    # 4:1 imbalance: without balancing, "always source" already scores 80%.
    res = domain_classifier(rng.standard_normal((400, 4)), rng.standard_normal((100, 4)), seed=0)
    assert (res.n_source, res.n_target, res.balanced) == (100, 100, True)


def test_too_few_samples_for_the_folds():
    with pytest.raises(UserError, match="folds"):
        domain_classifier(np.zeros((3, 2)), np.ones((3, 2)), folds=5)


def test_one_set_against_itself_is_no_evidence_and_proxy_a_stays_in_range():
    from diagnostics.gap import auc_meaning

    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 16))
    res = domain_classifier(x, x.copy(), seed=0)
    assert res.auc < 0.45  # each held-out image's twin in the training folds has the other label
    assert res.proxy_a_distance == 0.0
    assert "no evidence" in auc_meaning(res.auc) and "apart" not in auc_meaning(res.auc)
    assert proxy_a_distance(0.8) == 0.0 and 0.0 <= proxy_a_distance(0.3) <= 2.0
