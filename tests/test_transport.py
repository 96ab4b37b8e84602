"""Wasserstein distance: known answers for the exact route, scipy in 1-D, and the
sliced route against the exact one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats
import torch

from adapt.errors import UserError
from diagnostics.transport import sliced_scale, wasserstein_distance


pytestmark = pytest.mark.usefixtures("one_thread")


def test_obvious_transport_plans():
    # Corners of a unit square vs the same corners shifted by (3, 4): every point
    # moves by the translation, W_p = ‖(3, 4)‖ = 5 for p = 1 and p = 2.
    sq = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    for p in (1, 2):
        res = wasserstein_distance(sq, sq[::-1] + [3.0, 4.0], p=p)
        assert res.method == "emd" and res.distance == pytest.approx(5.0, rel=1e-12)
    # Two points each: {0, 10} vs {1, 11} on a line; the crossing plan would cost
    # more, the optimal one moves each point by 1.
    a, b = np.array([[0.0], [10.0]]), np.array([[11.0], [1.0]])
    assert wasserstein_distance(a, b, p=2).distance == pytest.approx(1.0)
    # Identical samples: zero.
    assert wasserstein_distance(sq, sq).distance == pytest.approx(0.0, abs=1e-12)


def test_one_dimensional_p1_equals_scipy():
    rng = np.random.default_rng(0)
    u = rng.standard_normal(300)
    v = rng.exponential(1.0, 250)  # unequal sizes, uniform weights
    got = wasserstein_distance(u, v, p=1).distance
    assert got == pytest.approx(scipy.stats.wasserstein_distance(u, v), rel=1e-9)


def test_subsampling_above_max_points_is_seeded():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((500, 3)), rng.standard_normal((400, 3)) + 1.0
    r1 = wasserstein_distance(x, y, max_points=200, method="emd", seed=3)
    r2 = wasserstein_distance(x, y, max_points=200, method="emd", seed=3)
    assert (r1.n_used_x, r1.n_used_y) == (200, 200)
    assert r1.distance == r2.distance


def test_sliced_route_is_close_to_exact_on_shifted_gaussian():
    rng = np.random.default_rng(2)
    d = 3
    shift = np.array([2.0, -1.0, 2.0])  # ‖shift‖ = 3
    x = rng.standard_normal((4000, d))
    y = rng.standard_normal((4000, d)) + shift
    sliced = wasserstein_distance(x, y, max_points=1500, seed=0, projections=300)  # auto → sliced
    exact = wasserstein_distance(x, y, max_points=1500, seed=0, method="emd")
    assert sliced.method == "sliced" and exact.method == "emd"
    assert np.isfinite(sliced.distance) and np.isfinite(sliced.sliced)
    assert sliced.distance == pytest.approx(exact.distance, rel=0.05)
    assert sliced.distance == pytest.approx(3.0, rel=0.05)
    # The raw SW₂ is ‖Δ‖/√d for a translation; the reported one is rescaled.
    assert sliced.sliced == pytest.approx(sliced.distance / np.sqrt(d), rel=1e-12)
    json.dumps(sliced.to_dict())


def test_sliced_scale_values():
    assert sliced_scale(7, 2) == pytest.approx(1 / np.sqrt(7))
    # p = 1, d = 2: E|cos θ| = 2/π for θ uniform on the circle.
    assert sliced_scale(2, 1) == pytest.approx(2 / np.pi)


def test_bad_arguments_raise_user_error():
    with pytest.raises(UserError, match="p:"):
        wasserstein_distance(np.zeros((3, 2)), np.ones((3, 2)), p=3)
    with pytest.raises(UserError, match="dimensions differ"):
        wasserstein_distance(np.zeros((3, 2)), np.ones((3, 1)))
