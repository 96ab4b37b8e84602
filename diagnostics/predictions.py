"""Statistics of a classifier's predictions: predicted-class histogram, entropies, the
information-maximisation score, and the confusion matrix in BBSE's convention.

* H(E_x p(y|x)) (marginal entropy) against its maximum log K; E_x H(p(y|x));
* IM = H(E_x p(y|x)) − E_x H(p(y|x)) (high: diverse and confident predictions;
  Gomes et al. 2010, Liang et al. SHOT 2020);
* C[pred, true] (Lipton et al. 2018: rows = predicted class, columns = true class).
  scikit-learn's ``confusion_matrix`` is [true, pred] — the transpose.

Entropies are in nats.
"""
from __future__ import annotations

import numpy as np

from adapt.errors import UserError

__all__ = ["prediction_histogram", "marginal_entropy", "mean_entropy", "im_score", "confusion_matrix"]


# --------------------------------------------------------------------------- inputs
def _to_np(a) -> np.ndarray:
    try:
        import torch

        if isinstance(a, torch.Tensor):
            return a.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(a)


def _probs(p, name: str) -> np.ndarray:
    arr = _to_np(p).astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise UserError(f"{name}: expected probabilities [N, K] with K >= 2, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < -1e-9).any() or not np.allclose(arr.sum(1), 1.0, atol=1e-3):
        raise UserError(f"{name}: rows must be probabilities (non-negative, summing to 1) — pass softmax outputs, not logits")
    return arr


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(p, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=axis)


def _half_l1(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


# --------------------------------------------------------------------------- statistics
def prediction_histogram(predictions, num_classes: int | None = None) -> np.ndarray:
    """Share of samples predicted as each class [K] (sums to 1).

    ``predictions``: probabilities/logits [N, K] (argmax is taken) or class ids [N].
    """
    arr = _to_np(predictions)
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
    return float(_entropy(_probs(probs, "probs").mean(0)))


def mean_entropy(probs) -> float:
    """E_x H(p(y|x)) in nats: average per-sample uncertainty (0 = fully confident)."""
    return float(_entropy(_probs(probs, "probs"), axis=1).mean())


def im_score(probs) -> float:
    """Information-maximisation score H(E p) − E H(p) in nats (the mutual information
    between input and predicted label under the empirical distribution). Near 0 for a
    collapsed or an uncertain model; up to log K for diverse confident predictions."""
    p = _probs(probs, "probs")
    return float(_entropy(p.mean(0)) - _entropy(p, axis=1).mean())


def confusion_matrix(labels, predictions, num_classes: int, normalize: str | None = "joint") -> np.ndarray:
    """Confusion matrix C[pred, true] from labels [N] and predicted ids [N] (or probs [N, K]).

    ``normalize``: ``"joint"`` (C sums to 1), ``"conditional"`` (each column sums to 1;
    a column of a class absent from ``labels`` stays 0), or None (counts).
    """
    y = _to_np(labels).astype(np.int64).reshape(-1)
    pr = _to_np(predictions)
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
