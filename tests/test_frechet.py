"""Fréchet distance: agrees with pytorch-fid, stays real where sqrtm goes complex,
moments merge exactly."""
from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from adapt.errors import UserError
from diagnostics.frechet import (
    FrechetSampleSizeWarning,
    frechet_bootstrap,
    frechet_distance,
    frechet_from_features,
    frechet_from_moments,
    frechet_report,
    trace_sqrt_product,
)
from diagnostics.moments import Moments

# the oracle, imported by the one test that calls it (its import pulls in torchvision:
# ~1.5 s that both test workers would pay at collection)
needs_pytorch_fid = pytest.mark.skipif(importlib.util.find_spec("pytorch_fid") is None,
                                       reason="pytorch-fid (the test extra) is not installed")


pytestmark = pytest.mark.usefixtures("one_thread")


def _random_gaussian(rng: np.random.Generator, d: int, k: int = 96):
    """A random mean and a dense, full-rank covariance D + UUᵀ/k (U: d × k), cheap to
    build even at d = 2048 (a sample covariance there would cost more than the test)."""
    u = rng.standard_normal((d, k))
    return rng.standard_normal(d), u @ u.T / k + np.diag(rng.uniform(0.1, 1.0, d))


@needs_pytorch_fid
@pytest.mark.parametrize("d", [64, 512, pytest.param(2048, marks=pytest.mark.slow)])
def test_matches_pytorch_fid_both_methods(d):
    import pytorch_fid.fid_score as pytorch_fid  # late: see needs_pytorch_fid

    rng = np.random.default_rng(d)
    mu1, s1 = _random_gaussian(rng, d)
    mu2, s2 = _random_gaussian(rng, d)
    # d = 2048 costs pytorch-fid's sqrtm some 10–30 s on a small CPU: one case only.
    expected = pytorch_fid.calculate_frechet_distance(mu1, s1, mu2, s2)
    for method in ("eigh", "svd"):
        got = frechet_distance(mu1, s1, mu2, s2, method=method)
        assert got == pytest.approx(expected, rel=1e-6), method


def test_identical_gaussians_give_zero_and_translation_gives_squared_shift():
    rng = np.random.default_rng(0)
    mu, s = _random_gaussian(rng, 32)
    shift = rng.standard_normal(32)
    for method in ("eigh", "svd"):
        assert frechet_distance(mu, s, mu, s, method=method) == pytest.approx(0.0, abs=1e-8)
        assert frechet_distance(mu, s, mu + shift, s, method=method) == pytest.approx(
            float(shift @ shift), rel=1e-9
        )


def test_rank_deficient_known_answer_where_sqrtm_goes_complex():
    # Commuting rank-deficient covariances Q diag(a) Qᵀ, Q diag(b) Qᵀ with partly
    # disjoint supports: Tr (Σ1Σ2)^½ = Σ √(a_i b_i) exactly.
    rng = np.random.default_rng(1)
    d, r = 64, 24
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    a = np.zeros(d)
    a[:r] = rng.uniform(0.5, 2.0, r)
    b = np.zeros(d)
    b[d - r - 10 : d - 10] = rng.uniform(0.5, 2.0, r)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    exact = float(((mu1 - mu2) ** 2).sum() + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum())

    # scipy's sqrtm (what pytorch-fid uses) returns a complex matrix here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.iscomplexobj(scipy.linalg.sqrtm(s1 @ s2))

    for method in ("eigh", "svd"):
        got = frechet_distance(mu1, s1, mu2, s2, method=method)
        assert np.isfinite(got) and got >= 0
        assert got == pytest.approx(exact, rel=1e-8), method


def test_fewer_samples_than_dims_is_finite_warns_and_routes_agree():
    rng = np.random.default_rng(2)
    d = 200
    x = rng.standard_normal((40, d))
    y = rng.standard_normal((55, d)) * 1.3 + 0.2
    with pytest.warns(FrechetSampleSizeWarning):
        svd = frechet_from_features(x, y, method="svd")  # centred-data factors
    with pytest.warns(FrechetSampleSizeWarning):
        eig = frechet_from_features(x, y, method="eigh")
    assert np.isfinite(svd) and svd >= 0
    assert svd == pytest.approx(eig, rel=1e-6)
    # ... and both equal the covariance-based formula.
    cov = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False), method="eigh")
    assert svd == pytest.approx(cov, rel=1e-6)


def test_trace_sqrt_product_routes_agree():
    rng = np.random.default_rng(3)
    _, s1 = _random_gaussian(rng, 40)
    _, s2 = _random_gaussian(rng, 40)
    # Oracle: eigenvalues of Σ1Σ2 are real and ≥ 0 (similar to a PSD matrix).
    lam = np.linalg.eigvals(s1 @ s2).real
    expected = np.sqrt(np.clip(lam, 0, None)).sum()
    assert trace_sqrt_product(s1, s2, "eigh") == pytest.approx(expected, rel=1e-9)
    assert trace_sqrt_product(s1, s2, "svd") == pytest.approx(expected, rel=1e-9)


def test_moments_merge_equals_whole_and_matches_features():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(257, 16, generator=g, dtype=torch.float64) * 3 + 1
    whole = Moments.from_features(x)
    parts = [Moments.empty(16).update(x[i : i + 50]) for i in range(0, 257, 50)]
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    assert merged.n == whole.n == 257
    torch.testing.assert_close(merged.sum, whole.sum, rtol=0, atol=1e-12 * whole.sum.abs().max())
    torch.testing.assert_close(merged.outer, whole.outer, rtol=0, atol=1e-12 * whole.outer.abs().max())
    torch.testing.assert_close(merged.mean, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.cov, torch.cov(x.T), rtol=1e-12, atol=1e-12)
    # Single-process all_reduce is a no-op.
    assert merged.all_reduce().n == 257

    y = torch.randn(300, 16, generator=g, dtype=torch.float64) + 0.5
    assert frechet_from_moments(merged, Moments.from_features(y)) == pytest.approx(
        frechet_from_features(x, y), rel=1e-10
    )


def test_moments_all_reduce_sums_over_ranks(tmp_path):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        x = torch.randn(20, 4, dtype=torch.float64)
        m = Moments.from_features(x).all_reduce()
        assert m.n == 20
        torch.testing.assert_close(m.cov, torch.cov(x.T))
    finally:
        dist.destroy_process_group()


def test_bootstrap_interval_covers_truth_and_report_is_json():
    import json

    rng = np.random.default_rng(4)
    d = 10
    x = rng.standard_normal((400, d))
    y = rng.standard_normal((400, d)) + 0.3
    truth = d * 0.09  # ‖Δμ‖² with equal covariances
    iv = frechet_bootstrap(x, y, n_boot=60, seed=0)
    assert iv.low <= truth <= iv.high
    assert iv.low < iv.high and iv.bias > 0  # Fréchet distance is biased upwards
    rep = frechet_report(x, y, n_boot=20, feature_extractor="pixels")
    assert rep.mean_term + rep.covariance_term == pytest.approx(rep.distance)
    assert not rep.small_sample
    json.dumps(rep.to_dict())


def test_bad_inputs_raise_user_error():
    with pytest.raises(UserError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="sqrtm")
    with pytest.raises(UserError, match="dimensions differ"):
        frechet_from_features(np.zeros((5, 3)), np.zeros((5, 4)))


def test_interval_contains_the_estimate_it_is_printed_with():
    # small n, many dimensions: the plug-in is biased far upwards and lies ABOVE the basic
    # (bias-correcting) interval — the interval belongs to the bias-corrected estimate
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((40, 30)), rng.standard_normal((40, 30)) + 0.1
    iv = frechet_bootstrap(x, y, n_boot=50, seed=0)
    assert iv.estimate > iv.high  # the situation of issue 10
    assert iv.low <= iv.centre <= iv.high
    assert iv.centre == pytest.approx(max(2 * iv.estimate - (iv.estimate + iv.bias), 0.0), rel=0.2)
    text = iv.describe()
    assert text.startswith("bias-corrected") and "plug-in" in text and "basic-bootstrap" in text
    pct = frechet_bootstrap(x, y, n_boot=50, seed=0, kind="percentile")
    assert pct.low <= pct.centre <= pct.high and pct.describe().startswith("bootstrap median")
