"""The gap statistics run at one thread (diagnostics.threads): a second thread cost more
than it saved on their small linear algebra (benchmarks/bench_gap_threads.py), and the
caller's thread count is left as it was."""

from __future__ import annotations

import numpy as np
import torch

import diagnostics.gap as gap_mod
from diagnostics.features import FeatureSet
from diagnostics.moments import Moments


def _features(rng, n: int, shift: float) -> FeatureSet:
    x = (rng.standard_normal((n, 8)) + shift).astype(np.float32)
    return FeatureSet(x, -np.ones(n, np.int64), None, Moments.from_features(torch.from_numpy(x)), "test")


def test_measure_gap_computes_at_one_thread_and_restores_the_callers_count(monkeypatch):
    seen = []
    real = gap_mod.frechet_bootstrap

    def spy(*a, **kw):
        seen.append(torch.get_num_threads())
        return real(*a, **kw)

    monkeypatch.setattr(gap_mod, "frechet_bootstrap", spy)
    rng = np.random.default_rng(0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        res = gap_mod.measure_gap(_features(rng, 40, 0.0), _features(rng, 40, 1.0), permutations=20, bootstrap=5)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen == [1]
    assert res.frechet_interval is not None and res.frechet_distance > 0
