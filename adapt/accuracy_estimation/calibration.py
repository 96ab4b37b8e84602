"""The measured error of each estimator, shipped with the package.

``calibration.json`` is written by ``benchmarks/labelfree_study.py`` (never by hand):
per estimator the mean and 90th-percentile absolute error of the estimated accuracy and
of the estimated accuracy *change* (adapted − source-only), over shifts built from
packaged images whose target labels were hidden from the estimators, with the number of
cases, the date and the command. The audit's "± band" is the 90th-percentile error; an
estimator with no measured error is not shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class MeasuredError:
    """One estimator's measured absolute error (fractions of accuracy)."""

    estimator: str
    accuracy_mean: float
    accuracy_p90: float
    change_mean: float | None
    change_p90: float | None
    n_models: int
    n_changes: int


def load_calibration(path: str | Path | None = None) -> dict[str, Any]:
    """The calibration document ({} when the file is missing or unreadable)."""
    p = Path(path) if path is not None else CALIBRATION_PATH
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return {}


def measured_error(estimator: str, calibration: dict[str, Any] | None = None) -> MeasuredError | None:
    """The measured error of ``estimator`` (None when it was never measured)."""
    doc = load_calibration() if calibration is None else calibration
    e = (doc.get("estimators") or {}).get(estimator)
    if not e:
        return None
    return MeasuredError(estimator, float(e["accuracy_abs_error_mean"]), float(e["accuracy_abs_error_p90"]),
                         e.get("change_abs_error_mean"), e.get("change_abs_error_p90"),
                         int(e["n_models"]), int(e.get("n_changes", 0)))


def default_estimator(calibration: dict[str, Any] | None = None) -> str | None:
    """The estimator with the lowest measured mean error (recorded by the study)."""
    doc = load_calibration() if calibration is None else calibration
    return doc.get("default_estimator")
