"""Classifier two-sample test (C2ST): can a classifier tell sample X from sample Y?

Lopez-Paz & Oquab, "Revisiting Classifier Two-Sample Tests", ICLR 2017. Label the
pooled sample z = x ∪ y with d_i = 0 (x) / 1 (y), train a classifier to predict d, and
use its held-out performance as the statistic: under H0 (P_x = P_y) no classifier beats
chance on held-out points.

Here:

* the classifier is ridge regression of d on the standardised features (a linear
  discriminant; Hastie et al., ESL §4.2). Its out-of-fold scores are a LINEAR function of
  the labels: for fold k with training rows T and held-out rows S,

      ŝ_S = H_k d_T + mean(d_T),   H_k = X̃_S (X̃_Tᵀ X̃_T + λ I)⁻¹ X̃_Tᵀ

  (X̃ = features standardised with the training rows' mean and scale, λ = ``ridge`` · |T|
  — both depend on the features only, never on the labels). So the scores of B
  relabellings cost one GEMM ``H_k @ D_T`` per fold instead of B refits;
* the statistic is the ROC AUC of the out-of-fold scores (every point is scored once,
  by a model that never saw it) — AUC = P(score of a y point > score of an x point);
* the p-value is a permutation test that REFITS the whole cross-validated procedure on
  each relabelling (the folds are drawn without looking at the labels, so the statistic
  is one fixed function of (z, d)): p = (1 + #{AUC_b ≥ AUC}) / (1 + B). This is exact
  under H0 for any B (Phipson & Smyth 2010) — permuting labels against fixed scores
  would not be, since each score depends on the other folds' labels.

One-sided: an AUC below 0.5 is no evidence of a difference (cross-validated AUCs fall
below 0.5 by chance, and systematically when the domains are identical: each held-out
fold's label share is the complement of its training share). A linear classifier sees
differences of the mean (in any direction of feature space), not differences of spread
at equal means — that is what the MMD next to it is for.

The smallest reachable p-value is 1/(1 + B): with B < 1/α − 1 permutations (B < 19 for
α = 0.05) the test cannot reject at level α, which ``decidable`` says.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from adapt.errors import UserError
from diagnostics.arrays import feature_matrix

__all__ = [
    "C2STResult",
    "auc_from_scores",
    "min_permutations",
    "ridge_out_of_fold_scores",
    "classifier_two_sample_test",
]


def min_permutations(alpha: float) -> int:
    """Smallest B whose smallest reachable p-value 1/(1 + B) is ≤ α: ⌈1/α⌉ − 1 (19 for 0.05)."""
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha: must be in (0, 1), got {alpha}")
    return int(math.ceil(1.0 / alpha - 1e-9)) - 1


def auc_from_scores(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC AUC of each column of ``scores`` [N, B] against the 0/1 ``labels`` [N, B]
    (or [N], shared by every column), ties counted as ½ (Mann–Whitney U / (n0 n1)).

    AUC = (Σ_{i: d_i = 1} rank_i − n1(n1 + 1)/2) / (n0 n1), ranks with ties averaged.
    """
    from scipy.stats import rankdata  # late: diagnose imports this module at start-up; scipy.stats is slow

    s = np.asarray(scores, dtype=np.float64)
    squeeze = s.ndim == 1
    if squeeze:
        s = s[:, None]
    d = np.asarray(labels, dtype=np.float64)
    if d.ndim == 1:
        d = np.broadcast_to(d[:, None], s.shape)
    n1 = d.sum(0)
    n0 = d.shape[0] - n1
    if (n1 < 1).any() or (n0 < 1).any():
        raise UserError("auc: both groups need at least one point")
    ranks = rankdata(s, axis=0)
    auc = ((ranks * d).sum(0) - n1 * (n1 + 1) / 2.0) / (n0 * n1)
    return auc[0] if squeeze else auc


def _fold_ids(n: int, folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of each pooled row: a seeded shuffle cut into ``folds`` near-equal parts
    (drawn without the labels, so every relabelling is scored with the same folds)."""
    ids = np.empty(n, dtype=np.int64)
    ids[rng.permutation(n)] = np.arange(n) % folds
    return ids


def ridge_out_of_fold_scores(z: np.ndarray, d: np.ndarray, folds: np.ndarray,
                             ridge: float = 1.0) -> np.ndarray:
    """Out-of-fold ridge-regression scores of label columns ``d`` [N, B] on ``z`` [N, D].

    ``folds`` [N]: fold id of each row. Each fold is scored by the ridge fit on the other
    folds (features standardised with those rows; λ = ``ridge`` · #training rows, in units
    of the standardised features whose Gram diagonal is #training rows). Returns [N, B].
    """
    z = np.asarray(z, dtype=np.float64)
    d = np.asarray(d, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    out = np.empty_like(d)
    for k in np.unique(folds):
        test, train = folds == k, folds != k
        zt = z[train]
        mu = zt.mean(0)
        sd = zt.std(0)
        sd[sd <= 1e-12 * max(1.0, float(np.abs(mu).max(initial=0.0)))] = 1.0  # constant columns
        a = (zt - mu) / sd
        s = (z[test] - mu) / sd
        n_t, dim = a.shape
        lam = ridge * n_t
        # H = S (AᵀA + λI)⁻¹ Aᵀ = S Aᵀ (AAᵀ + λI)⁻¹: solve the smaller system.
        if dim <= n_t:
            h = s @ np.linalg.solve(a.T @ a + lam * np.eye(dim), a.T)
        else:
            h = np.linalg.solve(a @ a.T + lam * np.eye(n_t), a @ s.T).T
        dt = d[train]
        # A is centred, so H·1 = 0 and the intercept is the training label mean.
        out[test] = h @ dt + dt.mean(0, keepdims=True)
    return out


@dataclass
class C2STResult:
    """Outcome of :func:`classifier_two_sample_test`.

    ``auc``: out-of-fold ROC AUC (0.5 = chance; below 0.5 is no evidence);
    ``p_value`` = (1 + #{AUC_b ≥ AUC}) / (1 + B); ``min_p`` = 1/(1 + B);
    ``decidable``: min_p ≤ alpha (else the test cannot reject whatever the data);
    ``significant``: decidable and p ≤ alpha; ``null_q95``: the 95th percentile of the
    permutation AUCs (what chance reaches at this n).
    """

    auc: float
    p_value: float
    permutations: int
    folds: int
    n_x: int
    n_y: int
    alpha: float
    min_p: float
    decidable: bool
    significant: bool
    null_q95: float
    classifier: str = "ridge (standardised features), out-of-fold"

    def to_dict(self) -> dict:
        return asdict(self)


def classifier_two_sample_test(
    x,
    y,
    *,
    permutations: int = 200,
    folds: int = 5,
    seed: int = 0,
    alpha: float = 0.05,
    ridge: float = 1.0,
    max_points: int | None = 2000,
) -> C2STResult:
    """C2ST of H0: P_x = P_y with out-of-fold ridge scores, AUC, and an exact
    refit-permutation p-value (see the module docstring).

    Args:
        x, y: samples [m, D], [n, D] (arrays or tensors).
        permutations: B relabellings (≥ 1; fewer than :func:`min_permutations` (alpha)
            gives ``decidable=False``).
        folds: cross-validation folds (≥ 2, ≤ the smaller sample).
        seed: folds, subsampling and permutations.
        alpha: the level ``decidable``/``significant`` refer to.
        ridge: λ per training row on standardised features (larger = closer to a
            difference-of-means classifier; 1.0 is robust when D is near N).
        max_points: seeded subsample per sample (cost O(B·N²/folds)); None = all.
    """
    xs, ys = feature_matrix(x, "x"), feature_matrix(y, "y")
    if xs.shape[1] != ys.shape[1]:
        raise UserError(f"x, y: feature dimensions differ ({xs.shape[1]} vs {ys.shape[1]})")
    if permutations < 1:
        raise UserError(f"permutations: must be >= 1, got {permutations}")
    if folds < 2:
        raise UserError(f"folds: must be >= 2, got {folds}")
    if not 0.0 < alpha < 1.0:
        raise UserError(f"alpha: must be in (0, 1), got {alpha}")
    if not (ridge > 0 and math.isfinite(ridge)):
        raise UserError(f"ridge: must be a positive finite number, got {ridge}")
    rng = np.random.default_rng(int(seed))
    if max_points is not None:
        if len(xs) > max_points:
            xs = xs[np.sort(rng.choice(len(xs), max_points, replace=False))]
        if len(ys) > max_points:
            ys = ys[np.sort(rng.choice(len(ys), max_points, replace=False))]
    m, n = len(xs), len(ys)
    if min(m, n) < folds:
        raise UserError(f"folds: {folds} folds need at least {folds} points per sample, got {m} and {n}")
    z = np.concatenate([xs, ys])
    d_obs = np.concatenate([np.zeros(m), np.ones(n)])
    fold_of = _fold_ids(m + n, folds, rng)
    labels = np.empty((m + n, permutations + 1))
    labels[:, 0] = d_obs
    for b in range(permutations):
        labels[:, b + 1] = rng.permutation(d_obs)
    # A fold whose training rows hold one label only would make every score its mean:
    # with folds ≤ min(m, n) that cannot happen for the observed labelling, and for a
    # relabelling it only ties the scores (AUC ½), which keeps the test exact.
    scores = ridge_out_of_fold_scores(z, labels, fold_of, ridge=ridge)
    aucs = auc_from_scores(scores, labels)
    stat, null = float(aucs[0]), aucs[1:]
    p = (1.0 + float((null >= stat - 1e-12).sum())) / (1.0 + permutations)
    min_p = 1.0 / (1.0 + permutations)
    decidable = min_p <= alpha + 1e-12
    return C2STResult(
        auc=stat, p_value=p, permutations=int(permutations), folds=int(folds), n_x=int(m), n_y=int(n),
        alpha=float(alpha), min_p=min_p, decidable=bool(decidable),
        significant=bool(decidable and p <= alpha), null_q95=float(np.quantile(null, 0.95)),
    )
