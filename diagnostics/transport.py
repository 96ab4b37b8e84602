"""Optimal-transport (Wasserstein) distance between two feature samples, via POT.

Exact route (``ot.emd2``, network simplex): uniform weights 1/m and 1/n and
cost C_ij = ‖x_i − y_j‖^p, i.e. the squared Euclidean cost for p = 2 (default)
and the Euclidean cost for p = 1. ``ot.emd2`` returns min_π ⟨π, C⟩ = W_p^p;
we return W_p = (W_p^p)^{1/p}, in feature units. Cost O(N³) time and N² memory,
so samples above ``max_points`` are subsampled (seeded, without replacement).

Sliced route (``ot.sliced_wasserstein_distance``; Bonneel et al. 2015): the
average over random unit directions θ of the 1-D W_p^p of the projections,
SW_p = (E_θ W_p^p(θᵀX, θᵀY))^{1/p}, O(L · N log N) for L projections. SW_p is on a
smaller scale than W_p: for a translation by Δ, W_p = ‖Δ‖ while
SW_p = ‖Δ‖ (E|θ₁|^p)^{1/p} (= ‖Δ‖/√d for p = 2). We report
``distance = SW_p / (E|θ₁|^p)^{1/p}`` so that translations read the same on both
routes; for p = 2 this is √d·SW₂, which never exceeds W₂ (Bonnotte 2013:
SW₂² ≤ W₂²/d), with equality for translations and isotropic scalings. The raw
SW_p is kept in ``sliced``.

``method="auto"`` uses the exact route when both samples have ≤ ``max_points``
points and the sliced route (on all points) beyond.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from adapt.errors import UserError
from diagnostics.arrays import feature_matrix

__all__ = ["TransportResult", "wasserstein_distance", "sliced_scale"]


@dataclass
class TransportResult:
    """A Wasserstein distance and how it was obtained.

    ``distance``: W_p in feature units (sliced: the rescaled SW_p, see module doc);
    ``method``: ``"emd"`` or ``"sliced"``; ``n_used_x``/``n_used_y``: points that
    entered the computation after subsampling.
    """

    distance: float
    method: str
    p: int
    cost: str
    n_x: int
    n_y: int
    n_used_x: int
    n_used_y: int
    projections: int | None = None
    sliced: float | None = None

    def __float__(self) -> float:
        return float(self.distance)

    def to_dict(self) -> dict:
        return asdict(self)


def sliced_scale(d: int, p: int) -> float:
    """(E|θ₁|^p)^{1/p} for θ uniform on the unit sphere in R^d:
    E|θ₁|^p = Γ(d/2) Γ((p+1)/2) / (√π Γ((d+p)/2)). For p = 2 this is 1/√d."""
    log_e = (math.lgamma(d / 2) + math.lgamma((p + 1) / 2)
             - 0.5 * math.log(math.pi) - math.lgamma((d + p) / 2))
    return math.exp(log_e / p)


def _subsample(a: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    if a.shape[0] <= k:
        return a
    return a[rng.choice(a.shape[0], size=k, replace=False)]


def wasserstein_distance(
    x,
    y,
    max_points: int = 2000,
    seed: int = 0,
    p: int = 2,
    method: str = "auto",
    projections: int = 200,
) -> TransportResult:
    """Wasserstein-p distance between the empirical distributions of ``x`` [m, d] and ``y`` [n, d].

    Args:
        max_points: exact EMD above this many points per sample subsamples
            (``method="emd"``) or switches to the sliced route (``"auto"``).
        seed: subsampling and projection seed.
        p: 1 (Euclidean cost) or 2 (squared Euclidean cost).
        method: ``"auto"``, ``"emd"`` or ``"sliced"``.
        projections: number of random directions of the sliced route.
    """
    import ot  # late: POT takes seconds to import

    if p not in (1, 2):
        raise UserError(f"p: must be 1 or 2, got {p}")
    if method not in ("auto", "emd", "sliced"):
        raise UserError(f"method: {method!r} is not one of ['auto', 'emd', 'sliced']")
    if max_points < 2:
        raise UserError(f"max_points: must be >= 2, got {max_points}")
    xa, ya = feature_matrix(x, "x", allow_vector=True), feature_matrix(y, "y", allow_vector=True)
    if xa.shape[1] != ya.shape[1]:
        raise UserError(f"x, y: feature dimensions differ ({xa.shape[1]} vs {ya.shape[1]})")
    m, n, d = xa.shape[0], ya.shape[0], xa.shape[1]
    cost = "sqeuclidean" if p == 2 else "euclidean"
    if method == "auto":
        method = "emd" if max(m, n) <= max_points else "sliced"

    if method == "sliced":
        sw = float(ot.sliced_wasserstein_distance(xa, ya, n_projections=int(projections), p=p, seed=int(seed)))
        return TransportResult(
            distance=sw / sliced_scale(d, p), method="sliced", p=p, cost=cost, n_x=m, n_y=n,
            n_used_x=m, n_used_y=n, projections=int(projections), sliced=sw,
        )

    rng = np.random.default_rng(int(seed))
    xs, ys = _subsample(xa, max_points, rng), _subsample(ya, max_points, rng)
    c = ot.dist(xs, ys, metric=cost)
    a = np.full(xs.shape[0], 1.0 / xs.shape[0])
    b = np.full(ys.shape[0], 1.0 / ys.shape[0])
    wpp = float(ot.emd2(a, b, c, numItermax=max(100000, 50 * xs.shape[0] * ys.shape[0])))
    return TransportResult(
        distance=max(wpp, 0.0) ** (1.0 / p), method="emd", p=p, cost=cost, n_x=m, n_y=n,
        n_used_x=xs.shape[0], n_used_y=ys.shape[0],
    )
