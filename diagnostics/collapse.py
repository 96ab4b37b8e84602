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

__all__ = [
    "BBSEResult",
    "CollapseResult",
    "prediction_histogram",
    "marginal_entropy",
    "mean_entropy",
    "im_score",
    "confusion_matrix",
    "bbse_weights",
    "collapse_report",
]

# A confusion matrix this ill-conditioned cannot be inverted meaningfully (e.g. the
# model already predicts one class on the source): BBSE is then not reported.
_MAX_CONDITION = 1e6


# --------------------------------------------------------------------------- inputs
def _to_np(a) -> np.ndarray:
    try:
        import torch

        if isinstance(a, torch.Tensor):
            return a.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    return np.asarray(a)


def _probs(p, name: str) -> np.ndarray:
    arr = _to_np(p).astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise UserError(f"{name}: expected probabilities [N, K] with K >= 2, got shape {arr.shape}")
    if not np.isfinite(arr).all() or (arr < -1e-9).any() or not np.allclose(arr.sum(1), 1.0, atol=1e-3):
        raise UserError(f"{name}: rows must be probabilities (non-negative, summing to 1) — pass softmax outputs, not logits")
    return arr


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    p = np.clip(p, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=axis)


def _half_l1(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(np.asarray(a) - np.asarray(b)).sum())


# --------------------------------------------------------------------------- statistics
def prediction_histogram(predictions, num_classes: int | None = None) -> np.ndarray:
    """Share of samples predicted as each class [K] (sums to 1).

    ``predictions``: probabilities/logits [N, K] (argmax is taken) or class ids [N].
    """
    arr = _to_np(predictions)
    if arr.ndim == 2:
        k = arr.shape[1] if num_classes is None else num_classes
        ids = arr.argmax(1)
    elif arr.ndim == 1:
        ids = arr.astype(np.int64)
        if num_classes is None:
            raise UserError("num_classes: required when predictions are class ids")
        k = num_classes
    else:
        raise UserError(f"predictions: expected [N, K] or [N], got shape {arr.shape}")
    if len(ids) == 0:
        raise UserError("predictions: empty")
    if ids.min() < 0 or ids.max() >= k:
        raise UserError(f"predictions: class ids must lie in [0, {k}), got range [{ids.min()}, {ids.max()}]")
    return np.bincount(ids, minlength=k).astype(np.float64) / len(ids)


def marginal_entropy(probs) -> float:
    """H(E_x p(y|x)) in nats: entropy of the mean prediction (≤ log K; 0 = one class)."""
    return float(_entropy(_probs(probs, "probs").mean(0)))


def mean_entropy(probs) -> float:
    """E_x H(p(y|x)) in nats: average per-sample uncertainty (0 = fully confident)."""
    return float(_entropy(_probs(probs, "probs"), axis=1).mean())


def im_score(probs) -> float:
    """Information-maximisation score H(E p) − E H(p) in nats (the mutual information
    between input and predicted label under the empirical distribution). Near 0 for a
    collapsed or an uncertain model; up to log K for diverse confident predictions."""
    p = _probs(probs, "probs")
    return float(_entropy(p.mean(0)) - _entropy(p, axis=1).mean())


def confusion_matrix(labels, predictions, num_classes: int, normalize: str | None = "joint") -> np.ndarray:
    """Confusion matrix C[pred, true] from labels [N] and predicted ids [N] (or probs [N, K]).

    ``normalize``: ``"joint"`` (C sums to 1), ``"conditional"`` (each column sums to 1;
    a column of a class absent from ``labels`` stays 0), or None (counts).
    """
    y = _to_np(labels).astype(np.int64).reshape(-1)
    pr = _to_np(predictions)
    yhat = pr.argmax(1) if pr.ndim == 2 else pr.astype(np.int64).reshape(-1)
    if len(y) != len(yhat) or len(y) == 0:
        raise UserError(f"labels, predictions: lengths differ or are empty ({len(y)} vs {len(yhat)})")
    if y.min() < 0 or y.max() >= num_classes or yhat.min() < 0 or yhat.max() >= num_classes:
        raise UserError(f"labels, predictions: class ids must lie in [0, {num_classes})")
    c = np.zeros((num_classes, num_classes))
    np.add.at(c, (yhat, y), 1.0)
    if normalize == "joint":
        return c / c.sum()
    if normalize == "conditional":
        col = c.sum(0, keepdims=True)
        return np.divide(c, col, out=np.zeros_like(c), where=col > 0)
    if normalize is None:
        return c
    raise UserError(f"normalize: {normalize!r} is not one of ['joint', 'conditional', None]")


# --------------------------------------------------------------------------- BBSE
@dataclass
class BBSEResult:
    """BBSE estimate. ``weights`` w_j = q_t(j)/p_s(j) (importance weights for
    re-weighting source losses; NaN where p_s(j) = 0), ``target_prior`` q̂ (sums to 1),
    ``implied_histogram`` = C_cond q̂ (the predicted histogram that label mix would
    produce), ``residual`` = half-L1(μ̂_t, implied_histogram)."""

    weights: list[float]
    target_prior: list[float]
    source_prior: list[float] | None
    implied_histogram: list[float]
    residual: float
    condition_number: float
    clipped: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        # JSON has no NaN: a class absent from the source has no weight.
        d["weights"] = [None if not math.isfinite(w) else w for w in self.weights]
        return d


def _conditional_from_joint(c_joint: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p_s = c_joint.sum(0)
    c_cond = np.divide(c_joint, p_s[None, :], out=np.zeros_like(c_joint), where=p_s[None, :] > 0)
    return c_cond, p_s


def bbse_weights(
    source_confusion,
    target_pred_distribution,
    kind: str = "joint",
    source_prior=None,
) -> BBSEResult:
    """Black-box shift estimation (Lipton, Wang & Smola, ICML 2018).

    Args:
        source_confusion: C [K, K], rows = predicted, columns = true class, measured
            on held-out labelled source data (not the training split: its confusion
            is optimistic). ``kind="joint"``: C[i, j] = P_s(ŷ=i, y=j) (counts are
            normalised to sum 1), and the source prior is its column sums.
            ``kind="conditional"``: C[i, j] = P_s(ŷ=i | y=j); give ``source_prior``
            to obtain weights.
        target_pred_distribution: μ̂_t [K], the share of target samples predicted as
            each class (:func:`prediction_histogram`).

    Returns:
        :class:`BBSEResult`. joint: w = C⁻¹ μ̂_t; conditional: q = C⁻¹ μ̂_t. Negative
        entries (estimation noise) are clipped at 0 and the target prior
        q̂ = w ⊙ p_s renormalised to sum 1. A singular C is solved by least squares
        (the condition number says how far to trust it).
    """
    c = _to_np(source_confusion).astype(np.float64)
    mu = _to_np(target_pred_distribution).astype(np.float64).reshape(-1)
    k = c.shape[0]
    if c.ndim != 2 or c.shape != (k, k) or mu.shape != (k,):
        raise UserError(f"source_confusion, target_pred_distribution: shapes {c.shape} and {mu.shape} do not match [K, K], [K]")
    if (c < 0).any() or (mu < 0).any() or mu.sum() <= 0:
        raise UserError("source_confusion, target_pred_distribution: must be non-negative")
    mu = mu / mu.sum()
    if kind == "joint":
        if c.sum() <= 0:
            raise UserError("source_confusion: all zero")
        c = c / c.sum()
        c_cond, p_s = _conditional_from_joint(c)
    elif kind == "conditional":
        c_cond = c
        p_s = None if source_prior is None else _to_np(source_prior).astype(np.float64).reshape(-1)
        if p_s is not None:
            if p_s.shape != (k,) or (p_s < 0).any() or p_s.sum() <= 0:
                raise UserError(f"source_prior: expected {k} non-negative shares, got {p_s}")
            p_s = p_s / p_s.sum()
    else:
        raise UserError(f"kind: {kind!r} is not one of ['joint', 'conditional']")

    # The joint and conditional systems have the same solution in q (q = w ⊙ p_s);
    # solving the conditional one keeps the code path single.
    cond = float(np.linalg.cond(c_cond))
    if math.isfinite(cond) and cond < 1.0 / np.finfo(np.float64).eps:
        q = np.linalg.solve(c_cond, mu)
    else:
        q = np.linalg.lstsq(c_cond, mu, rcond=None)[0]
    clipped = bool((q < 0).any())
    q = np.clip(q, 0.0, None)
    if q.sum() <= 0:
        # Nothing survives clipping: no label mix explains μ̂_t at all.
        q = np.full(k, 1.0 / k)
    q = q / q.sum()
    implied = c_cond @ q
    if p_s is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(p_s > 0, q / np.where(p_s > 0, p_s, 1.0), np.nan)
    else:
        w = np.full(k, np.nan)
    return BBSEResult(
        weights=[float(v) for v in w],
        target_prior=[float(v) for v in q],
        source_prior=None if p_s is None else [float(v) for v in p_s],
        implied_histogram=[float(v) for v in implied],
        residual=_half_l1(mu, implied),
        condition_number=cond if math.isfinite(cond) else float("inf"),
        clipped=clipped,
    )


# --------------------------------------------------------------------------- report
@dataclass
class CollapseResult:
    """Evidence and verdict. ``verdict`` is one of:

    * ``"collapsed"``: predictions pile onto one class (share ≥ share_threshold and
      entropy of the predicted-class histogram ≤ entropy_ratio_threshold · log K) and BBSE cannot explain
      it with a plausible label mix (or no source confusion was given);
    * ``"label_shift"``: the BBSE target mix differs from the source prior by more
      than ``shift_threshold`` (half L1) and explains the predicted histogram;
    * ``"no_shift"``: neither.
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

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bbse"] = self.bbse.to_dict() if self.bbse is not None else None
        return d


def collapse_report(
    target_probs,
    *,
    source_probs=None,
    source_labels=None,
    source_confusion=None,
    confusion_kind: str = "joint",
    source_prior=None,
    class_names: list[str] | None = None,
    share_threshold: float = 0.75,
    entropy_ratio_threshold: float = 0.5,
    excess_tolerance: float = 0.05,
    degenerate_prior: float = 0.95,
    shift_threshold: float = 0.1,
) -> CollapseResult:
    """Tell a real label shift from a collapsed model.

    Args:
        target_probs: softmax outputs on the (unlabelled) target [N_t, K].
        source_probs, source_labels: softmax outputs [N_s, K] and labels [N_s] on
            held-out labelled source data; give these, or ``source_confusion``.
        source_confusion: C[pred, true] (``confusion_kind`` "joint" or "conditional").
        source_prior: source label shares [K] (defaults to the column sums of the
            joint confusion, or the label frequencies of ``source_labels``).
        class_names: names for the reasons text.
        share_threshold, entropy_ratio_threshold: define a pile-up.
        excess_tolerance: how far the top-class share may exceed what BBSE's mix implies.
        degenerate_prior: a BBSE mix putting at least this share on one class is
            treated as implausible (it would mean a target with one class only).
        shift_threshold: half-L1 distance between BBSE mix and source prior that
            counts as a label shift.
    """
    pt = _probs(target_probs, "target_probs")
    n_t, k = pt.shape
    if class_names is not None and len(class_names) != k:
        raise UserError(f"class_names: {len(class_names)} names for {k} classes")
    names = class_names or [str(i) for i in range(k)]

    hist = prediction_histogram(pt)
    h_marg = float(_entropy(pt.mean(0)))
    h_mean = float(_entropy(pt, axis=1).mean())
    h_max = math.log(k)
    top = int(hist.argmax())
    share = float(hist[top])
    target_conf = float(pt.max(1).mean())

    # ---- source side: confusion, prior, confidence
    source_conf = None
    c_joint = None
    c_cond = None
    p_s = None if source_prior is None else _to_np(source_prior).astype(np.float64).reshape(-1)
    if source_probs is not None or source_labels is not None:
        if source_probs is None or source_labels is None:
            raise UserError("source_probs, source_labels: give both (held-out labelled source data)")
        ps = _probs(source_probs, "source_probs")
        if ps.shape[1] != k:
            raise UserError(f"source_probs: {ps.shape[1]} classes, target_probs has {k}")
        c_joint = confusion_matrix(source_labels, ps, k, normalize="joint")
        source_conf = float(ps.max(1).mean())
    elif source_confusion is not None:
        c = _to_np(source_confusion).astype(np.float64)
        if c.shape != (k, k):
            raise UserError(f"source_confusion: shape {c.shape}, expected ({k}, {k})")
        if confusion_kind == "joint":
            c_joint = c / c.sum()
        elif confusion_kind == "conditional":
            c_cond = c
        else:
            raise UserError(f"confusion_kind: {confusion_kind!r} is not one of ['joint', 'conditional']")
    if c_joint is not None:
        c_cond, joint_prior = _conditional_from_joint(c_joint)
        if p_s is None:
            p_s = joint_prior
    if p_s is not None:
        if p_s.shape != (k,) or (p_s < 0).any() or p_s.sum() <= 0:
            raise UserError(f"source_prior: expected {k} non-negative shares")
        p_s = p_s / p_s.sum()

    # ---- pile-up, judged on the hard predictions: a model whose outputs hover near 1/K
    # but always tip the same way has a high soft marginal entropy, yet every decision
    # it makes is the same class — that is the collapse a user must hear about.
    h_pred = float(_entropy(hist))
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
                shift_dist = _half_l1(result.target_prior, p_s)
            recall = np.diagonal(c_cond)
            reasons.append(
                f"BBSE target label mix {np.round(result.target_prior, 3).tolist()} would yield "
                f"{implied_share:.0%} '{names[top]}' predictions (observed {share:.0%}); "
                f"source per-class recall {np.round(recall, 3).tolist()}"
            )

    # ---- verdict
    if pile_up and bbse is not None:
        unexplained = excess is not None and excess > excess_tolerance
        degenerate = bbse.target_prior[top] >= degenerate_prior
        collapsed = unexplained or degenerate
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
        collapsed = True
        reasons.append("no usable held-out source confusion: a label shift to one class cannot be ruled out")
    else:
        collapsed = False
    label_shift = (not collapsed) and shift_dist is not None and shift_dist > shift_threshold
    if label_shift:
        reasons.append(
            f"BBSE label mix differs from the source prior by {shift_dist:.3f} (half L1 > {shift_threshold}) "
            "and reproduces the predicted histogram: a real label shift"
        )
    verdict = "collapsed" if collapsed else ("label_shift" if label_shift else "no_shift")

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
    )
