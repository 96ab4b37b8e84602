"""Did adaptation help, when no target label is known?

The evidence is the change of the *estimated* target accuracy (adapted − source-only)
by two estimators of different kinds (:mod:`adapt.accuracy_estimation`: one from
the model's own confidence/transport, one from agreement between models), each with the
band its change estimate missed by in the measured study (90th percentile of
|estimated change − true change|, ``calibration.json``), plus collapse onto one class.

* **helped** — the primary interval Δ̂₁ ± b₁ lies above 0, the second estimator's change
  is positive too, and no collapse appeared;
* **negative transfer** — Δ̂₁ ± b₁ lies below 0 and an independent signal agrees (the
  second interval Δ̂₂ ± b₂ lies below 0, or collapse appeared);
* **did not help** — Δ̂₁ ± b₁ lies below 0 but nothing independent confirms a loss;
* **can't tell** — the interval crosses 0, the signals disagree, or an estimator has no
  measured band (an estimate without a measured error is not used).

One indicator never decides a gain or a loss on its own.

**Under a pure label shift** (the source model's collapse reading is "label_shift": BBSE's
label mix changed beyond chance and its assumption passed the two-sample checks) the
estimators above are blind — they read the changed class mix as lost accuracy. The
verdict then reads the bound of :func:`diagnostics.label_shift.change_bound_under_label_shift`
instead (``label_shift_bound``: the run's change lies in [low, high] at 95 %):

* **negative transfer** — high < 0 (a loss, from the source model's identified accuracy
  and how often the run disagrees with it) and the primary estimate's change is negative
  too, or collapse appeared; **did not help** — high < 0 alone;
* **can't tell** — otherwise: the bound cannot show a gain, and the blind estimates are
  not used to claim one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OUTCOMES = ("helped", "did not help", "negative transfer", "can't tell")
#: collapse "appeared": the largest predicted class holds this share of the target
#: predictions after, and at least 1.5× its share before
COLLAPSE_SHARE = 0.5


@dataclass
class LabelFreeEvidence:
    """What the label-free verdict reads (accuracies and bands as fractions)."""

    estimates_before: dict[str, float]
    estimates_after: dict[str, float]
    change_bands: dict[str, float | None]
    largest_share_before: float | None = None
    largest_share_after: float | None = None
    n_classes: int | None = None
    #: (low, high) of the change under a pure label shift, when the reading says so
    label_shift_bound: tuple[float, float] | None = None


@dataclass
class LabelFreeOutcome:
    outcome: str
    change: float
    band: float | None
    reasons: list[str] = field(default_factory=list)


def collapse_appeared(ev: LabelFreeEvidence) -> bool:
    b, a = ev.largest_share_before, ev.largest_share_after
    if a is None or b is None:
        return False
    return a >= COLLAPSE_SHARE and a >= 1.5 * b


def labelfree_outcome(ev: LabelFreeEvidence, primary: str, secondary: str | None) -> LabelFreeOutcome:
    """The verdict from the primary estimator's change and its band, corroborated by the
    secondary estimator's change and by collapse (see the module docstring)."""
    d1 = ev.estimates_after[primary] - ev.estimates_before[primary]
    b1 = ev.change_bands.get(primary)
    if b1 is None:
        return LabelFreeOutcome("can't tell", d1, None, [f"{primary} has no measured error"])
    d2 = b2 = None
    if secondary and secondary in ev.estimates_after and secondary in ev.estimates_before:
        d2 = ev.estimates_after[secondary] - ev.estimates_before[secondary]
        b2 = ev.change_bands.get(secondary)
    collapse = collapse_appeared(ev)
    reasons = [f"{primary} change {100 * d1:+.1f} ± {100 * b1:.1f} points"]
    if d2 is not None:
        reasons.append(f"{secondary} change {100 * d2:+.1f}" + (f" ± {100 * b2:.1f}" if b2 is not None else "")
                       + " points")
    if collapse:
        reasons.append(f"collapse appeared ({100 * ev.largest_share_after:.0f} % of target predictions in one class)")
    if ev.label_shift_bound is not None:
        low, high = ev.label_shift_bound
        reasons.append(f"a pure label shift: the change lies in [{100 * low:+.1f}, {100 * high:+.1f}] points "
                       "(the source model's accuracy from its source recalls and BBSE's label mix, and how often "
                       "the run disagrees with it; 95 %) — the accuracy estimates cannot see this shift")
        if high < 0:
            confirmed = collapse or d1 < 0
            return LabelFreeOutcome("negative transfer" if confirmed else "did not help", d1, b1, reasons)
        return LabelFreeOutcome("can't tell", d1, b1, reasons + ["the bound crosses 0"])
    if d1 - b1 > 0:
        if d2 is not None and d2 > 0 and not collapse:
            return LabelFreeOutcome("helped", d1, b1, reasons)
        return LabelFreeOutcome("can't tell", d1, b1, reasons + ["the signals disagree"])
    if d1 + b1 < 0:
        confirmed = collapse or (d2 is not None and b2 is not None and d2 + b2 < 0)
        return LabelFreeOutcome("negative transfer" if confirmed else "did not help", d1, b1, reasons)
    return LabelFreeOutcome("can't tell", d1, b1, reasons + ["the interval crosses 0"])
