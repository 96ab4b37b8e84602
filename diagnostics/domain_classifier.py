"""Domain classifier: how well can a linear model tell source features from target?

A cross-validated logistic regression (standardisation inside the pipeline, so
each fold is scaled by its own training part) separates source (label 0) from
target (label 1). Every sample gets an out-of-fold probability; from those:

* ``auc``: ROC AUC (0.5 = indistinguishable, 1 = separable);
* ``accuracy`` at threshold 0.5 and ``error`` ε = 1 − accuracy;
* ``proxy_a_distance`` = 2(1 − 2 min(ε, ½)) (Ben-David et al., NeurIPS 2007 / Mach.
  Learn. 2010): 0 for indistinguishable domains, 2 for separable ones. A
  cross-validated error above ½ (AUC below ½) is no evidence of separation — it is
  what identical domains produce (a held-out image's twin in the training folds
  carries the other domain label, so the classifier is wrong on purpose) — so it
  counts as ε = ½, keeping d_A in [0, 2]; ``auc`` is reported as measured.

ε is a balanced quantity only when both domains are equally large, so by default
the larger domain is subsampled (seeded) to the size of the smaller one.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from adapt.errors import UserError
from diagnostics.arrays import feature_matrix

__all__ = ["DomainClassifierResult", "domain_classifier", "proxy_a_distance"]


@dataclass
class DomainClassifierResult:
    auc: float
    accuracy: float
    error: float
    proxy_a_distance: float
    folds: int
    n_source: int
    n_target: int
    balanced: bool

    def to_dict(self) -> dict:
        return asdict(self)


def proxy_a_distance(error: float) -> float:
    """Proxy A-distance d_A = 2(1 − 2 min(ε, ½)) ∈ [0, 2] from a domain classifier's
    held-out error ε (ε > ½ is chance, not evidence: d_A = 0)."""
    return 2.0 * (1.0 - 2.0 * min(float(error), 0.5))


def domain_classifier(
    x_s,
    x_t,
    folds: int = 5,
    seed: int = 0,
    balance: bool = True,
    max_points: int | None = 5000,
    C: float = 1.0,
) -> DomainClassifierResult:
    """Cross-validated source-vs-target logistic regression on features.

    Args:
        x_s, x_t: source and target features [n_s, d], [n_t, d].
        folds: stratified K-fold splits (shuffled with ``seed``).
        balance: subsample the larger domain to the size of the smaller one.
        max_points: cap per domain (seeded subsample) to bound the cost; None = no cap.
        C: inverse L2 regularisation strength of the logistic regression.
    """
    # late: sklearn takes seconds to import; only this test needs it
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    xs, xt = feature_matrix(x_s, "x_s"), feature_matrix(x_t, "x_t")
    if xs.shape[1] != xt.shape[1]:
        raise UserError(f"x_s, x_t: feature dimensions differ ({xs.shape[1]} vs {xt.shape[1]})")
    if folds < 2:
        raise UserError(f"folds: must be >= 2, got {folds}")
    rng = np.random.default_rng(int(seed))
    cap = min(len(xs), len(xt)) if balance else None
    if max_points is not None:
        cap = min(cap, max_points) if cap is not None else max_points
    if cap is not None:
        if len(xs) > cap:
            xs = xs[rng.choice(len(xs), cap, replace=False)]
        if len(xt) > cap:
            xt = xt[rng.choice(len(xt), cap, replace=False)]
    if min(len(xs), len(xt)) < folds:
        raise UserError(
            f"folds: {folds} folds need at least {folds} samples per domain, "
            f"got {len(xs)} source and {len(xt)} target"
        )
    z = np.concatenate([xs, xt])
    d = np.concatenate([np.zeros(len(xs), dtype=int), np.ones(len(xt), dtype=int)])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed))
    proba = cross_val_predict(model, z, d, cv=cv, method="predict_proba")[:, 1]
    accuracy = float(((proba >= 0.5).astype(int) == d).mean())
    error = 1.0 - accuracy
    return DomainClassifierResult(
        auc=float(roc_auc_score(d, proba)), accuracy=accuracy, error=error,
        proxy_a_distance=proxy_a_distance(error), folds=int(folds),
        n_source=int(len(xs)), n_target=int(len(xt)), balanced=bool(balance),
    )
