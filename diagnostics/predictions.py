"""Statistics of a classifier's predictions: predicted-class histogram, entropies, the
information-maximisation score, and the confusion matrix in BBSE's convention.

* H(E_x p(y|x)) (marginal entropy) against its maximum log K; E_x H(p(y|x));
* IM = H(E_x p(y|x)) − E_x H(p(y|x)) (high: diverse and confident predictions;
  Gomes et al. 2010, Liang et al. SHOT 2020);
* C[pred, true] (Lipton et al. 2018: rows = predicted class, columns = true class).
  scikit-learn's ``confusion_matrix`` is [true, pred] — the transpose.
* whether two predicted-class histograms differ (a χ² test of homogeneity): the drift
  monitor's "the predictions moved" and the collapse report's "the label mix changed".

Entropies are in nats.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from adapt.errors import UserError

__all__ = ["prediction_histogram", "marginal_entropy", "mean_entropy", "im_score", "confusion_matrix",
           "to_numpy", "probability_matrix", "shannon_entropy", "total_variation", "prediction_shift_test"]


# --------------------------------------------------------------------------- inputs
def to_numpy(a) -> np.ndarray:
    """``a`` (torch tensor, numpy array or nested lists) as a numpy array (detached, on the CPU)."""
    if hasattr(a, "detach"):  # a torch tensor, without importing torch here
        return a.detach().cpu().numpy()
    return np.asarray(a)


def probability_matrix(p, name: str) -> np.ndarray:
    """``p`` as float64 probabilities [N, K] (K >= 2, rows summing to 1); else a UserError naming ``name``."""
    arr = to_numpy(p).astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise UserError(f"{name}: expected probabilities [N, K] with K >= 2, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < -1e-9).any() or not np.allclose(arr.sum(1), 1.0, atol=1e-3):
        raise UserError(f"{name}: rows must be probabilities (non-negative, summing to 1) — pass softmax outputs, not logits")
    return arr


def shannon_entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """H(p) = -sum p log p along ``axis`` (nats; 0 log 0 = 0)."""
    p = np.clip(p, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=axis)


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance between two distributions over the same classes: ½·Σ|a − b| in [0, 1]."""
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


# --------------------------------------------------------------------------- statistics
def prediction_histogram(predictions, num_classes: int | None = None) -> np.ndarray:
    """Share of samples predicted as each class [K] (sums to 1).

    ``predictions``: probabilities/logits [N, K] (argmax is taken) or class ids [N].
    """
    arr = to_numpy(predictions)
    if arr.ndim == 2:
        k = arr.shape[1] if num_classes is None else num_classes
        ids = arr.argmax(1)
    elif arr.ndim == 1:
        ids = arr.astype(np.int64)
        if num_classes is None:
            raise UserError("num_classes: required when predictions are class ids")
        k = num_classes
    else:
        raise UserError(f"predictions: expected [N, K] or [N], got shape {arr.shape}")
    if len(ids) == 0:
        raise UserError("predictions: empty")
    if ids.min() < 0 or ids.max() >= k:
        raise UserError(f"predictions: class ids must lie in [0, {k}), got range [{ids.min()}, {ids.max()}]")
    return np.bincount(ids, minlength=k).astype(np.float64) / len(ids)


def marginal_entropy(probs) -> float:
    """H(E_x p(y|x)) in nats: entropy of the mean prediction (≤ log K; 0 = one class)."""
    return float(shannon_entropy(probability_matrix(probs, "probs").mean(0)))


def mean_entropy(probs) -> float:
    """E_x H(p(y|x)) in nats: average per-sample uncertainty (0 = fully confident)."""
    return float(shannon_entropy(probability_matrix(probs, "probs"), axis=1).mean())


def im_score(probs) -> float:
    """Information-maximisation score H(E p) − E H(p) in nats (the mutual information
    between input and predicted label under the empirical distribution). Near 0 for a
    collapsed or an uncertain model; up to log K for diverse confident predictions."""
    p = probability_matrix(probs, "probs")
    return float(shannon_entropy(p.mean(0)) - shannon_entropy(p, axis=1).mean())


def confusion_matrix(labels, predictions, num_classes: int, normalize: str | None = "joint") -> np.ndarray:
    """Confusion matrix C[pred, true] from labels [N] and predicted ids [N] (or probs [N, K]).

    ``normalize``: ``"joint"`` (C sums to 1), ``"conditional"`` (each column sums to 1;
    a column of a class absent from ``labels`` stays 0), or None (counts).
    """
    y = to_numpy(labels).astype(np.int64).reshape(-1)
    pr = to_numpy(predictions)
    yhat = pr.argmax(1) if pr.ndim == 2 else pr.astype(np.int64).reshape(-1)
    if len(y) != len(yhat) or len(y) == 0:
        raise UserError(f"labels, predictions: lengths differ or are empty ({len(y)} vs {len(yhat)})")
    if y.min() < 0 or y.max() >= num_classes or yhat.min() < 0 or yhat.max() >= num_classes:
        raise UserError(f"labels, predictions: class ids must lie in [0, {num_classes})")
    c = np.zeros((num_classes, num_classes))
    np.add.at(c, (yhat, y), 1.0)
    if normalize == "joint":
        return c / c.sum()
    if normalize == "conditional":
        col = c.sum(0, keepdims=True)
        return np.divide(c, col, out=np.zeros_like(c), where=col > 0)
    if normalize is None:
        return c
    raise UserError(f"normalize: {normalize!r} is not one of ['joint', 'conditional', None]")


def prediction_shift_test(ref_counts, batch_counts, *, permutations: int = 2000,
                          seed: int = 0) -> dict[str, Any]:
    """χ² test of homogeneity of two predicted-class count vectors [K].

    Statistic: Σ (O − E)² / E over the 2 × K table (classes nobody predicts dropped).
    p from the χ² distribution with K' − 1 degrees of freedom when every expected count
    is ≥ 5; otherwise by permuting the pooled predictions (p = (1 + #{χ²_b ≥ χ²}) / (1 + B)).
    """
    from scipy.stats import chi2_contingency  # late: scipy.stats takes seconds to import

    table = np.vstack([np.asarray(ref_counts, np.int64), np.asarray(batch_counts, np.int64)])
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:  # both predict one and the same class: nothing differs
        return {"chi2": 0.0, "p_value": 1.0, "dof": 0, "method": "degenerate"}
    chi2, p, dof, expected = chi2_contingency(table, correction=False)
    if expected.min() >= 5:
        return {"chi2": float(chi2), "p_value": float(p), "dof": int(dof), "method": "chi2"}
    rng = np.random.default_rng(seed)
    pooled = np.repeat(np.arange(table.shape[1]), table.sum(0))
    n_ref = int(table[0].sum())
    col = table.sum(0)
    exp_ref, exp_batch = col * n_ref / len(pooled), col * (len(pooled) - n_ref) / len(pooled)
    exceed = 0
    for _ in range(permutations):
        perm = rng.permutation(pooled)
        r = np.bincount(perm[:n_ref], minlength=len(col))
        stat = ((r - exp_ref) ** 2 / exp_ref).sum() + (((col - r) - exp_batch) ** 2 / exp_batch).sum()
        exceed += stat >= chi2 - 1e-12
    return {"chi2": float(chi2), "p_value": (1 + exceed) / (1 + permutations), "dof": int(dof),
            "method": f"permutation ({permutations}; an expected count < 5)"}
