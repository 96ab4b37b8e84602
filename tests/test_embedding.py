"""2-D embeddings: shapes, the subsampling cap, determinism, and that two separated
domains land apart."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.errors import UserError
from diagnostics.embedding import exact_knn, pca_embedding, stratified_cap, umap_embedding


def _two_domains(ns=300, nt=200, d=64, shift=3.0, seed=0):
    rng = np.random.default_rng(seed)
    ys = rng.integers(0, 3, ns)
    yt = rng.integers(0, 3, nt)
    xs = rng.normal(size=(ns, d)).astype(np.float32) + ys[:, None] * 0.25
    xt = rng.normal(size=(nt, d)).astype(np.float32) + yt[:, None] * 0.25
    xt[:, :8] += shift                   # the domain gap lives in 8 directions
    return xs, xt, ys, yt


def test_stratified_cap_respects_the_cap_and_the_groups():
    groups = np.array([0] * 900 + [1] * 90 + [2] * 10)
    idx = stratified_cap(groups, 100, seed=0)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    counts = np.bincount(groups[idx], minlength=3)
    assert counts.tolist() == [90, 9, 1]
    groups = np.array([0] * 990 + [1] * 5 + [2] * 5)
    assert (np.bincount(groups[stratified_cap(groups, 50)]) >= 1).all()   # no group vanishes
    np.testing.assert_array_equal(stratified_cap(groups, 50, seed=4), stratified_cap(groups, 50, seed=4))


def test_pca_embedding_shapes_cap_and_separation():
    xs, xt, ys, yt = _two_domains()
    r = pca_embedding(xs, xt, ys, yt, max_points=250, seed=0)
    assert r.coords.shape == (250, 2) and r.coords.dtype == np.float32
    assert r.n_source + r.n_target == 250
    assert abs(r.n_source - 150) <= 3                      # proportions kept (per-group rounding)
    assert (r.n_source_total, r.n_target_total) == (300, 200)
    assert set(np.unique(r.domain)) == {0, 1} and set(np.unique(r.label)) <= {0, 1, 2}
    # each row points back to its own domain's array
    src_rows = r.index[r.domain == 0]
    assert src_rows.max() < 300 and len(np.unique(src_rows)) == len(src_rows)
    # the domain shift is the largest direction: the first coordinate separates the domains
    c0 = r.coords[:, 0]
    gap = abs(c0[r.domain == 0].mean() - c0[r.domain == 1].mean())
    assert gap > 2 * c0[r.domain == 0].std()
    again = pca_embedding(xs, xt, ys, yt, max_points=250, seed=0)
    np.testing.assert_array_equal(r.coords, again.coords)
    json.dumps(r.to_dict())


def test_embedding_rejects_mismatched_inputs():
    xs, xt, ys, yt = _two_domains(ns=20, nt=20)
    with pytest.raises(UserError, match="target features"):
        umap_embedding(xs, xt[:, :10], method="pca")
    with pytest.raises(UserError, match="source_labels"):
        umap_embedding(xs, xt, ys[:5], yt, method="pca")
    with pytest.raises(UserError, match="method"):
        umap_embedding(xs, xt, method="tsne")


@pytest.mark.slow
def test_exact_knn_is_each_points_nearest_rows_itself_first():
    """Known answer: the neighbours by a full distance matrix in float64 (distinct distances)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 12)).astype(np.float32)
    ind, dist = exact_knn(x, 6)
    full = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    want = np.argsort(full, axis=1, kind="stable")[:, :6]
    assert ind.dtype == np.int32 and dist.dtype == np.float32 and ind.shape == dist.shape == (200, 6)
    np.testing.assert_array_equal(ind, want)
    assert (ind[:, 0] == np.arange(200)).all()
    np.testing.assert_allclose(dist, np.take_along_axis(full, want, 1), atol=1e-4)


def test_umap_on_a_few_thousand_points_skips_the_approximate_neighbour_search(monkeypatch):
    """Up to EXACT_KNN_MAX_POINTS the neighbour graph is exact and handed to UMAP: its own
    NN-descent (whose numba kernels cost ~9 s to compile in each new process) never runs."""
    import umap.umap_ as umap_mod

    def no_search(*a, **kw):
        raise AssertionError("UMAP ran its own nearest-neighbour search")

    monkeypatch.setattr(umap_mod, "nearest_neighbors", no_search)
    xs, xt, ys, yt = _two_domains(ns=120, nt=80, shift=4.0)
    r = umap_embedding(xs, xt, ys, yt, max_points=200, seed=1, n_neighbors=10)
    assert r.coords.shape == (200, 2) and np.isfinite(r.coords).all()


def test_umap_is_deterministic_capped_and_separates_domains():
    # The first UMAP call in a process compiles numba kernels (10-50 s on a busy CPU);
    # one test pays it, with a small input.
    xs, xt, ys, yt = _two_domains(ns=240, nt=160, shift=4.0)
    a = umap_embedding(xs, xt, ys, yt, max_points=300, seed=7, n_neighbors=10)
    b = umap_embedding(xs, xt, ys, yt, max_points=300, seed=7, n_neighbors=10)
    assert a.coords.shape == (300, 2) and np.isfinite(a.coords).all()
    assert a.n_source == 180 and a.n_target == 120
    assert a.pca_dims == 50
    np.testing.assert_array_equal(a.coords, b.coords)     # same seed, same picture
    # unlabelled target works too, and the two domains form separate neighbourhoods:
    # nearly every point's nearest neighbour in the plane is from its own domain
    c = umap_embedding(xs, xt, ys, None, max_points=300, seed=7, n_neighbors=10)
    assert (c.label[c.domain == 1] == -1).all()
    d2 = ((a.coords[:, None] - a.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    same = a.domain[d2.argmin(1)] == a.domain
    assert same.mean() > 0.9
    json.dumps(a.to_dict())
