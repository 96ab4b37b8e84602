"""The audit's label-free accuracy estimates: every estimator that has a measured error,
with its band, for one model; and the one-line text "estimated 46 % ± 8".

The band is the 90th percentile of the estimator's absolute error measured by
``benchmarks/labelfree_study.py`` (``adapt/accuracy_estimation/calibration.json``) — for
the agreement estimators, measured with as many models as the audit compares;
an estimator that was never measured is left out — an estimate without a measured error
is not shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from adapt.accuracy_estimation import estimate_all
from adapt.accuracy_estimation.calibration import load_calibration, measured_error, most_accurate


def accuracy_estimates(target_probs: np.ndarray, source_probs: np.ndarray | None = None,
                       source_labels: np.ndarray | None = None, other_target_preds: list[np.ndarray] | None = None,
                       calibration: dict[str, Any] | None = None, seed: int = 0,
                       known: dict[str, float] | None = None) -> dict[str, Any]:
    """``{"estimates": {name: {accuracy, band, change_band, mean_error, n_models}}, "default",
    "corroborating", "calibration": {cases, date, command}}`` for one model (fractions).

    ``target_probs`` [n_t, K]; ``source_probs`` [n_s, K] / ``source_labels`` [n_s]:
    held-out labelled source images as the model is deployed there; ``other_target_preds``
    [M, n_t]: the other models' predicted labels on the same target images; ``known``:
    estimates already computed from the same inputs (:func:`adapt.accuracy_estimation.estimate.estimate_all`)."""
    cal = load_calibration() if calibration is None else calibration
    raw = estimate_all(target_probs, source_probs, source_labels, other_target_preds, seed=seed, known=known)
    estimates, errors = {}, {}
    for name, value in raw.items():
        # agreement's error depends on how many models it compares: this one and its peers
        err = measured_error(name, cal, n_models=len(other_target_preds or []) + 1)
        if err is None:
            continue
        errors[name] = err
        estimates[name] = {"accuracy": float(value), "band": err.accuracy_p90, "change_band": err.change_p90,
                           "mean_error": err.accuracy_mean, "n_models": err.n_models}
    # the most accurate for this many models (agreement's error grows as peers go), by the
    # study's own rule; the study's pooled choice where the calibration has no mean errors
    default, second = most_accurate({n: errors[n].change_mean for n in estimates})
    if default is None:
        default, second = cal.get("default_estimator"), cal.get("corroborating_estimator")
    return {
        "estimates": estimates,
        "default": default if default in estimates else None,
        "corroborating": second if second in estimates else None,
        "calibration": {k: cal.get(k) for k in ("cases", "date", "command")},
    }


def estimate_text(section: dict[str, Any] | None) -> str | None:
    """'estimated 46 % ± 8 (agreement)' from :func:`accuracy_estimates`' output (None when
    no measured estimator applies)."""
    if not section or not section.get("default"):
        return None
    name = section["default"]
    e = section["estimates"][name]
    return f"estimated {100 * e['accuracy']:.0f} % ± {100 * e['band']:.0f} ({name})"
