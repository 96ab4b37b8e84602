"""Fréchet distance between two Gaussians fitted to feature sets (FID when the
features are Inception's).

    d²(N(μ1, Σ1), N(μ2, Σ2)) = ‖μ1 − μ2‖² + Tr Σ1 + Tr Σ2 − 2 Tr (Σ1 Σ2)^½

(Fréchet 1957; Dowson & Landau 1982; Heusel et al., NeurIPS 2017 for FID.)

``Tr (Σ1 Σ2)^½`` is computed without ``scipy.linalg.sqrtm`` and without complex
numbers, in float64, by one of two exact routes:

* ``method="eigh"``: Σ1 Σ2 is similar to the symmetric PSD matrix
  M = Σ1^½ Σ2 Σ1^½, so Tr (Σ1 Σ2)^½ = Σ_i √max(λ_i(M), 0). Two ``eigh`` calls
  (one for Σ1^½, one for the eigenvalues of M).
* ``method="svd"`` (default, faster): for any factors Σk = Lk Lkᵀ the
  eigenvalues of Σ1 Σ2 are the squared singular values of L1ᵀ L2, so
  Tr (Σ1 Σ2)^½ = ‖L1ᵀ L2‖_* (nuclear norm), read off one ``eigvalsh`` of the
  Gram matrix of L1ᵀ L2 (cheaper than ``svdvals``, see
  :func:`_nuclear_norm_of_product`). Factors are
  Cholesky factors; when a covariance is rank deficient (Cholesky fails) the
  exact factor V diag(√w) from its ``eigh`` is used instead of a jittered
  Cholesky, and when the raw features are at hand
  with n ≤ d the centred data / √(n − 1) is the factor (an n-column matrix, so
  the SVD is only n1 × n2).

Negative eigenvalues from rounding are clipped at 0, so the result is always
real; the final value is clipped at 0 too. Both routes agree with pytorch-fid's
``calculate_frechet_distance`` on well-conditioned covariances and stay finite
where ``sqrtm`` returns complex or garbage (rank-deficient Σ, n < d).

The estimate is biased upwards at small n (Chong & Forsyth, CVPR 2020), so
:func:`frechet_report` states n and a bootstrap interval, and a
:class:`FrechetSampleSizeWarning` is raised when n < d.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

from adapt.errors import UserError
from diagnostics.moments import Moments

__all__ = [
    "FrechetSampleSizeWarning",
    "FrechetInterval",
    "FrechetResult",
    "frechet_distance",
    "trace_sqrt_product",
    "frechet_from_moments",
    "frechet_from_features",
    "frechet_bootstrap",
    "frechet_report",
]

_METHODS = ("eigh", "svd")


class FrechetSampleSizeWarning(UserWarning):
    """Fewer samples than feature dimensions: the covariance is rank deficient and
    the Fréchet distance is strongly biased (still finite and real here)."""


# --------------------------------------------------------------------------- helpers
def _f64(a, device=None) -> torch.Tensor:
    t = torch.as_tensor(a) if not isinstance(a, torch.Tensor) else a
    return t.to(dtype=torch.float64, device=device if device is not None else t.device)


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise UserError(f"method: {method!r} is not one of {list(_METHODS)}")


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root V diag(√max(w, 0)) Vᵀ via ``eigh``."""
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _psd_factor(sigma: torch.Tensor) -> torch.Tensor:
    """A factor L with L Lᵀ = Σ (Σ symmetric PSD).

    Cholesky when Σ is numerically positive definite (backward stable, so exact
    to rounding). When it is not (rank deficient Σ, n ≤ d), the factor is
    V diag(√max(w, 0)) from ``eigh``. We tried a rounding-level diagonal jitter
    instead: it put √jitter-sized columns into the null space and moved
    Tr(Σ1Σ2)^½ by ~1e-7 relative on rank-deficient pairs, where the eigen factor
    is exact to ~1e-10, so no jitter is used.
    """
    L, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0:
        return L
    w, v = torch.linalg.eigh(sigma)
    return v * w.clamp_min(0).sqrt()


def _nuclear_norm_of_product(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """‖F1ᵀ F2‖_* for factors F1 [d, r1], F2 [d, r2].

    The singular values of P = F1ᵀF2 are the square roots of the eigenvalues of
    the smaller Gram matrix (PPᵀ or PᵀP), so ‖P‖_* = Σ √max(λ_i, 0). We take that
    route rather than ``svdvals(P)``: LAPACK's bidiagonal SVD (gesdd) costs about
    twice the flops of the tridiagonal ``eigvalsh`` and measured 19 s against 4 s
    at d = 2048 on a 2-core CPU. Squaring costs precision only on singular values
    below √eps·σ_max, whose contribution to the sum is at rounding level.
    """
    p = f1.T @ f2
    gram = p @ p.T if p.shape[0] <= p.shape[1] else p.T @ p
    lam = torch.linalg.eigvalsh(gram)
    return lam.clamp_min(0).sqrt().sum()


def _centred_factor(x: torch.Tensor) -> torch.Tensor:
    """(x − mean)ᵀ / √(n − 1): a [d, n] factor of the unbiased covariance."""
    n = x.shape[0]
    return (x - x.mean(dim=0)).T / math.sqrt(n - 1)


def _warn_if_small(n: int, d: int, which: str) -> None:
    if n < d:
        warnings.warn(
            f"{which}: {n} samples for {d} feature dimensions (n < d); the covariance is "
            "rank deficient and the Fréchet distance is strongly biased — compare only "
            "values computed at the same n",
            FrechetSampleSizeWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------- core
def trace_sqrt_product(sigma1, sigma2, method: str = "svd") -> float:
    """Tr (Σ1 Σ2)^½ for symmetric PSD ``sigma1``, ``sigma2`` [d, d] (float64 inside).

    ``eigh``: Σ √max(λ_i, 0) over eigenvalues of Σ1^½ Σ2 Σ1^½.
    ``svd``: nuclear norm of L1ᵀ L2 with Σk = Lk Lkᵀ.
    """
    _check_method(method)
    s1 = _f64(sigma1)
    s2 = _f64(sigma2, device=s1.device)
    if method == "eigh":
        r = _psd_sqrt(s1)
        m = r @ s2 @ r
        lam = torch.linalg.eigvalsh(0.5 * (m + m.T))
        return float(lam.clamp_min(0).sqrt().sum())
    return float(_nuclear_norm_of_product(_psd_factor(s1), _psd_factor(s2)))


def _assemble(mu1, mu2, tr1: float, tr2: float, tr_sqrt: float) -> float:
    diff = mu1 - mu2
    value = float(diff @ diff) + tr1 + tr2 - 2.0 * tr_sqrt
    # Rounding can push a distance between (near-)identical Gaussians below 0.
    return max(value, 0.0)


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "svd") -> float:
    """Fréchet distance d² between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: means [d] (tensor or array).
        sigma1, sigma2: covariances [d, d], symmetric PSD.
        method: ``"svd"`` (nuclear norm of L1ᵀL2, default) or ``"eigh"``.

    Returns:
        The squared Fréchet distance (in squared feature units) as a float ≥ 0 —
        the number pytorch-fid calls FID.
    """
    _check_method(method)
    m1 = _f64(mu1)
    dev = m1.device
    m2, s1, s2 = _f64(mu2, dev), _f64(sigma1, dev), _f64(sigma2, dev)
    d = m1.shape[0]
    if m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise UserError(
            f"frechet_distance: shapes do not match (mu1 {tuple(m1.shape)}, mu2 {tuple(m2.shape)}, "
            f"sigma1 {tuple(s1.shape)}, sigma2 {tuple(s2.shape)})"
        )
    tr_sqrt = trace_sqrt_product(s1, s2, method=method)
    return _assemble(m1, m2, float(torch.trace(s1)), float(torch.trace(s2)), tr_sqrt)


def frechet_from_moments(m1: Moments, m2: Moments, method: str = "svd") -> float:
    """Fréchet distance from two streaming :class:`~diagnostics.moments.Moments`.

    Warns (:class:`FrechetSampleSizeWarning`) when either n < d.
    """
    if m1.dim != m2.dim:
        raise UserError(f"frechet_from_moments: feature dimensions differ ({m1.dim} vs {m2.dim})")
    _warn_if_small(m1.n, m1.dim, "frechet (first sample)")
    _warn_if_small(m2.n, m2.dim, "frechet (second sample)")
    return frechet_distance(m1.mean, m1.cov, m2.mean, m2.cov.to(m1.mean.device), method=method)


def _feature_pair(x, y, method: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The checks every feature-level entry point makes: ``method`` known, ``x`` [n1, d]
    and ``y`` [n2, d] float64 matrices with n ≥ 2 rows and the same d (``y`` moved to
    ``x``'s device). ``where`` names the caller in the error message."""
    _check_method(method)
    xt, yt = _f64(x), _f64(y)
    for t, name in ((xt, "x"), (yt, "y")):
        if t.ndim != 2 or t.shape[0] < 2:
            raise UserError(f"{where}: {name}: expected a [N, D] feature matrix with N >= 2, "
                            f"got shape {tuple(t.shape)}")
    yt = yt.to(xt.device)
    if xt.shape[1] != yt.shape[1]:
        raise UserError(f"{where}: feature dimensions differ ({xt.shape[1]} vs {yt.shape[1]})")
    return xt, yt


def _frechet_features_f64(x: torch.Tensor, y: torch.Tensor, method: str) -> float:
    """Fréchet distance of two float64 feature matrices (no checks, no warnings)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    d = x.shape[1]
    if method == "svd":
        # With n ≤ d the centred data is the thinner factor; otherwise factor Σ.
        if x.shape[0] <= d:
            f1 = _centred_factor(x)
        else:
            f1 = _psd_factor(torch.cov(x.T))
        if y.shape[0] <= d:
            f2 = _centred_factor(y)
        else:
            f2 = _psd_factor(torch.cov(y.T))
        tr1 = float((f1 * f1).sum())
        tr2 = float((f2 * f2).sum())
        return _assemble(mu1, mu2, tr1, tr2, float(_nuclear_norm_of_product(f1, f2)))
    s1, s2 = torch.atleast_2d(torch.cov(x.T)), torch.atleast_2d(torch.cov(y.T))
    return _assemble(mu1, mu2, float(torch.trace(s1)), float(torch.trace(s2)),
                     trace_sqrt_product(s1, s2, method="eigh"))


def frechet_from_features(x, y, method: str = "svd") -> float:
    """Fréchet distance between Gaussians fitted to features ``x`` [n1, d] and ``y`` [n2, d].

    Covariances are unbiased (n − 1). With n ≤ d and ``method="svd"`` the centred
    data is used as the covariance factor, so the cost is an n1 × n2 SVD.
    """
    xt, yt = _feature_pair(x, y, method, "frechet_from_features")
    _warn_if_small(xt.shape[0], xt.shape[1], "frechet (x)")
    _warn_if_small(yt.shape[0], yt.shape[1], "frechet (y)")
    return _frechet_features_f64(xt, yt, method)


# --------------------------------------------------------------------------- bootstrap
@dataclass
class FrechetInterval:
    """Bootstrap interval of the Fréchet distance (rows resampled with replacement
    within each sample).

    ``bias`` is the bootstrap estimate of the estimator's bias, mean(d*) − d̂
    (positive: the Fréchet distance is biased upwards at finite n). ``kind`` is
    ``"basic"`` (default) or ``"percentile"``.

    ``estimate`` is the plug-in d̂; ``centre`` the point the interval is built around
    and always contains: for ``basic`` the bias-corrected estimate 2d̂ − median(d*)
    (clipped at 0), for ``percentile`` the bootstrap median. At small n the plug-in can
    lie ABOVE a basic interval (its upward bias is what the interval corrects), so a
    report states ``centre`` with the interval and the plug-in beside it
    (:meth:`describe`).
    """

    estimate: float
    low: float
    high: float
    level: float
    kind: str
    bias: float
    n_boot: int
    n_x: int
    n_y: int
    dim: int
    centre: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line a reader can trust: which estimate the interval belongs to."""
        name = "bias-corrected" if self.kind == "basic" else "bootstrap median"
        text = (f"{name} {self.centre:.4g}, {100 * self.level:.0f}% {self.kind}-bootstrap CI "
                f"{self.low:.4g}–{self.high:.4g}")
        if not self.low <= self.estimate <= self.high:
            text += f" (plug-in {self.estimate:.4g} is biased upwards at n = {min(self.n_x, self.n_y)})"
        return text


def frechet_bootstrap(x, y, n_boot: int = 100, seed: int = 0, level: float = 0.95,
                      method: str = "svd", kind: str = "basic") -> FrechetInterval:
    """Bootstrap interval for the Fréchet distance between ``x`` and ``y``.

    Each replicate resamples the rows of x and of y with replacement and
    recomputes the distance d*. Resampling with replacement repeats rows, which
    lowers the effective n and so *raises* the (upward) bias: the percentile
    interval [q_{α/2}(d*), q_{1−α/2}(d*)] can lie wholly above d̂ at small n.
    The default ``kind="basic"`` (pivotal) interval [2d̂ − q_{1−α/2}, 2d̂ − q_{α/2}]
    reflects that shift back (Davison & Hinkley 1997, §5.2), clipped at 0; it is an
    interval for the bias-corrected estimate 2d̂ − median(d*) (``centre``), which it
    always contains — the plug-in d̂ itself may lie above it.
    """
    if n_boot < 1:
        raise UserError(f"n_boot: must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise UserError(f"level: must be in (0, 1), got {level}")
    if kind not in ("basic", "percentile"):
        raise UserError(f"kind: {kind!r} is not one of ['basic', 'percentile']")
    xt, yt = _feature_pair(x, y, method, "frechet_bootstrap")
    _warn_if_small(xt.shape[0], xt.shape[1], "frechet_bootstrap (x)")
    _warn_if_small(yt.shape[0], yt.shape[1], "frechet_bootstrap (y)")
    estimate = _frechet_features_f64(xt, yt, method)
    gen = torch.Generator().manual_seed(int(seed))
    n1, n2 = xt.shape[0], yt.shape[0]
    values = np.empty(n_boot)
    for b in range(n_boot):
        i1 = torch.randint(0, n1, (n1,), generator=gen).to(xt.device)
        i2 = torch.randint(0, n2, (n2,), generator=gen).to(xt.device)
        values[b] = _frechet_features_f64(xt[i1], yt[i2], method)
    alpha = (1.0 - level) / 2.0
    q_lo, q_hi = np.quantile(values, [alpha, 1.0 - alpha])
    median = float(np.median(values))  # q_lo ≤ median ≤ q_hi, so the centre is inside
    if kind == "basic":
        low, high = max(2.0 * estimate - q_hi, 0.0), max(2.0 * estimate - q_lo, 0.0)
        centre = max(2.0 * estimate - median, 0.0)
    else:
        low, high, centre = q_lo, q_hi, median
    return FrechetInterval(
        estimate=float(estimate), low=float(low), high=float(high), level=float(level),
        kind=kind, bias=float(values.mean() - estimate),
        n_boot=int(n_boot), n_x=int(n1), n_y=int(n2), dim=int(xt.shape[1]), centre=float(centre),
    )


# --------------------------------------------------------------------------- report
@dataclass
class FrechetResult:
    """Everything a report states about a Fréchet distance.

    ``distance`` is d² (what pytorch-fid calls FID); ``mean_term`` = ‖μ1 − μ2‖²
    and ``covariance_term`` = distance − mean_term split it into a location and a
    spread/shape part. ``feature_extractor`` names the features (an Inception
    score is an FID only when it is ``"inception"``).
    """

    distance: float
    mean_term: float
    covariance_term: float
    n_x: int
    n_y: int
    dim: int
    method: str
    feature_extractor: str | None
    interval: FrechetInterval | None
    small_sample: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["interval"] = self.interval.to_dict() if self.interval is not None else None
        return d


def frechet_report(x, y, *, n_boot: int = 100, seed: int = 0, level: float = 0.95,
                   method: str = "svd", feature_extractor: str | None = None) -> FrechetResult:
    """Fréchet distance of features ``x`` [n1, d] vs ``y`` [n2, d] with its split
    into mean and covariance terms and a bootstrap interval (``n_boot=0`` skips it)."""
    xt, yt = _feature_pair(x, y, method, "frechet_report")
    d = xt.shape[1]
    small = min(xt.shape[0], yt.shape[0]) < d
    with warnings.catch_warnings():
        # One warning for the whole report, not one per bootstrap call.
        warnings.simplefilter("ignore", FrechetSampleSizeWarning)
        distance = _frechet_features_f64(xt, yt, method)
        interval = (frechet_bootstrap(xt, yt, n_boot=n_boot, seed=seed, level=level, method=method)
                    if n_boot > 0 else None)
    if small:
        _warn_if_small(min(xt.shape[0], yt.shape[0]), d, "frechet_report")
    diff = xt.mean(0) - yt.mean(0)
    mean_term = float(diff @ diff)
    return FrechetResult(
        distance=float(distance), mean_term=mean_term,
        covariance_term=float(distance - mean_term),
        n_x=int(xt.shape[0]), n_y=int(yt.shape[0]), dim=int(d), method=method,
        feature_extractor=feature_extractor, interval=interval, small_sample=bool(small),
    )
