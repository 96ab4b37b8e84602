"""Is the shift a pure label shift? BBSE's prior estimate and a check of its assumption.

A **pure label shift** changes how often each class occurs and nothing else:
p_t(y) = q_y ≠ p_y = p_s(y), p_t(x | y) = p_s(x | y). Every label-free estimator the audit
has (agreement, COT, ATC, DoC) reads a drop in confidence or a changed prediction mix as
lost accuracy, so under a label shift they under-rate a model that is right (COT reads
~52 % for models 98 % right) and cannot see that marginal alignment (DANN, AdaBN's target
statistics) is what hurts there (Zhao et al., ICML 2019, "On Learning Invariant
Representations for Domain Adaptation"). Under the assumption, though, the source
model's target accuracy is identified from labelled source images:

    acc_t(f) = Σ_y q_y · P_s(f(x) = y | y)                                   (1)

**The prior** — BBSE (Lipton, Wang & Smola, ICML 2018, "Detecting and Correcting for
Label Shift with Black Box Predictors"): with C_ij = P_s(f(x) = i, y = j) (the source
model's joint confusion on held-out source images) and μ_i = P_t(f(x) = i) (its predicted
class frequencies on the target), the weights w_j = q_j / p_j solve C w = μ; negative
solutions are clipped to 0 and q = w·p renormalised.

**The check** — the assumption has testable consequences: for any function h of the
model's output, E_t[h] = Σ_y q_y E_s[h | y]. Hard predictions are used up fitting w, so
the check uses what BBSE did not fit: the top-1 confidence and the mean predicted
probability of each class. Each difference d = mean_t h − Σ_y q̂_y mean_s(h | y) gets its
standard error from a bootstrap that resamples both sets and re-estimates q̂ (so the
prior's own uncertainty is counted), a two-sided normal p-value, and the smallest p-value
times the number of checks (Bonferroni) is the evidence against a pure label shift. A
covariate shift (new scanner, texture, blur) lowers the confidence on the target below
what any mix of source classes gives, and is rejected; a prior change alone is not.

Whether the prior changed at all: a χ² test of homogeneity of the model's predicted
classes, source (held-out) against target.

A check that does not reject is not proof of a label shift: it says the model's outputs
show no evidence against it at this sample size (``n_source``, ``n_target`` are kept with
the result so that the caller can say so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import chi2_contingency, norm

#: the significance level of both tests
ALPHA = 0.05


@dataclass
class LabelShiftCheck:
    """Result of :func:`label_shift_check` (fractions; p-values in [0, 1]).

    ``verdict``: "label shift" (the prior changed, p < α, and nothing else was found,
    p ≥ α), "not a pure label shift" (the outputs contradict a prior change alone) or
    "no label shift" (the predicted classes did not change significantly).
    ``source_prior`` / ``target_prior``: p (held-out source labels) and q̂ (BBSE), [K].
    ``prior_p``: χ² homogeneity p-value of the predicted classes, source against target.
    ``fit_p``: Bonferroni-adjusted p-value of the moment checks (small: not a label shift);
    ``checks``: each check's name, difference and standard error.
    ``source_model_accuracy``: (1) for the model checked, with q̂."""

    verdict: str
    source_prior: list[float]
    target_prior: list[float]
    prior_p: float
    fit_p: float
    source_model_accuracy: float
    n_source: int
    n_target: int
    checks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def bbse_target_prior(source_probs: np.ndarray, source_labels: np.ndarray, target_probs: np.ndarray,
                      n_classes: int | None = None) -> np.ndarray:
    """BBSE's estimate q̂ of the target's class frequencies [K] from the source model's
    held-out source probabilities [n_s, K] with labels [n_s] and its target probabilities
    [n_t, K] (hard predictions; least squares, weights clipped at 0, renormalised)."""
    ps, pt = np.asarray(source_probs), np.asarray(target_probs)
    ys = np.asarray(source_labels).astype(int)
    k = int(n_classes or ps.shape[1])
    joint = np.zeros((k, k))
    np.add.at(joint, (ps.argmax(1), ys), 1.0)
    joint /= max(len(ys), 1)
    mu = np.bincount(pt.argmax(1), minlength=k)[:k] / max(len(pt), 1)
    w = np.clip(np.linalg.lstsq(joint, mu, rcond=None)[0], 0.0, None)
    p = np.bincount(ys, minlength=k)[:k] / max(len(ys), 1)
    q = w * p
    return q / q.sum() if q.sum() > 0 else p


def label_shift_accuracy(source_probs: np.ndarray, source_labels: np.ndarray, target_prior: np.ndarray) -> float:
    """(1): Σ_y q_y · recall_y of a model on held-out source images (its probabilities
    [n_s, K], labels [n_s]); classes absent from the source count as recall 0."""
    ps, ys = np.asarray(source_probs), np.asarray(source_labels).astype(int)
    pred = ps.argmax(1)
    recall = np.array([np.mean(pred[ys == c] == c) if np.any(ys == c) else 0.0 for c in range(len(target_prior))])
    return float(np.dot(target_prior, recall))


def _moments(probs: np.ndarray) -> np.ndarray:
    """[n, 1 + K]: top-1 confidence and each class's probability."""
    return np.concatenate([probs.max(1, keepdims=True), probs], axis=1)


def _difference(ps: np.ndarray, ys: np.ndarray, pt: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    q = bbse_target_prior(ps, ys, pt, k)
    ms, mt = _moments(ps), _moments(pt)
    per_class = np.zeros((k, ms.shape[1]))
    for c in range(k):
        if np.any(ys == c):
            per_class[c] = ms[ys == c].mean(0)
    return mt.mean(0) - q @ per_class, q


def _chi2_homogeneity(a: np.ndarray, b: np.ndarray, k: int) -> float:
    table = np.stack([np.bincount(a, minlength=k)[:k], np.bincount(b, minlength=k)[:k]]).astype(float)
    table = table[:, table.sum(0) > 0]
    if table.shape[1] < 2:
        return 1.0
    return float(chi2_contingency(table, correction=False)[1])


def label_shift_check(source_probs: np.ndarray, source_labels: np.ndarray, target_probs: np.ndarray, *,
                      n_boot: int = 200, seed: int = 0, alpha: float = ALPHA) -> LabelShiftCheck:
    """Whether one model's outputs are consistent with a pure label shift (module docstring).

    source_probs: [n_s, K] the model's probabilities on held-out labelled source images;
    source_labels: [n_s]; target_probs: [n_t, K] on the unlabelled target. ``n_boot``
    bootstrap replicates (both sets resampled, q̂ re-estimated each time), ``seed`` fixes them."""
    ps = np.asarray(source_probs, dtype=np.float64)
    pt = np.asarray(target_probs, dtype=np.float64)
    ys = np.asarray(source_labels).astype(int)
    if len(ps) < 2 or len(pt) < 2:
        raise ValueError("the label-shift check needs at least two source and two target predictions")
    k = ps.shape[1]
    d, q = _difference(ps, ys, pt, k)
    rng = np.random.default_rng([seed, 0x1AB])
    boots = np.empty((n_boot, len(d)))
    for b in range(n_boot):
        i, j = rng.integers(0, len(ps), len(ps)), rng.integers(0, len(pt), len(pt))
        boots[b] = _difference(ps[i], ys[i], pt[j], k)[0]
    se = boots.std(0, ddof=1)
    names = ["top-1 confidence"] + [f"P(class {c})" for c in range(k)]
    informative = se > 1e-12
    z = np.where(informative, np.abs(d) / np.where(informative, se, 1.0), 0.0)
    pvals = np.where(informative, 2 * norm.sf(z), 1.0)
    fit_p = float(min(1.0, pvals.min() * int(informative.sum()))) if informative.any() else 1.0
    prior_p = _chi2_homogeneity(ps.argmax(1), pt.argmax(1), k)
    if prior_p >= alpha:
        verdict = "no label shift"
    elif fit_p < alpha:
        verdict = "not a pure label shift"
    else:
        verdict = "label shift"
    p = np.bincount(ys, minlength=k)[:k] / len(ys)
    return LabelShiftCheck(
        verdict=verdict, source_prior=[float(x) for x in p], target_prior=[float(x) for x in q],
        prior_p=prior_p, fit_p=fit_p, source_model_accuracy=label_shift_accuracy(ps, ys, q),
        n_source=int(len(ps)), n_target=int(len(pt)),
        checks=[{"check": n, "difference": float(a), "se": float(s), "p": float(pv)}
                for n, a, s, pv in zip(names, d, se, pvals)])
