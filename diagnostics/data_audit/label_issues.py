"""Likely label errors by confident learning (Northcutt, Jiang & Chuang, JAIR 2021),
with ``cleanlab`` on out-of-fold predicted probabilities.

The probabilities come from a small model fitted K times, each time on the other folds
(so no image is scored by a model that saw its label): standardised features, PCA to at
most 64 dimensions, an RBF support-vector machine with Platt-scaled probabilities. The
features are downsampled pixels, or the penultimate features of ``--model``. On the
phantom a linear model on pixels reached ~96 % out-of-fold accuracy and left precision
at 0.75–0.87 with 5 % of labels flipped; the RBF machine reaches ~98 % and
precision 0.88–0.94 at recall 0.95–1.0 (3 seeds; docs/data_audit.md). cleanlab's default
rule (``prune_by_noise_rate``) then flags, per class pair, as many of the least
confident images as the estimated joint of given and true labels says are noisy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from adapt.errors import UserError

FOLDS = 5
#: cleanlab's filter: the default, balanced between recall and precision on the phantom
FILTER_BY = "prune_by_noise_rate"
PCA_DIM = 64


@dataclass
class LabelIssues:
    """Flagged samples (indices into the labelled samples given), with their evidence."""

    indices: np.ndarray  # flagged, worst (lowest label quality) first
    given: np.ndarray  # given label of each flagged sample
    suggested: np.ndarray  # most likely label by the out-of-fold model
    quality: np.ndarray  # cleanlab's self-confidence label quality in [0, 1]
    oof_accuracy: float  # agreement of the out-of-fold predictions with the given labels
    folds: int
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"n_issues": int(len(self.indices)), "oof_agreement": self.oof_accuracy, "folds": self.folds,
                "filter_by": FILTER_BY, "notes": list(self.notes),
                "issues": [{"index": int(i), "given": int(g), "suggested": int(s), "quality": round(float(q), 4)}
                           for i, g, s, q in zip(self.indices, self.given, self.suggested, self.quality)]}


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, *, folds: int = FOLDS,
                              seed: int = 0) -> np.ndarray:
    """[N, K] probabilities of each sample from a model fitted on the other folds
    (stratified, seeded); K = labels.max() + 1."""
    # late: sklearn takes seconds to import; only the data audit's label check needs it
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.decomposition import PCA
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    dim = min(PCA_DIM, x.shape[1], int(len(x) * (folds - 1) / folds) - 1)
    model = make_pipeline(StandardScaler(), PCA(max(1, dim), random_state=seed),
                          # Platt scaling fitted on internal folds (what SVC(probability=True) did)
                          CalibratedClassifierCV(SVC(C=1.0, random_state=seed), method="sigmoid", ensemble=False))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    probs = cross_val_predict(model, x, labels, cv=cv, method="predict_proba")
    full = np.zeros((len(x), int(labels.max()) + 1))
    full[:, np.unique(labels)] = probs  # cross_val_predict's columns are the classes present
    return full


def find_label_issues(features: np.ndarray, labels: np.ndarray, *, folds: int = FOLDS,
                      seed: int = 0, probs: np.ndarray | None = None) -> LabelIssues:
    """Confident learning on ``labels`` (int [N], all known) with out-of-fold probabilities
    of a model on ``features`` (or the given out-of-fold ``probs``)."""
    # late: cleanlab is an optional extra (.[data])
    from cleanlab.filter import find_label_issues as cl_find
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    present, counts = np.unique(labels, return_counts=True)
    if len(present) < 2:
        raise UserError("label issues: need labelled images of at least two classes")
    k = int(min(folds, counts.min()))
    if k < 2:
        raise UserError(f"label issues: class {int(present[counts.argmin()])} has a single image; "
                        "cross-validation needs at least two per class")
    # cleanlab wants labels 0..K-1 all present: index into the classes that occur
    dense = np.searchsorted(present, labels)
    if probs is None:
        p = out_of_fold_probabilities(features, dense, folds=k, seed=seed)
    else:
        p = np.asarray(probs, dtype=np.float64)[:, present]
        p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    flagged = cl_find(dense, p, filter_by=FILTER_BY, return_indices_ranked_by="self_confidence")
    quality = get_label_quality_scores(dense, p, method="self_confidence")
    notes = [] if k == folds else [f"{k}-fold cross-validation (a class has only {int(counts.min())} images)"]
    return LabelIssues(indices=np.asarray(flagged, dtype=np.int64), given=labels[flagged],
                       suggested=present[p[flagged].argmax(1)] if len(flagged) else np.zeros(0, np.int64),
                       quality=quality[flagged], oof_accuracy=float((p.argmax(1) == dense).mean()), folds=k,
                       notes=notes)
