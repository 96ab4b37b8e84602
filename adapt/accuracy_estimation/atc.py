"""ATC — average thresholded confidence (Garg et al., "Leveraging Unlabeled Data to
Predict Out-of-Distribution Performance", ICLR 2022).

On held-out labelled *source* images pick the threshold t so that the share of source
scores above t equals the source accuracy,

    (1/n_s) Σ_i 1[s(x_i) > t] = (1/n_s) Σ_i 1[ŷ_i = y_i],

then the target accuracy estimate is the share of target scores above t,

    ATC = (1/n_t) Σ_j 1[s(x_j) > t].

The score s is the maximum softmax probability or the negative entropy Σ_k p_k log p_k
(the paper's better variant). ATC assumes the source validation split is representative
of the source the model saw: a source accuracy of ~100 % puts t at the lowest source
score and ATC then reads ~100 % on most targets (the failure issue 17 measured).
"""

from __future__ import annotations

import numpy as np

SCORES = ("max_softmax", "neg_entropy")


def confidence_scores(probs: np.ndarray, score: str = "neg_entropy") -> np.ndarray:
    """Per-image confidence [N] from probabilities ``probs`` [N, K] (rows sum to 1):
    ``max_softmax`` = max_k p_k, ``neg_entropy`` = Σ_k p_k log p_k (≤ 0, 0 = certain)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be [N, K], got shape {p.shape}")
    if score == "max_softmax":
        return p.max(axis=1)
    if score == "neg_entropy":
        return np.sum(p * np.log(np.clip(p, 1e-12, None)), axis=1)
    raise ValueError(f"unknown score {score!r}; choose from {SCORES}")


def atc_threshold(source_scores: np.ndarray, source_correct: np.ndarray) -> float:
    """The threshold t [scalar] with share(source_scores > t) = mean(source_correct).

    ``source_scores`` [n] confidence of each held-out source image, ``source_correct`` [n]
    bool (prediction right). With k = round(accuracy · n) images to keep above t, t is the
    (k+1)-th largest score (exactly k scores lie above it when scores are distinct);
    −inf when every image is right."""
    s = np.asarray(source_scores, dtype=np.float64).reshape(-1)
    c = np.asarray(source_correct, dtype=bool).reshape(-1)
    if len(s) == 0 or len(s) != len(c):
        raise ValueError(f"need as many source scores as correctness flags (got {len(s)} and {len(c)}), at least 1")
    k = int(round(c.mean() * len(s)))
    if k >= len(s):
        return float("-inf")
    return float(np.sort(s)[::-1][k])


def atc_estimate(target_scores: np.ndarray, threshold: float) -> float:
    """Estimated target accuracy: the share of target scores [n_t] above ``threshold``."""
    t = np.asarray(target_scores, dtype=np.float64).reshape(-1)
    if len(t) == 0:
        raise ValueError("no target scores")
    return float(np.mean(t > threshold))


def estimate_atc(source_probs: np.ndarray, source_labels: np.ndarray, target_probs: np.ndarray,
                 score: str = "neg_entropy") -> float:
    """ATC from held-out source probabilities [n_s, K] with labels [n_s] and target
    probabilities [n_t, K]: the estimated target accuracy in [0, 1]."""
    s = confidence_scores(source_probs, score)
    correct = np.asarray(source_probs).argmax(1) == np.asarray(source_labels)
    return atc_estimate(confidence_scores(target_probs, score), atc_threshold(s, correct))
