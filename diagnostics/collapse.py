"""Class collapse vs. real label shift on an unlabelled target.

A target predicted-class histogram that differs from the source prior has two
very different causes: the target really has another label mix (label shift),
or the model collapsed (it predicts one class for almost everything, as a
source-only model with source BatchNorm statistics often does on a new scanner).
The statistics here tell them apart:

* predicted-class histogram, its largest-class share, and the entropy of the
  marginal prediction H(E p) against its maximum log K;
* the information-maximisation score IM = H(E_x p(y|x)) − E_x H(p(y|x)) (high: diverse
  and confident predictions; Gomes et al. 2010, Liang et al. SHOT 2020);
* BBSE (black-box shift estimation, Lipton, Wang & Smola, ICML 2018): with the
  source confusion matrix C measured on held-out *labelled source* data,
  μ̂_t = C w, so w = C⁻¹ μ̂_t estimates the target/source label ratio and
  q̂ = w ⊙ p_s the target label distribution. The assumption is label shift
  (p(x|y) unchanged). A real label shift is explained by some q̂: C q̂ reproduces the
  predicted histogram. A collapse piles predictions onto one class beyond what
  any label mix supports (C q̂ under-predicts that class even with q̂ clipped to
  that one class), or needs a degenerate mix with nearly a single class.

BBSE's assumption is checked before a label shift is claimed: the held-out source,
re-weighted (class-stratified subsample) to BBSE's mix, must match the target in a
two-sample test (:mod:`diagnostics.label_shift`; Lipton et al. 2018, Rabanser et al.
2019). Under a covariate shift it does not, and with a good source model BBSE then only
echoes the predicted histogram: the verdict is "covariate shift: the label mix cannot be
estimated", never "a real label shift". When the target's labels are known the truth
decides instead: predictions far from the true label mix are a collapse (or a bias),
whatever BBSE says.

Confusion-matrix convention (Lipton et al.): rows = predicted class, columns =
true class. ``joint``: C[i, j] = P_s(ŷ = i, y = j) (sums to 1; its column sums are
the source prior). ``conditional``: C[i, j] = P_s(ŷ = i | y = j) (columns sum to 1).
Note scikit-learn's ``confusion_matrix`` is [true, pred] — the transpose.

Entropies are in nats.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from adapt.errors import UserError
from diagnostics.bbse import MAX_CONDITION as _MAX_CONDITION
from diagnostics.bbse import BBSEResult, bbse_weights, conditional_from_joint
from diagnostics.label_shift import LabelShiftCheck, label_shift_check
from diagnostics.predictions import (confusion_matrix, im_score, marginal_entropy, mean_entropy, prediction_histogram,
                                     prediction_shift_test,
                                     probability_matrix, shannon_entropy, to_numpy, total_variation)

# Re-exported: the statistics moved to diagnostics.predictions / diagnostics.bbse.
__all__ = [
    "BBSEResult",
    "CollapseResult",
    "VERDICT_LEVELS",
    "prediction_histogram",
    "marginal_entropy",
    "mean_entropy",
    "im_score",
    "confusion_matrix",
    "bbse_weights",
    "collapse_report",
]


# --------------------------------------------------------------------------- report
#: verdict → level of the finding (the audit's ok / warn / fail)
VERDICT_LEVELS = {"no_shift": "ok", "label_shift": "ok", "biased": "warn", "inconclusive": "warn",
                  "covariate_shift": "warn", "collapsed": "fail"}


@dataclass
class CollapseResult:
    """Evidence and verdict. ``verdict`` is one of:

    With the target's true labels (``true_target_mix`` set) — the truth decides:

    * ``"collapsed"``: the predicted-class histogram is at least ``collapse_distance``
      (half L1) from the true label mix and concentrated (a pile-up, or its entropy well
      below the truth's) — predictions pile onto the classes in ``over_predicted``;
    * ``"biased"``: at least ``bias_threshold`` from it otherwise;
    * ``"label_shift"``: predictions follow the true mix, which differs from the source
      prior by more than ``shift_threshold``; ``"no_shift"``: neither.

    Without them:

    * ``"collapsed"``: predictions pile onto one class (share ≥ share_threshold and
      entropy of the predicted-class histogram ≤ entropy_ratio_threshold · log K) and BBSE
      cannot explain it with a plausible label mix (or no source confusion was given);
    * ``"label_shift"``: BBSE's mix differs from the source prior by more than
      ``shift_threshold`` (or explains a pile-up) AND the label-shift assumption check
      passed (``label_shift_check``);
    * ``"covariate_shift"``: the same claim, but the check failed — the label mix cannot be
      estimated, predictions pile onto ``over_predicted``;
    * ``"inconclusive"``: the same claim with no check possible (no features);
    * ``"no_shift"``: no pile-up and BBSE's mix is close to the source prior.

    ``level`` is :data:`VERDICT_LEVELS` [verdict], raised to "fail" for a covariate shift
    with a pile-up.
    """

    num_classes: int
    n_target: int
    class_names: list[str] | None
    predicted_histogram: list[float]
    source_prior: list[float] | None
    marginal_entropy: float
    max_entropy: float
    entropy_ratio: float
    mean_entropy: float
    im_score: float
    largest_class: int
    largest_class_share: float
    target_confidence: float
    source_confidence: float | None
    source_recall: list[float] | None
    bbse: BBSEResult | None
    bbse_implied_share: float | None
    excess_share: float | None
    label_shift_distance: float | None
    pile_up: bool
    collapsed: bool
    label_shift: bool
    verdict: str
    reasons: list[str] = field(default_factory=list)
    level: str = "ok"
    true_target_mix: list[float] | None = None
    prediction_vs_truth: float | None = None
    over_predicted: list[str] = field(default_factory=list)
    #: without target labels: the χ² p-value that the predicted classes differ from the
    #: source's held-out predictions (computed when BBSE's mix is far from the prior)
    mix_change_p: float | None = None
    label_shift_check: LabelShiftCheck | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbse"] = self.bbse.to_dict() if self.bbse is not None else None
        d["label_shift_check"] = None if self.label_shift_check is None else self.label_shift_check.to_dict()
        return d


def _pile_names(hist: np.ndarray, names: list[str], reference: np.ndarray | None, cover: float = 0.6,
                most: int = 3) -> list[str]:
    """The classes predictions pile onto: by predicted share minus ``reference`` share
    (the true mix or the source prior; uniform if None), the fewest over-predicted
    classes that hold ``cover`` of the predictions (at most ``most``)."""
    ref = np.full(len(hist), 1.0 / len(hist)) if reference is None else reference
    excess = hist - ref
    order = [int(i) for i in np.argsort(-excess, kind="stable") if excess[i] > 0.02]
    out, held = [], 0.0
    for i in order[:most]:
        out.append(f"'{names[i]}' ({hist[i]:.0%})")
        held += hist[i]
        if held >= cover:
            break
    return out


def _source_side(k, source_probs, source_labels, source_confusion, confusion_kind, source_prior):
    """(conditional confusion C[pred, true] or None, source prior or None, source confidence)."""
    source_conf = c_joint = c_cond = None
    p_s = None if source_prior is None else to_numpy(source_prior).astype(np.float64).reshape(-1)
    if source_probs is not None or source_labels is not None:
        if source_probs is None or source_labels is None:
            raise UserError("source_probs, source_labels: give both (held-out labelled source data)")
        ps = probability_matrix(source_probs, "source_probs")
        if ps.shape[1] != k:
            raise UserError(f"source_probs: {ps.shape[1]} classes, target_probs has {k}")
        c_joint = confusion_matrix(source_labels, ps, k, normalize="joint")
        source_conf = float(ps.max(1).mean())
    elif source_confusion is not None:
        c = to_numpy(source_confusion).astype(np.float64)
        if c.shape != (k, k):
            raise UserError(f"source_confusion: shape {c.shape}, expected ({k}, {k})")
        if confusion_kind == "joint":
            c_joint = c / c.sum()
        elif confusion_kind == "conditional":
            c_cond = c
        else:
            raise UserError(f"confusion_kind: {confusion_kind!r} is not one of ['joint', 'conditional']")
    if c_joint is not None:
        c_cond, joint_prior = conditional_from_joint(c_joint)
        if p_s is None:
            p_s = joint_prior
    if p_s is not None:
        if p_s.shape != (k,) or (p_s < 0).any() or p_s.sum() <= 0:
            raise UserError(f"source_prior: expected {k} non-negative shares")
        p_s = p_s / p_s.sum()
    return c_cond, p_s, source_conf


def _true_mix(target_labels, k: int, n_t: int) -> np.ndarray | None:
    if target_labels is None:
        return None
    y = to_numpy(target_labels).astype(np.int64).reshape(-1)
    if len(y) != n_t:
        raise UserError(f"target_labels: {len(y)} labels for {n_t} target predictions")
    if (y < 0).any():  # unknown labels: no truth to judge against
        return None
    if y.max() >= k:
        raise UserError(f"target_labels: class ids must lie in [0, {k})")
    return np.bincount(y, minlength=k).astype(np.float64) / len(y)


def collapse_report(
    target_probs,
    *,
    source_probs=None,
    source_labels=None,
    source_confusion=None,
    confusion_kind: str = "joint",
    source_prior=None,
    class_names: list[str] | None = None,
    target_labels=None,
    source_features=None,
    target_features=None,
    label_shift_check_result: LabelShiftCheck | None = None,
    check_alpha: float = 0.05,
    check_permutations: int = 200,
    seed: int = 0,
    share_threshold: float = 0.75,
    entropy_ratio_threshold: float = 0.5,
    excess_tolerance: float = 0.05,
    degenerate_prior: float = 0.95,
    shift_threshold: float = 0.1,
    bias_threshold: float = 0.15,
    collapse_distance: float = 0.3,
    concentration_drop: float = 0.25,
) -> CollapseResult:
    """Tell a real label shift from a collapsed (or biased) model.

    Args:
        target_probs: softmax outputs on the target [N_t, K].
        source_probs, source_labels: softmax outputs [N_s, K] and labels [N_s] on
            held-out labelled source data; give these, or ``source_confusion``.
        source_confusion: C[pred, true] (``confusion_kind`` "joint" or "conditional").
        source_prior: source label shares [K] (defaults to the column sums of the
            joint confusion, or the label frequencies of ``source_labels``).
        class_names: names for the reasons text.
        target_labels: the target's true labels [N_t] when known (-1 = unknown): then the
            true mix decides (see :class:`CollapseResult`).
        source_features, target_features: features [N_s, D], [N_t, D] of the same rows as
            ``source_labels`` / ``target_probs``: with them a label-shift claim is checked
            by :func:`~diagnostics.label_shift.label_shift_check` (level ``check_alpha``,
            ``check_permutations``, ``seed``); or pass ``label_shift_check_result``.
        share_threshold, entropy_ratio_threshold: define a pile-up.
        excess_tolerance: how far the top-class share may exceed what BBSE's mix implies.
        degenerate_prior: a BBSE mix putting at least this share on one class is
            treated as implausible (it would mean a target with one class only).
        shift_threshold: half-L1 distance between a label mix and the source prior that
            counts as a label shift.
        bias_threshold, collapse_distance: half-L1 distances between predicted histogram
            and the true mix that count as a bias / a collapse (labels known); a collapse
            also needs the predictions concentrated: a pile-up, or the entropy of the
            predicted classes (as a share of log K) ``concentration_drop`` below the truth's.
    """
    pt = probability_matrix(target_probs, "target_probs")
    n_t, k = pt.shape
    if class_names is not None and len(class_names) != k:
        raise UserError(f"class_names: {len(class_names)} names for {k} classes")
    names = class_names or [str(i) for i in range(k)]

    hist = prediction_histogram(pt)
    h_marg = float(shannon_entropy(pt.mean(0)))
    h_mean = float(shannon_entropy(pt, axis=1).mean())
    h_max = math.log(k)
    top = int(hist.argmax())
    share = float(hist[top])
    target_conf = float(pt.max(1).mean())
    c_cond, p_s, source_conf = _source_side(k, source_probs, source_labels, source_confusion,
                                            confusion_kind, source_prior)
    truth = _true_mix(target_labels, k, n_t)

    # ---- pile-up, judged on the hard predictions: a model whose outputs hover near 1/K
    # but always tip the same way has a high soft marginal entropy, yet every decision
    # it makes is the same class — that is the collapse a user must hear about.
    h_pred = float(shannon_entropy(hist))
    ratio = h_pred / h_max
    pile_up = share >= share_threshold and ratio <= entropy_ratio_threshold
    reasons: list[str] = []
    if pile_up:
        reasons.append(
            f"{share:.0%} of target predictions are '{names[top]}' and the entropy of the predicted "
            f"classes is {h_pred:.3f} nats, {ratio:.0%} of log K = {h_max:.3f}"
        )
    if p_s is not None:
        reasons.append(f"source prior of '{names[top]}' is {p_s[top]:.0%}; predicted share on target {share:.0%}")

    # ---- BBSE
    bbse = None
    implied_share = excess = shift_dist = None
    if c_cond is not None:
        result = bbse_weights(c_cond, hist, kind="conditional", source_prior=p_s)
        if result.condition_number > _MAX_CONDITION:
            reasons.append(
                f"source confusion matrix is singular (condition number {result.condition_number:.3g}): "
                "the model does not separate the classes on source data, BBSE is undefined"
            )
        else:
            bbse = result
            implied_share = float(result.implied_histogram[top])
            excess = share - implied_share
            if p_s is not None:
                shift_dist = total_variation(result.target_prior, p_s)
            reasons.append(
                f"BBSE target label mix {np.round(result.target_prior, 3).tolist()} would yield "
                f"{implied_share:.0%} '{names[top]}' predictions (observed {share:.0%}); "
                f"source per-class recall {np.round(np.diagonal(c_cond), 3).tolist()}"
                + ("" if truth is None else " — BBSE assumes the images of each class did not change")
            )

    check = label_shift_check_result
    mix_change_p = None
    truth_dist = None
    over: list[str] = []
    level_override = None
    if truth is not None:
        # ---- the truth decides
        truth_dist = total_variation(hist, truth)
        over = _pile_names(hist, names, truth)
        reasons.append(f"true target label mix {np.round(truth, 3).tolist()}; predicted "
                       f"{np.round(hist, 3).tolist()} (half-L1 distance {truth_dist:.2f})")
        true_shift = p_s is not None and total_variation(truth, p_s) > shift_threshold
        # a collapse concentrates the predictions (a pile-up, or the predicted classes'
        # entropy well below the truth's); predictions merely far from the mix are a bias
        h_truth = float(shannon_entropy(truth)) / h_max
        concentrated = pile_up or ratio <= h_truth - concentration_drop
        if truth_dist >= collapse_distance and concentrated:
            verdict = "collapsed"
            reasons.append(f"predictions pile onto {', '.join(over)} although the target holds "
                           + ", ".join(f"'{names[i]}' {truth[i]:.0%}" for i in np.argsort(-truth)[:3]))
        elif truth_dist >= bias_threshold:
            verdict = "biased"
            reasons.append(f"predictions are biased towards {', '.join(over)} "
                           f"(distance {truth_dist:.2f} ≥ {bias_threshold})")
        elif true_shift:
            verdict = "label_shift"
            reasons.append(f"the true target mix differs from the source prior by {total_variation(truth, p_s):.2f} "
                           "and the predictions follow it: a label shift, no collapse")
        else:
            verdict = "no_shift"
    else:
        collapsed_unlabelled = False
        if pile_up and bbse is not None:
            unexplained = excess is not None and excess > excess_tolerance
            degenerate = bbse.target_prior[top] >= degenerate_prior
            collapsed_unlabelled = unexplained or degenerate
            if unexplained:
                reasons.append(
                    f"predictions exceed what any label mix explains by {excess:.0%} "
                    f"(tolerance {excess_tolerance:.0%}): the model over-predicts '{names[top]}'"
                )
            if degenerate:
                reasons.append(
                    f"explaining the histogram needs a target with {bbse.target_prior[top]:.0%} "
                    f"'{names[top]}' (≥ {degenerate_prior:.0%}): implausible unless the target holds one class"
                )
        elif pile_up:
            collapsed_unlabelled = True
            reasons.append("no usable held-out source confusion: a label shift to one class cannot be ruled out")
        # BBSE's mix is itself an estimate: on a few hundred images of many classes it
        # lies 0.1 from the source prior by chance alone (it did on identical data). A
        # changed mix is claimed only when the predicted classes themselves differ from
        # the source's held-out predictions beyond chance (χ² test of homogeneity).
        moved = None
        if source_probs is not None and shift_dist is not None and shift_dist > shift_threshold and not pile_up:
            counts_s = np.bincount(probability_matrix(source_probs, "source_probs").argmax(1), minlength=k)
            mix_test = prediction_shift_test(counts_s, np.bincount(pt.argmax(1), minlength=k), seed=seed)
            mix_change_p = float(mix_test["p_value"])
            moved = mix_change_p < check_alpha
            if not moved:
                reasons.append(
                    f"BBSE's mix differs from the source prior by {shift_dist:.3f}, but the predicted classes "
                    f"do not differ from the source's held-out predictions beyond chance (χ² p = "
                    f"{mix_change_p:.3g}, n = {int(counts_s.sum())} + {n_t}): no evidence that the label mix changed")
        claim = bbse is not None and not collapsed_unlabelled and (
            pile_up or (shift_dist is not None and shift_dist > shift_threshold and moved is not False))
        if claim and check is None and source_features is not None and target_features is not None \
                and source_labels is not None:
            try:
                check = label_shift_check(source_features, source_labels, target_features, bbse.target_prior,
                                          alpha=check_alpha, permutations=check_permutations, seed=seed)
            except UserError as err:
                # too few held-out source images of a class the mix needs: the assumption
                # cannot be checked here — "inconclusive" below, not a crash of the run
                reasons.append(f"the label-shift check could not run ({err})")
        over = _pile_names(hist, names, p_s)
        if collapsed_unlabelled:
            verdict = "collapsed"
        elif not claim:
            verdict = "no_shift"
            if check is not None and not check.passed:
                reasons.append(check.reason + "; the predicted mix stays close to the source prior")
        elif check is None:
            verdict = "inconclusive"
            reasons.append("BBSE reads the predictions as a label shift, but its assumption (the images of "
                           "each class did not change) could not be checked: label shift and collapse "
                           "cannot be told apart here")
        elif check.passed:
            verdict = "label_shift"
            reasons.append(
                f"BBSE label mix differs from the source prior by {shift_dist:.3f} (half L1 > {shift_threshold}) "
                f"and {check.reason}: a real label shift")
        else:
            verdict = "covariate_shift"
            level_override = "fail" if pile_up else "warn"
            reasons.append(f"{check.reason}; the label mix cannot be estimated; "
                           f"predictions pile onto {', '.join(over)}")
    collapsed = verdict == "collapsed"
    label_shift = verdict == "label_shift"
    recall_list = None if c_cond is None else [float(v) for v in np.diagonal(c_cond)]
    return CollapseResult(
        num_classes=int(k), n_target=int(n_t), class_names=class_names,
        predicted_histogram=[float(v) for v in hist],
        source_prior=None if p_s is None else [float(v) for v in p_s],
        marginal_entropy=h_marg, max_entropy=h_max, entropy_ratio=float(ratio),
        mean_entropy=h_mean, im_score=h_marg - h_mean,
        largest_class=top, largest_class_share=share,
        target_confidence=target_conf, source_confidence=source_conf, source_recall=recall_list,
        bbse=bbse, bbse_implied_share=implied_share, excess_share=excess,
        label_shift_distance=shift_dist, pile_up=bool(pile_up), collapsed=bool(collapsed),
        label_shift=bool(label_shift), verdict=verdict, reasons=reasons,
        level=level_override or VERDICT_LEVELS[verdict],
        true_target_mix=None if truth is None else [float(v) for v in truth],
        prediction_vs_truth=truth_dist, over_predicted=over, label_shift_check=check, mix_change_p=mix_change_p,
    )

