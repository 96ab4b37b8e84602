"""Is it really a label shift? A test of BBSE's own assumption.

Black-box shift estimation (Lipton, Wang & Smola, ICML 2018) estimates the target label
mix q̂ from a model's predicted-class histogram, ASSUMING label shift: p_t(x|y) = p_s(x|y),
only p(y) changes. Under a covariate shift (a new scanner, a new texture) that assumption
is false, and with a good source model BBSE merely echoes the predicted histogram — it
"explains" a collapse as a label shift. Rabanser, Günnemann & Lipton (NeurIPS 2019) test
for shift with two-sample tests on representations; here the same tests check the
assumption itself:

    if p_t(x) = Σ_y q(y) p_s(x|y), then the source re-weighted to the label mix q,
    Σ_y q(y) p_s(x|y), and the target are ONE distribution.

Re-weighting is done by a class-stratified subsample of the labelled (held-out) source
WITHOUT replacement, with class counts ∝ q̂ (as many as the scarcest class allows):
duplicated rows (resampling with replacement, or importance weights inside a kernel
statistic) would themselves look like a difference to a two-sample test. The subsample
and the target then go through the MMD permutation test (Gretton et al. 2012) and the
classifier two-sample test (Lopez-Paz & Oquab 2017); the assumption is rejected when
either p-value is below α/2 (Bonferroni over the two tests).

Passing is not proof: a small sample has little power, so the result states n and both
p-values. Failing means the label mix cannot be estimated from predictions at all.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from adapt.errors import UserError
from diagnostics.bbse import bbse_weights, conditional_from_joint
from diagnostics.mmd import mmd_permutation_test
from diagnostics.predictions import confusion_matrix, prediction_histogram
from diagnostics.two_sample import classifier_two_sample_test

__all__ = ["LabelShiftCheck", "subsample_to_mix", "label_shift_check", "change_bound_under_label_shift"]


def subsample_to_mix(labels, mix, seed: int = 0, min_per_class: int = 2) -> np.ndarray:
    """Row indices of a subsample of ``labels`` [N] (class ids) whose class shares are
    ``mix`` [K] (sums to 1), drawn without replacement, as large as the data allow:
    total n = min over classes with mix_c > 0 of count_c / mix_c, then n_c = round(n · mix_c).

    Classes with mix_c = 0 are left out. Raises :class:`UserError` when a class the mix
    needs has fewer than ``min_per_class`` rows.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    q = np.asarray(mix, dtype=np.float64).reshape(-1)
    if (q < 0).any() or not math.isfinite(q.sum()) or q.sum() <= 0:
        raise UserError(f"mix: expected non-negative shares, got {q.tolist()}")
    q = q / q.sum()
    counts = np.bincount(y[y >= 0], minlength=len(q))[: len(q)]
    need = q > 1e-12
    short = [c for c in np.flatnonzero(need) if counts[c] < min_per_class]
    if short:
        raise UserError(f"labels: classes {short} are needed by the mix but have fewer than "
                        f"{min_per_class} labelled rows")
    total = float(np.min(counts[need] / q[need]))
    take = np.minimum(np.round(total * q).astype(np.int64), counts)
    rng = np.random.default_rng(int(seed))
    out = [rng.choice(np.flatnonzero(y == c), size=int(take[c]), replace=False) for c in np.flatnonzero(take)]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


@dataclass
class LabelShiftCheck:
    """Outcome of :func:`label_shift_check`. ``passed``: no evidence against
    "target = source re-weighted to ``mix``" (both p-values ≥ α/2); ``mix`` the label mix
    tested; ``n_source`` the size of the re-weighted source subsample."""

    passed: bool
    mmd_p: float
    classifier_p: float
    classifier_auc: float
    alpha: float
    n_source: int
    n_target: int
    mix: list[float]
    permutations: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def label_shift_check(
    source_features,
    source_labels,
    target_features,
    mix,
    *,
    alpha: float = 0.05,
    permutations: int = 200,
    seed: int = 0,
    max_points: int = 1000,
) -> LabelShiftCheck:
    """Test the label-shift assumption behind a target label mix ``mix`` [K].

    Args:
        source_features, source_labels: held-out labelled source [N_s, D], [N_s].
        target_features: unlabelled target [N_t, D], same feature space.
        mix: the claimed target label mix (e.g. BBSE's q̂), shares over the K classes.
        alpha: level of the check (split over the two tests).
        permutations: permutations of each test (≥ :func:`~diagnostics.two_sample.min_permutations`
            (α/2) to be able to reject).
        max_points: cap per side (seeded), bounding the O(N²) kernel.
    """
    xs = np.asarray(source_features, dtype=np.float64)
    xt = np.asarray(target_features, dtype=np.float64)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1]:
        raise UserError(f"features: expected [N, D] matrices of one D, got {xs.shape} and {xt.shape}")
    y = np.asarray(source_labels, dtype=np.int64).reshape(-1)
    if len(y) != len(xs):
        raise UserError(f"source_labels: {len(y)} labels for {len(xs)} source rows")
    idx = subsample_to_mix(y, mix, seed=seed)
    rng = np.random.default_rng(int(seed) + 1)
    if len(idx) > max_points:
        # a uniform subsample of a stratified sample keeps its mix in expectation
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    if len(xt) > max_points:
        xt = xt[np.sort(rng.choice(len(xt), max_points, replace=False))]
    folds = min(5, len(idx), len(xt))
    if folds < 2 or len(idx) < 4 or len(xt) < 4:
        raise UserError(f"label_shift_check: too few points ({len(idx)} re-weighted source, {len(xt)} target)")
    xs_w = xs[idx]
    mmd = mmd_permutation_test(xs_w, xt, permutations=permutations, seed=seed)
    c2 = classifier_two_sample_test(xs_w, xt, permutations=permutations, seed=seed, folds=folds,
                                    alpha=alpha / 2, max_points=None)
    half = alpha / 2
    passed = mmd.p_value >= half and c2.p_value >= half
    q = np.asarray(mix, dtype=np.float64)
    q = q / q.sum()
    if passed:
        reason = (f"source re-weighted to the label mix matches the target (MMD p = {mmd.p_value:.3g}, "
                  f"classifier AUC {c2.auc:.2f}, p = {c2.p_value:.3g}; n = {len(idx)} + {len(xt)}): "
                  "consistent with a pure label shift")
    else:
        reason = (f"source re-weighted to the label mix still differs from the target (MMD p = "
                  f"{mmd.p_value:.3g}, classifier AUC {c2.auc:.2f}, p = {c2.p_value:.3g}; level {half:g} each): "
                  "the images changed, not only the label mix — a covariate shift")
    return LabelShiftCheck(
        passed=bool(passed), mmd_p=float(mmd.p_value), classifier_p=float(c2.p_value),
        classifier_auc=float(c2.auc), alpha=float(alpha), n_source=int(len(idx)), n_target=int(len(xt)),
        mix=[float(v) for v in q], permutations=int(permutations), reason=reason,
    )


def _bound_once(ps: np.ndarray, ys: np.ndarray, pt_source: np.ndarray, pred_run: np.ndarray, k: int):
    """(low, high, source accuracy, agreement) of one (re)sample; see the caller."""
    joint = confusion_matrix(ys, ps, k, normalize="joint")
    q = np.asarray(bbse_weights(joint, prediction_histogram(pt_source, k)).target_prior)
    recall = np.diagonal(conditional_from_joint(joint)[0])  # P_s(ŷ = y | y); 0 for a class absent here
    acc = float(q @ recall)
    agree = float(np.mean(pt_source.argmax(1) == pred_run))
    return agree - 1.0, agree + 1.0 - 2.0 * acc, acc, agree


def change_bound_under_label_shift(source_probs, source_labels, source_target_probs, run_target_probs, *,
                                   level: float = 0.95, n_boot: int = 400, seed: int = 0) -> dict:
    """Bounds on a run's target accuracy change over the source model, valid under a pure
    label shift (the images of each class unchanged: use it only where
    :func:`label_shift_check` found no evidence against that).

    Under a label shift the source model's target accuracy is identified from held-out
    labelled source images (Lipton, Wang & Smola, ICML 2018):

        acc_t(s) = Σ_y q_y · r_y,   r_y = P_s(s(x) = y | y),   q = BBSE's target label mix,

    and any other model r agrees with s on the target exactly as often as the 0-1 triangle
    inequality allows: |acc_t(r) − agree_t(r, s)| ≤ 1 − acc_t(s). So the change
    Δ = acc_t(r) − acc_t(s) lies in

        [agree − 1,  agree + 1 − 2 · acc_t(s)].

    The upper end is below zero when the run disagrees with an accurate source model more
    often than the source model errs — a loss, whatever the run's own confidence says. The
    lower end is never above zero: a gain is never shown this way. Sampling error: the
    bounds' ends are taken at ``level`` by a bootstrap over the source images (with their
    labels) and the target images (both models' predictions of an image together), BBSE's
    mix re-estimated in each replicate.

    source_probs [n_s, K], source_labels [n_s]: the source model on held-out labelled source
    images; source_target_probs [n_t, K] and run_target_probs [n_t, K]: the source model and
    the run on the same target images. Returns {low, high, source_accuracy, agreement,
    level, n_source, n_target} (fractions; low/high the bootstrap's outer quantiles)."""
    ps = np.asarray(source_probs, dtype=np.float64)
    ys = np.asarray(source_labels, dtype=np.int64).reshape(-1)
    pt = np.asarray(source_target_probs, dtype=np.float64)
    pr = np.asarray(run_target_probs, dtype=np.float64).argmax(1)
    if len(ps) != len(ys) or len(pt) != len(pr) or len(ps) < 2 or len(pt) < 2 or ps.shape[1] != pt.shape[1]:
        raise UserError(f"label-shift bound: {len(ps)} source predictions for {len(ys)} labels, "
                        f"{len(pt)} and {len(pr)} target predictions")
    k = ps.shape[1]
    low, high, acc, agree = _bound_once(ps, ys, pt, pr, k)
    rng = np.random.default_rng([int(seed), 0xB0])
    lows, highs = np.empty(n_boot), np.empty(n_boot)
    for b in range(n_boot):
        i, j = rng.integers(0, len(ps), len(ps)), rng.integers(0, len(pt), len(pt))
        lows[b], highs[b], _, _ = _bound_once(ps[i], ys[i], pt[j], pr[j], k)
    tail = (1.0 - level) / 2
    return {"low": float(min(low, np.quantile(lows, tail))), "high": float(max(high, np.quantile(highs, 1 - tail))),
            "source_accuracy": acc, "agreement": agree, "level": float(level),
            "n_source": int(len(ps)), "n_target": int(len(pt))}
