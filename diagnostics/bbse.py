"""Black-box shift estimation (Lipton, Wang & Smola, ICML 2018).

With the source confusion matrix C measured on held-out *labelled source* data,
μ̂_t = C w, so w = C⁻¹ μ̂_t estimates the target/source label ratio and q̂ = w ⊙ p_s the
target label distribution. The assumption is label shift (p(x|y) unchanged) — check it
(:mod:`diagnostics.label_shift`) before believing q̂.

Confusion-matrix convention (Lipton et al.): rows = predicted class, columns = true
class. ``joint``: C[i, j] = P_s(ŷ = i, y = j) (sums to 1; its column sums are the source
prior). ``conditional``: C[i, j] = P_s(ŷ = i | y = j) (columns sum to 1).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from adapt.errors import UserError
from diagnostics.predictions import total_variation, to_numpy

__all__ = ["BBSEResult", "bbse_weights", "MAX_CONDITION"]

# A confusion matrix this ill-conditioned cannot be inverted meaningfully (e.g. the
# model already predicts one class on the source): BBSE is then not reported.
MAX_CONDITION = 1e6


@dataclass
class BBSEResult:
    """BBSE estimate. ``weights`` w_j = q_t(j)/p_s(j) (importance weights for
    re-weighting source losses; NaN where p_s(j) = 0), ``target_prior`` q̂ (sums to 1),
    ``implied_histogram`` = C_cond q̂ (the predicted histogram that label mix would
    produce), ``residual`` = half-L1(μ̂_t, implied_histogram)."""

    weights: list[float]
    target_prior: list[float]
    source_prior: list[float] | None
    implied_histogram: list[float]
    residual: float
    condition_number: float
    clipped: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        # JSON has no NaN: a class absent from the source has no weight.
        d["weights"] = [None if not math.isfinite(w) else w for w in self.weights]
        return d


def conditional_from_joint(c_joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p_s = c_joint.sum(0)
    c_cond = np.divide(c_joint, p_s[None, :], out=np.zeros_like(c_joint), where=p_s[None, :] > 0)
    return c_cond, p_s


def bbse_weights(
    source_confusion,
    target_pred_distribution,
    kind: str = "joint",
    source_prior=None,
) -> BBSEResult:
    """Black-box shift estimation (Lipton, Wang & Smola, ICML 2018).

    Args:
        source_confusion: C [K, K], rows = predicted, columns = true class, measured
            on held-out labelled source data (not the training split: its confusion
            is optimistic). ``kind="joint"``: C[i, j] = P_s(ŷ=i, y=j) (counts are
            normalised to sum 1), and the source prior is its column sums.
            ``kind="conditional"``: C[i, j] = P_s(ŷ=i | y=j); give ``source_prior``
            to obtain weights.
        target_pred_distribution: μ̂_t [K], the share of target samples predicted as
            each class (:func:`prediction_histogram`).

    Returns:
        :class:`BBSEResult`. joint: w = C⁻¹ μ̂_t; conditional: q = C⁻¹ μ̂_t. Negative
        entries (estimation noise) are clipped at 0 and the target prior
        q̂ = w ⊙ p_s renormalised to sum 1. A singular C is solved by least squares
        (the condition number says how far to trust it).
    """
    c = to_numpy(source_confusion).astype(np.float64)
    mu = to_numpy(target_pred_distribution).astype(np.float64).reshape(-1)
    k = c.shape[0]
    if c.ndim != 2 or c.shape != (k, k) or mu.shape != (k,):
        raise UserError(f"source_confusion, target_pred_distribution: shapes {c.shape} and {mu.shape} do not match [K, K], [K]")
    if (c < 0).any() or (mu < 0).any() or mu.sum() <= 0:
        raise UserError("source_confusion, target_pred_distribution: must be non-negative")
    mu = mu / mu.sum()
    if kind == "joint":
        if c.sum() <= 0:
            raise UserError("source_confusion: all zero")
        c = c / c.sum()
        c_cond, p_s = conditional_from_joint(c)
    elif kind == "conditional":
        c_cond = c
        p_s = None if source_prior is None else to_numpy(source_prior).astype(np.float64).reshape(-1)
        if p_s is not None:
            if p_s.shape != (k,) or (p_s < 0).any() or p_s.sum() <= 0:
                raise UserError(f"source_prior: expected {k} non-negative shares, got {p_s}")
            p_s = p_s / p_s.sum()
    else:
        raise UserError(f"kind: {kind!r} is not one of ['joint', 'conditional']")

    # The joint and conditional systems have the same solution in q (q = w ⊙ p_s);
    # solving the conditional one keeps the code path single.
    cond = float(np.linalg.cond(c_cond))
    if math.isfinite(cond) and cond < 1.0 / np.finfo(np.float64).eps:
        q = np.linalg.solve(c_cond, mu)
    else:
        q = np.linalg.lstsq(c_cond, mu, rcond=None)[0]
    clipped = bool((q < 0).any())
    q = np.clip(q, 0.0, None)
    if q.sum() <= 0:
        # Nothing survives clipping: no label mix explains μ̂_t at all.
        q = np.full(k, 1.0 / k)
    q = q / q.sum()
    implied = c_cond @ q
    if p_s is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(p_s > 0, q / np.where(p_s > 0, p_s, 1.0), np.nan)
    else:
        w = np.full(k, np.nan)
    return BBSEResult(
        weights=[float(v) for v in w],
        target_prior=[float(v) for v in q],
        source_prior=None if p_s is None else [float(v) for v in p_s],
        implied_histogram=[float(v) for v in implied],
        residual=total_variation(mu, implied),
        condition_number=cond if math.isfinite(cond) else float("inf"),
        clipped=clipped,
    )
