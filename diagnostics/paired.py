"""Did a change help, hurt, or can we not tell? Paired comparisons on the same images.

Two models scored on the SAME test images give paired outcomes; comparing their two
accuracies as if independent wastes that pairing (and a "+0.7 points" on 180 images says
nothing without it). Here:

* :func:`mcnemar_exact` — McNemar's test (McNemar 1947) in its exact form: only the
  discordant pairs carry information, b = #(right before, wrong after),
  c = #(wrong before, right after); under H0 (equal accuracy) b ~ Binomial(b + c, ½), so
  p = min(1, 2 · P(Bin(b + c, ½) ≤ min(b, c))) (two-sided; Fagerland et al. 2013
  recommend the exact or mid-p form for small b + c).
* :func:`paired_bootstrap_ci` — percentile bootstrap (Efron & Tibshirani 1993, §13) of the
  mean paired difference mean(after_i − before_i), resampling images with replacement.
* :func:`accuracy_change` — both, and a verdict: ``"helped"`` / ``"hurt"`` only when the
  interval excludes 0 and McNemar rejects at α; otherwise ``"inconclusive"``.
* :func:`mean_change` — the same interval for any per-image score (attribution share in
  a region, 0/1 "prediction flipped when occluded"), paired or not, and a word: ``"rose"``
  / ``"fell"`` only outside the interval, else ``"no clear change"``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from adapt.errors import UserError

__all__ = [
    "mcnemar_exact",
    "paired_bootstrap_ci",
    "AccuracyChange",
    "accuracy_change",
    "MeanChange",
    "mean_change",
]


def _vector(a, name: str) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise UserError(f"{name}: empty")
    if not np.isfinite(arr).all():
        raise UserError(f"{name}: contains NaN or infinite values")
    return arr


def mcnemar_exact(correct_before, correct_after) -> tuple[float, int, int]:
    """Exact two-sided McNemar test on paired 0/1 outcomes [N] (1 = correct).

    Returns (p, b, c) with b = #(1 before, 0 after), c = #(0 before, 1 after).
    p = 1 when there are no discordant pairs.
    """
    from scipy.stats import binom  # late: scipy.stats takes seconds to import

    cb = _vector(correct_before, "correct_before") > 0.5
    ca = _vector(correct_after, "correct_after") > 0.5
    if cb.shape != ca.shape:
        raise UserError(f"correct_before, correct_after: lengths differ ({cb.size} vs {ca.size})")
    b = int((cb & ~ca).sum())
    c = int((~cb & ca).sum())
    if b + c == 0:
        return 1.0, b, c
    p = min(1.0, 2.0 * float(binom.cdf(min(b, c), b + c, 0.5)))
    return p, b, c


def paired_bootstrap_ci(before, after, *, n_boot: int = 2000, level: float = 0.95,
                        seed: int = 0, paired: bool = True) -> tuple[float, float, float]:
    """Percentile bootstrap interval of mean(after) − mean(before).

    ``paired``: ``before``/``after`` [N] belong to the same N items and are resampled
    together; else each sample is resampled on its own. Returns (difference, low, high).
    """
    xb, xa = _vector(before, "before"), _vector(after, "after")
    if paired and xb.shape != xa.shape:
        raise UserError(f"before, after: paired values need equal lengths ({xb.size} vs {xa.size})")
    if n_boot < 1:
        raise UserError(f"n_boot: must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise UserError(f"level: must be in (0, 1), got {level}")
    rng = np.random.default_rng(int(seed))
    diff = float(xa.mean() - xb.mean())
    if paired:
        delta = xa - xb
        idx = rng.integers(0, delta.size, size=(n_boot, delta.size))
        reps = delta[idx].mean(1)
    else:
        reps = (xa[rng.integers(0, xa.size, size=(n_boot, xa.size))].mean(1)
                - xb[rng.integers(0, xb.size, size=(n_boot, xb.size))].mean(1))
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return diff, float(lo), float(hi)


@dataclass
class AccuracyChange:
    """Paired accuracy comparison of two models on the same ``n`` images.

    ``delta`` = after − before (fraction); [``ci_low``, ``ci_high``] its ``level`` paired
    bootstrap interval; ``mcnemar_p`` with ``b`` = right → wrong, ``c`` = wrong → right;
    ``verdict`` in {"helped", "hurt", "inconclusive"}.
    """

    before: float
    after: float
    delta: float
    ci_low: float
    ci_high: float
    level: float
    mcnemar_p: float
    b: int
    c: int
    n: int
    alpha: float
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)

    def phrase(self) -> str:
        """'+3.9 points (95% CI +1.1 to +6.7; McNemar p = 0.004, 12 → 31 images)'."""
        pc = 100.0 * self.level
        p = "p < 0.001" if self.mcnemar_p < 0.001 else f"p = {self.mcnemar_p:.3f}"
        return (f"{100 * self.delta:+.1f} points ({pc:.0f}% CI {100 * self.ci_low:+.1f} to "
                f"{100 * self.ci_high:+.1f}; McNemar {p}, {self.b} images right→wrong, "
                f"{self.c} wrong→right of {self.n})")


def accuracy_change(labels, pred_before, pred_after, *, alpha: float = 0.05, level: float = 0.95,
                    n_boot: int = 2000, seed: int = 0) -> AccuracyChange:
    """Compare two models' predictions [N] (class ids, or probabilities [N, K]) against
    the same ``labels`` [N]: paired bootstrap CI and exact McNemar test.

    The verdict is "helped" / "hurt" only when both agree: the interval excludes 0 and
    McNemar's p ≤ ``alpha``; otherwise "inconclusive".
    """
    y = np.asarray(labels).reshape(-1)

    def ids(p, name):
        arr = np.asarray(p.detach().cpu().numpy() if hasattr(p, "detach") else p)
        arr = arr.argmax(1) if arr.ndim == 2 else arr.reshape(-1)
        if arr.shape != y.shape:
            raise UserError(f"{name}: {arr.size} predictions for {y.size} labels")
        return arr

    cb = (ids(pred_before, "pred_before") == y).astype(np.float64)
    ca = (ids(pred_after, "pred_after") == y).astype(np.float64)
    return accuracy_change_from_correct(cb, ca, alpha=alpha, level=level, n_boot=n_boot, seed=seed)


def accuracy_change_from_correct(correct_before, correct_after, *, alpha: float = 0.05,
                                 level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> AccuracyChange:
    """:func:`accuracy_change` from paired 0/1 correctness vectors [N]."""
    cb, ca = _vector(correct_before, "correct_before"), _vector(correct_after, "correct_after")
    p, b, c = mcnemar_exact(cb, ca)
    delta, lo, hi = paired_bootstrap_ci(cb, ca, n_boot=n_boot, level=level, seed=seed)
    if p <= alpha and lo > 0:
        verdict = "helped"
    elif p <= alpha and hi < 0:
        verdict = "hurt"
    else:
        verdict = "inconclusive"
    return AccuracyChange(
        before=float(cb.mean()), after=float(ca.mean()), delta=delta, ci_low=lo, ci_high=hi,
        level=float(level), mcnemar_p=float(p), b=b, c=c, n=int(cb.size), alpha=float(alpha),
        verdict=verdict,
    )


@dataclass
class MeanChange:
    """Change of a per-image score's mean with its bootstrap interval; ``word`` is
    "rose" / "fell" only when the interval excludes 0, else "no clear change"."""

    before: float
    after: float
    delta: float
    ci_low: float
    ci_high: float
    level: float
    paired: bool
    n_before: int
    n_after: int
    word: str

    def to_dict(self) -> dict:
        return asdict(self)


def mean_change(before, after, *, paired: bool = True, level: float = 0.95, n_boot: int = 2000,
                seed: int = 0) -> MeanChange:
    """Bootstrap the change of the mean of a per-image score (see module docstring)."""
    xb, xa = _vector(before, "before"), _vector(after, "after")
    delta, lo, hi = paired_bootstrap_ci(xb, xa, n_boot=n_boot, level=level, seed=seed, paired=paired)
    word = "rose" if lo > 0 else ("fell" if hi < 0 else "no clear change")
    return MeanChange(before=float(xb.mean()), after=float(xa.mean()), delta=delta, ci_low=lo, ci_high=hi,
                      level=float(level), paired=bool(paired), n_before=int(xb.size), n_after=int(xa.size),
                      word=word)
