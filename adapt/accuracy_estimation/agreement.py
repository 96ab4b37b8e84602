"""Agreement between models as an estimate of accuracy (Jiang et al., "Assessing
Generalization of SGD via Disagreement", ICLR 2022; Baek et al., "Agreement-on-the-Line",
NeurIPS 2022).

Two independently trained (or adapted) copies f, f' of a model disagree on the target at
rate D(f, f') = (1/n) Σ_j 1[f(x_j) ≠ f'(x_j)]; for a well-calibrated ensemble the
expected test error equals the expected disagreement, so the accuracy of f is estimated
by its agreement 1 − D with the other models, summarised by the median:

    Agree(f) = median_m (1 − D(f, f_m)).

The median, not the mean: one broken peer (a run that diverged or collapsed onto a class)
agrees with nobody's right answers and would drag the mean of every good model down; the
median ignores it while fewer than half the peers are broken. On the label-free study
(``benchmarks/labelfree_study.py``) the median's error was about a third of the mean's
(both are measured there; the mean is kept as ``agreement_mean``) — a choice made on that
study's data, which docs/labelfree.md says. With one or two peers the two are equal.
Models that share a failure (all confidently wrong the same way) agree and the estimate
is too high; it is least wrong when the copies differ only in seed or method.
"""

from __future__ import annotations

import numpy as np


def agreement_rate(preds_a: np.ndarray, preds_b: np.ndarray) -> float:
    """Share of images [n] on which two label vectors [n] agree."""
    a, b = np.asarray(preds_a).reshape(-1), np.asarray(preds_b).reshape(-1)
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"need two non-empty prediction vectors of one length (got {len(a)} and {len(b)})")
    return float(np.mean(a == b))


def disagreement_rate(preds_a: np.ndarray, preds_b: np.ndarray) -> float:
    """D(f, f') = 1 − :func:`agreement_rate`."""
    return 1.0 - agreement_rate(preds_a, preds_b)


def agreement_estimate(preds: np.ndarray, other_preds: list[np.ndarray] | np.ndarray,
                       reduce: str = "median") -> float:
    """Estimated accuracy of the model with target predictions ``preds`` [n]: the median
    (``reduce="mean"``: the mean) of its agreement with each of ``other_preds`` [M, n]
    (M ≥ 1 other models on the same images)."""
    others = list(other_preds)
    if not others:
        raise ValueError("agreement needs at least one other model's predictions")
    rates = [agreement_rate(preds, o) for o in others]
    if reduce == "median":
        return float(np.median(rates))
    if reduce == "mean":
        return float(np.mean(rates))
    raise ValueError(f"reduce must be 'median' or 'mean', got {reduce!r}")
