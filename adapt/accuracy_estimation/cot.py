"""COT — confidence optimal transport (Lu et al., "Characterizing Out-of-Distribution
Error via Optimal Transport", NeurIPS 2023).

The target error is estimated by the Wasserstein-1 distance between the model's target
predictions (softmax vectors p_j, uniform weights) and the source label distribution
(one-hot vectors e_{y_i} of held-out source labels, uniform weights), with cost
c(p, e_y) = ½‖p − e_y‖₁ = 1 − p_y:

    COT = W₁(P_pred, P_label) = min_{γ ∈ Π} Σ_ij γ_ij (1 − p_j[y_i]),   accuracy ≈ 1 − COT.

It assumes the target label mix equals the source's: under a pure label shift it counts
the change of mix as error. Solved exactly with POT's ``ot.emd2`` on at most
``max_points`` points per side (a seeded subsample).

The label side has only K distinct points (the one-hot vertices): merging equal support
points into one, with their mass summed, leaves the optimal cost unchanged, so the problem
solved is n_t × K (the class mix as weights) instead of n_t × n_s — the same COT to float
rounding (``tests/test_accuracy_estimation.py``), ~0.6 s → milliseconds at 1,000 points.
"""

from __future__ import annotations

import numpy as np


def cot_error(target_probs: np.ndarray, source_labels: np.ndarray, max_points: int = 1000,
              seed: int = 0) -> float:
    """COT's estimated target error in [0, 1] from target probabilities [n_t, K] and
    held-out source labels [n_s] (integers in [0, K))."""
    import ot  # late: POT's import is only needed here

    p = np.asarray(target_probs, dtype=np.float64)
    y = np.asarray(source_labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or len(p) == 0 or len(y) == 0:
        raise ValueError("COT needs target probabilities [n_t, K] and source labels [n_s]")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"source labels must lie in [0, {p.shape[1]})")
    rng = np.random.default_rng(seed)
    if len(p) > max_points:
        p = p[np.sort(rng.choice(len(p), max_points, replace=False))]
    if len(y) > max_points:
        y = y[np.sort(rng.choice(len(y), max_points, replace=False))]
    classes = np.unique(y)  # the label side's distinct points, each with its share of the mass
    cost = 1.0 - p[:, classes]  # [n_t, K']: ½‖p_j − e_k‖₁
    a = np.full(len(p), 1.0 / len(p))
    b = np.bincount(y)[classes] / len(y)
    return float(np.clip(ot.emd2(a, b, cost), 0.0, 1.0))


def estimate_cot(target_probs: np.ndarray, source_labels: np.ndarray, max_points: int = 1000,
                 seed: int = 0) -> float:
    """Estimated target accuracy 1 − COT."""
    return 1.0 - cot_error(target_probs, source_labels, max_points, seed)
