"""MMD²: known answers against a double loop, the GEMM permutation trick against
re-indexing, and the test's size and power."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from adapt.errors import UserError
from diagnostics.mmd import (
    gaussian_kernel,
    median_bandwidth,
    mmd2_block,
    mmd2_from_kernel,
    mmd2_linear,
    mmd2_permutation_statistics,
    mmd2_unbiased,
    mmd_permutation_test,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _loop_mmd2(x: np.ndarray, y: np.ndarray, sigmas: list[float]) -> float:
    """Gretton et al. 2012 eq. 3, written as plain loops."""

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return sum(math.exp(-d2 / (2 * s * s)) for s in sigmas)

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
    return sxx / (m * (m - 1)) + syy / (n * (n - 1)) - 2 * sxy / (m * n)


def _loop_median(z: np.ndarray) -> float:
    return float(np.median([np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]))


def test_mmd2_equals_double_loop_single_and_multi_bandwidth():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 3))
    y = rng.standard_normal((7, 3)) + 0.5
    sigma = _loop_median(np.concatenate([x, y]))
    assert median_bandwidth(x, y) == pytest.approx(sigma, rel=1e-12)
    assert mmd2_unbiased(x, y) == pytest.approx(_loop_mmd2(x, y, [sigma]), rel=1e-10)
    assert mmd2_unbiased(x, y, bandwidth=0.7) == pytest.approx(_loop_mmd2(x, y, [0.7]), rel=1e-10)
    sigmas = [0.5, 1.0, 4.0]
    assert mmd2_unbiased(x, y, bandwidth=sigmas) == pytest.approx(_loop_mmd2(x, y, sigmas), rel=1e-10)
    k = gaussian_kernel(x, y, sigmas)
    assert k[2, 3].item() == pytest.approx(
        sum(math.exp(-((x[2] - y[3]) ** 2).sum() / (2 * s * s)) for s in sigmas), rel=1e-12
    )


def test_mmd2_is_symmetric_and_near_zero_for_identical_samples():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g).double()
    y = torch.randn(30, 5, generator=g).double() * 1.5
    assert mmd2_unbiased(x, y) == pytest.approx(mmd2_unbiased(y, x), rel=1e-12)
    # float32 inputs compute in float32: symmetric to float32 rounding.
    assert mmd2_unbiased(x.float(), y.float()) == pytest.approx(mmd2_unbiased(y.float(), x.float()), rel=1e-5)
    res_xy = mmd_permutation_test(x, y, permutations=50, seed=0)
    res_yx = mmd_permutation_test(y, x, permutations=50, seed=0)
    assert res_xy.mmd2 == pytest.approx(res_yx.mmd2, rel=1e-12)
    # The permutation test's statistic is the same estimator.
    assert res_xy.mmd2 == pytest.approx(mmd2_unbiased(x, y), rel=1e-12)
    assert mmd2_unbiased(x, y) > 0.01


def test_gemm_permutation_statistics_equal_reindexing():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(13, 4, generator=g, dtype=torch.float64)
    y = torch.randn(17, 4, generator=g, dtype=torch.float64) + 0.3
    z = torch.cat([x, y])
    m, n_total = 13, 30
    k = gaussian_kernel(z, z, [0.8, 2.0])
    perms = [torch.randperm(n_total, generator=g) for _ in range(6)]
    a = torch.zeros(len(perms), n_total, dtype=torch.float64)
    for r, p in enumerate(perms):
        a[r, p[:m]] = 1.0  # the first m permuted points play X
    fast = mmd2_permutation_statistics(k, a)
    for r, p in enumerate(perms):
        expected = mmd2_from_kernel(k[p][:, p], m)  # re-index K as a per-permutation loop does
        assert fast[r].item() == pytest.approx(expected, rel=1e-10, abs=1e-14)
    # The identity split reproduces the observed statistic.
    ident = torch.zeros(1, n_total, dtype=torch.float64)
    ident[0, :m] = 1
    assert mmd2_permutation_statistics(k, ident)[0].item() == pytest.approx(mmd2_from_kernel(k, m), rel=1e-12)


def test_null_rejection_rate_is_near_nominal():
    # 200 two-sample problems where H0 holds; the test must reject ~5% of them.
    g = torch.Generator().manual_seed(3)
    trials, rejections = 200, 0
    for t in range(trials):
        x = torch.randn(25, 3, generator=g)
        y = torch.randn(25, 3, generator=g)
        rejections += mmd_permutation_test(x, y, permutations=150, seed=1000 + t).p_value <= 0.05
    rate = rejections / trials
    assert 0.02 <= rate <= 0.09, rate


def test_power_against_small_mean_shift():
    # 0.3σ shift in 10 of 64 dimensions, n = m = 200.
    g = torch.Generator().manual_seed(4)
    trials, rejections = 50, 0
    for t in range(trials):
        x = torch.randn(200, 64, generator=g)
        y = torch.randn(200, 64, generator=g)
        y[:, :10] += 0.3
        rejections += mmd_permutation_test(x, y, permutations=100, seed=t).p_value <= 0.05
    assert rejections / trials > 0.9, rejections


def test_result_fields_and_json():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(30, 2, generator=g), torch.randn(20, 2, generator=g) + 3.0
    res = mmd_permutation_test(x, y, permutations=99, bandwidths=[0.5, 1.0])
    assert res.p_value == pytest.approx(1 / 100)  # far apart: no permutation beats the truth
    assert (res.n_x, res.n_y, res.permutations, res.method) == (30, 20, 99, "permutation")
    assert res.bandwidth == [0.5, 1.0]
    assert res.null_quantiles["q50"] <= res.null_quantiles["q95"] < res.mmd2
    json.dumps(res.to_dict())
    # Same seed, same p-value; a generator works as well as a seed.
    again = mmd_permutation_test(x, y, permutations=99, bandwidths=[0.5, 1.0])
    assert again.to_dict() == res.to_dict()
    gen = torch.Generator().manual_seed(7)
    assert mmd_permutation_test(x, y, permutations=10, generator=gen).permutations == 10


def test_large_inputs_switch_to_block_test_with_linear_and_block_estimators():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3000, 4, generator=g)
    y_same = torch.randn(3000, 4, generator=g)
    y_shift = torch.randn(3000, 4, generator=g) + 0.25
    near = mmd_permutation_test(x, y_same, max_exact_points=1000, block_size=100)
    far = mmd_permutation_test(x, y_shift, max_exact_points=1000, block_size=100)
    assert near.method == far.method == "block" and far.blocks == 30
    assert near.p_value > 0.01 and far.p_value < 1e-4
    # Block and linear estimators are unbiased: close to the quadratic one on average.
    bw = median_bandwidth(x, y_shift)
    quad = mmd2_unbiased(x[:1000], y_shift[:1000], bandwidth=bw)
    block_mean, block_se, _ = mmd2_block(x, y_shift, block_size=100, bandwidth=bw)
    lin_mean, lin_se = mmd2_linear(x, y_shift, bandwidth=bw)
    assert abs(block_mean - quad) < 4 * block_se + 0.005
    assert abs(lin_mean - quad) < 4 * lin_se + 0.005


def test_bad_arguments_raise_user_error():
    x = torch.randn(10, 3)
    with pytest.raises(UserError, match="bandwidth"):
        mmd2_unbiased(x, x, bandwidth=-1.0)
    with pytest.raises(UserError, match="dimensions differ"):
        mmd2_unbiased(x, torch.randn(10, 4))
    with pytest.raises(UserError, match="not both"):
        mmd_permutation_test(x, x, bandwidth=1.0, bandwidths=[1.0])


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_float32_path_agrees_with_float64(offset):
    # float32 inputs run the kernel and the permutation GEMM in float32 (after
    # centring); the statistic must stay far inside the null's spread of the float64
    # result and give the same p-value — also for features with a large common offset,
    # where uncentred float32 distances would cancel catastrophically.
    g = torch.Generator().manual_seed(11)
    x = torch.randn(300, 64, generator=g, dtype=torch.float64) + offset
    y = torch.randn(300, 64, generator=g, dtype=torch.float64) + offset
    y[:, :5] += 0.15
    r64 = mmd_permutation_test(x, y, permutations=200, seed=3)
    r32 = mmd_permutation_test(x.float(), y.float(), permutations=200, seed=3)
    null_spread = r64.null_quantiles["q95"] - r64.null_quantiles["q50"]
    assert abs(r32.mmd2 - r64.mmd2) < 0.01 * null_spread, (r32.mmd2, r64.mmd2, null_spread)
    assert r32.bandwidth == pytest.approx(r64.bandwidth, rel=1e-5)
    assert r32.p_value == r64.p_value
    assert mmd2_unbiased(x.float(), y.float()) == pytest.approx(mmd2_unbiased(x, y), abs=0.01 * null_spread)
    # the block estimator (large N) takes the same centred float32 path
    b64, se64, _ = mmd2_block(x, y, block_size=100)
    b32, _, _ = mmd2_block(x.float(), y.float(), block_size=100)
    assert b32 == pytest.approx(b64, abs=0.01 * se64)


def test_median_selection_is_exact_on_large_matrices():
    # The bracketing selection must return exactly the median of all pairs (here
    # 1200 points: 719,400 pairs, above the sampling threshold), ties included.
    from diagnostics.mmd import median_bandwidth

    g = torch.Generator().manual_seed(12)
    z = torch.randn(1200, 8, generator=g, dtype=torch.float64)
    z[600:700] = z[0]  # a block of duplicates: many exact ties and zero distances
    d = torch.cdist(z, z)
    iu = torch.triu_indices(1200, 1200, offset=1)
    expected = float(np.median(d[iu[0], iu[1]].numpy()))
    assert median_bandwidth(z, max_points=5000) == pytest.approx(expected, rel=1e-12)


def test_block_test_with_one_side_smaller_than_a_block():
    g = torch.Generator().manual_seed(8)
    x_small = torch.randn(100, 4, generator=g)
    y_big = torch.randn(3000, 4, generator=g) + 0.5
    # direct block estimator: unequal block sizes, the small side below block_size
    mean, se, nb = mmd2_block(x_small, y_big, block_size=256)
    assert nb >= 2 and math.isfinite(mean) and se > 0
    # the test keeps the exact permutation test on a subsample of the larger side, and says so
    res = mmd_permutation_test(x_small, y_big, permutations=99, max_exact_points=1000)
    assert res.method == "permutation" and (res.n_x, res.n_y) == (100, 900)
    assert "subsampled from 3000 to 900" in res.note and res.p_value == pytest.approx(0.01)


def test_block_result_is_labelled_as_block_not_zero_permutations():
    from diagnostics.gap import gap_table

    g = torch.Generator().manual_seed(9)
    res = mmd_permutation_test(torch.randn(700, 3, generator=g), torch.randn(900, 3, generator=g),
                               max_exact_points=1000, block_size=100)
    assert res.method == "block" and res.describe().startswith("block test,") and res.decidable()
    gap = {"mmd": {**res.to_dict(), "test": res.describe()},
           "frechet": {"distance": 1.0, "ci_low": None, "ci_high": None, "n_source": 700,
                       "n_target": 900, "dim": 3, "extractor": "x"},
           "domain_classifier": {"auc": 0.5, "accuracy": 0.5, "proxy_a_distance": 0.0},
           "transport": {"distance": 1.0, "method": "exact", "n_points": 100}}
    table = gap_table(gap)
    assert "block test" in table and "0 permutations" not in table


def test_too_few_permutations_cannot_decide():
    x = torch.zeros(20, 2)
    y = torch.ones(20, 2)
    res = mmd_permutation_test(x, y, permutations=1)
    assert res.p_value == 0.5 and not res.decidable(0.05)
    assert mmd_permutation_test(x, y, permutations=19).decidable(0.05)
