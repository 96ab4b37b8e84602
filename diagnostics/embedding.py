"""2-D projections of source and target features, for the "do the domains overlap?" picture.

UMAP (McInnes, Healy & Melville, arXiv:1802.03426, 2018) builds a fuzzy k-nearest-
neighbour graph of the points and lays it out in 2-D by cross-entropy between the
high- and low-dimensional graphs; it keeps local neighbourhoods, so two domains that
the model maps to different places show as separate islands, and classes that collapse
into one blob show as one. The picture is a *view*, not a test: the distances between
islands mean little, which is why the numeric gap statistics live elsewhere.

Pipeline: stack source and target features -> stratified subsample by (domain, class)
to ≤ ``max_points`` -> standardise + PCA to ≤ ``pca_dims`` (removes noise directions and
makes the kNN search cheap) -> UMAP(random_state=seed) to 2-D. With a fixed seed umap
runs single-threaded and is reproducible. ``method="pca"`` is a cheap deterministic
2-D PCA for tests and quick runs.

Cost note: the first UMAP call in a process compiles numba kernels; up to
:data:`EXACT_KNN_MAX_POINTS` points the neighbour graph is exact (:func:`exact_knn`), which
spares the nearest-neighbour search's kernels (``benchmarks/bench_umap_knn.py``, one
thread, 2,000 points: first call in a new process 16.7 → 8.6 s, a second call 4.6 → 1.9 s).
The layout's random stream differs from NN-descent's (which drew from the same seed first),
so the picture is another draw of the same layout, not the old coordinates.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from adapt.data.splits import stratified_subsample
from adapt.errors import UserError

__all__ = ["EmbeddingResult", "umap_embedding", "pca_embedding", "stratified_cap"]

METHODS = ("umap", "pca")


@dataclass
class EmbeddingResult:
    """coords [M, 2] float32; domain [M] int8 (0 = source, 1 = target); label [M] int64
    (−1 = unknown); index [M] int64 — the row's position within its own domain's
    feature array; n_source / n_target — points of each domain kept (M = their sum);
    n_source_total / n_target_total — points given before subsampling."""

    coords: np.ndarray
    domain: np.ndarray
    label: np.ndarray
    index: np.ndarray
    n_source: int
    n_target: int
    n_source_total: int
    n_target_total: int
    method: str
    pca_dims: int
    explained_variance: float          # share of variance the PCA step kept
    seed: int
    seconds: float

    def to_dict(self, decimals: int = 3) -> dict:
        return {
            "method": self.method,
            "coords": np.round(self.coords.astype(np.float64), decimals).tolist(),
            "domain": self.domain.astype(int).tolist(),
            "label": self.label.astype(int).tolist(),
            "index": self.index.astype(int).tolist(),
            "n_source": self.n_source, "n_target": self.n_target,
            "n_source_total": self.n_source_total, "n_target_total": self.n_target_total,
            "pca_dims": self.pca_dims,
            "explained_variance": round(float(self.explained_variance), 4),
            "seed": self.seed,
            "seconds": round(self.seconds, 2),
        }


def _as_2d(x, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise UserError(f"embedding: {name} must be [N, D], got shape {a.shape}")
    if not np.isfinite(a).all():
        raise UserError(f"embedding: {name} contains NaN or inf")
    return a.astype(np.float32, copy=False)


def _as_labels(y, n: int, name: str) -> np.ndarray:
    if y is None:
        return np.full(n, -1, dtype=np.int64)
    a = (y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)).reshape(-1)
    if len(a) != n:
        raise UserError(f"embedding: {len(a)} {name} for {n} feature rows")
    return a.astype(np.int64)


def stratified_cap(groups: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` rows, every group (e.g. domain×class)
    keeping its proportion (largest-remainder rounding, at least one row per group
    when the cap allows), drawn with a fixed seed. All rows when there are few enough."""
    return stratified_subsample(groups, max_points, seed, keep_every_group=True, what="embedding: max_points")


def _pca(x: np.ndarray, dims: int, seed: int) -> tuple[np.ndarray, float]:
    """Standardise columns, then PCA to ``dims`` (≤ rank). Returns (scores, variance share)."""
    from sklearn.decomposition import PCA  # late: scikit-learn is slow to import

    std = x.std(0)
    z = (x - x.mean(0)) / np.where(std > 1e-12, std, 1.0)
    dims = int(min(dims, z.shape[0], z.shape[1]))
    if dims < 1:
        raise UserError("embedding: need at least one feature column and one row")
    pca = PCA(n_components=dims, random_state=seed, svd_solver="auto")
    scores = pca.fit_transform(z).astype(np.float32)
    return scores, float(pca.explained_variance_ratio_.sum())


def umap_embedding(
    source_features,
    target_features,
    source_labels=None,
    target_labels=None,
    *,
    max_points: int = 5000,
    pca_dims: int = 50,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    method: str = "umap",
) -> EmbeddingResult:
    """2-D embedding of source [Ns, D] and target [Nt, D] features together.

    Rows are subsampled to ≤ ``max_points`` stratified by (domain, class) with ``seed``;
    PCA to ≤ ``pca_dims``; then UMAP (``method="umap"``; ``n_neighbors`` capped at
    M − 1) or the first two principal components (``method="pca"``).
    Same inputs and seed -> identical coordinates.
    """
    if method not in METHODS:
        raise UserError(f"embedding: method={method!r} is not one of {', '.join(METHODS)}")
    t0 = time.perf_counter()
    xs = _as_2d(source_features, "source_features")
    xt = _as_2d(target_features, "target_features")
    if xs.shape[1] != xt.shape[1]:
        raise UserError(f"embedding: source features are {xs.shape[1]}-d, target features "
                        f"{xt.shape[1]}-d (same extractor needed)")
    ys = _as_labels(source_labels, len(xs), "source_labels")
    yt = _as_labels(target_labels, len(xt), "target_labels")
    x = np.concatenate([xs, xt])
    dom = np.concatenate([np.zeros(len(xs), np.int8), np.ones(len(xt), np.int8)])
    lab = np.concatenate([ys, yt])
    idx = np.concatenate([np.arange(len(xs)), np.arange(len(xt))])
    if len(x) < 3:
        raise UserError(f"embedding: need at least 3 points, got {len(x)}")

    keep = stratified_cap(dom.astype(np.int64) * (lab.max() + 2) + (lab + 1), max_points, seed)
    x, dom, lab, idx = x[keep], dom[keep], lab[keep], idx[keep]

    if method == "pca":
        scores, var = _pca(x, 2, seed)
        coords = scores if scores.shape[1] == 2 else np.pad(scores, ((0, 0), (0, 2 - scores.shape[1])))
        dims = 2
    else:
        scores, var = _pca(x, pca_dims, seed)
        dims = scores.shape[1]
        coords = _umap(scores, seed, n_neighbors, min_dist)
    return EmbeddingResult(
        coords=np.ascontiguousarray(coords, dtype=np.float32), domain=dom, label=lab, index=idx,
        n_source=int((dom == 0).sum()), n_target=int((dom == 1).sum()),
        n_source_total=len(xs), n_target_total=len(xt), method=method, pca_dims=dims,
        explained_variance=var, seed=seed, seconds=time.perf_counter() - t0,
    )


def pca_embedding(source_features, target_features, source_labels=None, target_labels=None,
                  *, max_points: int = 5000, seed: int = 0) -> EmbeddingResult:
    """``umap_embedding(..., method="pca")``: the cheap deterministic 2-D view."""
    return umap_embedding(source_features, target_features, source_labels, target_labels,
                          max_points=max_points, seed=seed, method="pca")


#: up to this many points the neighbour graph is computed exactly (umap-learn before 0.5
#: did the same below 4,096 points); above it UMAP's own approximate search (NN-descent)
EXACT_KNN_MAX_POINTS = 4096


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row of ``x`` [M, D] among the rows, itself
    first (Euclidean; brute force, O(M² D)): indices [M, k] int32 and distances [M, k]
    float32, nearest first — the layout UMAP's ``precomputed_knn`` takes.

    Why not UMAP's own search: on a few thousand points NN-descent (pynndescent) finds the
    same graph (recall 0.9995 at 1,200 points, 0.9997 at 2,000: ``benchmarks/bench_umap_knn.py``)
    but compiles its numba kernels in every new process — 6-8 s of the audit's embedding
    worker, more than the whole layout takes."""
    from sklearn.neighbors import NearestNeighbors  # late: scikit-learn is slow to import

    dist, ind = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors(x)
    return ind.astype(np.int32), dist.astype(np.float32)


def _umap(x: np.ndarray, seed: int, n_neighbors: int, min_dist: float) -> np.ndarray:
    import umap  # late: umap (numba) takes seconds to import

    n_neighbors = int(max(2, min(n_neighbors, len(x) - 1)))
    knn = exact_knn(x, n_neighbors) if len(x) <= EXACT_KNN_MAX_POINTS else None
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist,
                        random_state=seed, init="spectral" if len(x) > n_neighbors + 2 else "random",
                        precomputed_knn=(*knn, None) if knn is not None else (None, None, None))
    with warnings.catch_warnings():
        # "n_jobs overridden to 1 by setting random_state": expected, that is the price
        # of reproducibility.
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*random_state.*")
        # a precomputed graph has no search index: the embedding cannot place new points
        # later (``transform``), which the audit never asks of it. Only that warning: one
        # saying the graph is ignored (too few neighbours, other rows) must still be heard
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\] \(knn_search_index\) is not an NNDescent")
        return reducer.fit_transform(x)
