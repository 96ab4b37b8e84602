"""Reverse validation — does a model's labelling of the target carry the source's classes?
(Zhong et al., "Cross Validation Framework to Choose amongst Models and Datasets for
Transfer Learning", ECML PKDD 2010; how Ganin et al., JMLR 2016, chose DANN's
hyper-parameters without target labels.)

The model f labels the unlabelled target, ŷ_t = argmax f(x_t). A *reverse* classifier
r is trained on the target alone, on the model's own features g(x_t) with ŷ_t as labels,
and scored on the labelled source images, which it never saw:

    RV(f) = mean_i 1[ r(g(x_s,i)) = y_s,i ]     (source images i; higher is better)

If f labels the target correctly and its features keep the classes apart in both domains,
r learns the classes and is right on the source. If f is confidently wrong, collapsed onto
a few classes, or right only on the images where any source-like model is right, r learns
a wrong or partial map and the source exposes it. RV compares each model with the source
labels only — not with the other candidates, so a model that is right where the others are
wrong is not penalised for disagreeing (agreement-based estimates are).

Here r is a multinomial logistic regression (L2, C = 1, features standardised on the
target), because the target sets are small (hundreds of images) and the features are the
penultimate layer that the model's own linear head reads. RV is a *selector* score, not an
estimate of target accuracy: it reads source accuracy of a classifier fitted on the target.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

#: L2 strength of the reverse classifier (scikit-learn's default; not tuned)
REVERSE_C = 1.0


def reverse_validation_accuracy(target_features: np.ndarray, target_predictions: np.ndarray,
                                source_features: np.ndarray, source_labels: np.ndarray) -> float:
    """RV: accuracy on the source of a classifier trained on the target's pseudo-labels.

    Parameters
    ----------
    target_features: [n_t, d] the model's features of the unlabelled target images.
    target_predictions: [n_t] the model's predicted class of each target image.
    source_features: [n_s, d] the same model's features of labelled source images
        (as the model meets the source: per-domain-BatchNorm models with source statistics).
    source_labels: [n_s] their true classes.

    Returns a fraction in [0, 1]. A model that predicts one class on the whole target
    scores the share of that class among the source images.
    """
    tf = np.asarray(target_features, dtype=np.float64)
    tp = np.asarray(target_predictions).astype(np.int64)
    sf = np.asarray(source_features, dtype=np.float64)
    sl = np.asarray(source_labels).astype(np.int64)
    if tf.ndim != 2 or sf.ndim != 2 or tf.shape[1] != sf.shape[1]:
        raise ValueError(f"reverse validation: target features {tf.shape} and source features {sf.shape} "
                         "must be [n, d] with the same d")
    if len(tf) != len(tp) or len(sf) != len(sl) or len(tf) == 0 or len(sf) == 0:
        raise ValueError(f"reverse validation: {len(tf)} target features for {len(tp)} predictions, "
                         f"{len(sf)} source features for {len(sl)} labels")
    classes = np.unique(tp)
    if len(classes) == 1:
        return float(np.mean(sl == classes[0]))
    scaler = StandardScaler().fit(tf)
    with warnings.catch_warnings():
        # lbfgs may stop at max_iter on separable features; the fit is then still usable
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=REVERSE_C, max_iter=1000).fit(scaler.transform(tf), tp)
    return float(np.mean(clf.predict(scaler.transform(sf)) == sl))
