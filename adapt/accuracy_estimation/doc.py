"""DoC — difference of confidences (Guillory et al., "Predicting with Confidence on
Unseen Distributions", ICCV 2021).

The drop in accuracy from source to target is estimated by the drop in mean confidence:

    DoC = acc_s − (mean_i max_k p_k(x_i^s) − mean_j max_k p_k(x_j^t)),

on held-out source images x^s (labelled) and target images x^t. Clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np


def estimate_doc(source_probs: np.ndarray, source_labels: np.ndarray, target_probs: np.ndarray) -> float:
    """DoC from held-out source probabilities [n_s, K] with labels [n_s] and target
    probabilities [n_t, K]: the estimated target accuracy in [0, 1]."""
    ps, pt = np.asarray(source_probs, dtype=np.float64), np.asarray(target_probs, dtype=np.float64)
    if len(ps) == 0 or len(pt) == 0:
        raise ValueError("DoC needs source and target predictions")
    acc_s = float(np.mean(ps.argmax(1) == np.asarray(source_labels)))
    doc = acc_s - (ps.max(1).mean() - pt.max(1).mean())
    return float(np.clip(doc, 0.0, 1.0))
