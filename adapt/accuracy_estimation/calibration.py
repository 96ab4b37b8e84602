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


def measured_error(estimator: str, calibration: dict[str, Any] | None = None,
                   n_models: int | None = None) -> MeasuredError | None:
    """The measured error of ``estimator`` (None when it was never measured).

    ``n_models``: how many models the estimate compared (the model and its peers). An
    estimator whose error was measured per number of models (``by_models``: agreement, whose
    median over two peers is noisier than over six) gets the error measured for that number,
    or, when that number was not measured, for the largest measured number below it (more
    models than the study had: the error measured with the most); None when fewer models are
    compared than were ever measured — an estimate without a measured error is not shown."""
    doc = load_calibration() if calibration is None else calibration
    e = (doc.get("estimators") or {}).get(estimator)
    if not e:
        return None
    by_models = e.get("by_models")
    if by_models and n_models is not None:
        measured = sorted(int(k) for k in by_models)
        fits = [k for k in measured if k <= n_models]
        if not fits:
            return None
        e = by_models[str(fits[-1])]
    return MeasuredError(estimator, float(e["accuracy_abs_error_mean"]), float(e["accuracy_abs_error_p90"]),
                         e.get("change_abs_error_mean"), e.get("change_abs_error_p90"),
                         int(e["n_models"]), int(e.get("n_changes", 0)))


def most_accurate(change_errors: dict[str, float | None]) -> tuple[str | None, str | None]:
    """The default and the corroborating estimator: the lowest mean error of the estimated
    accuracy *change* (what the label-free verdict reads), and the most accurate of the other
    family — agreement between models against one model's own confidence or transport: two
    agreement variants are one signal, not two. ``change_errors``: {estimator: mean |error|}
    (None: not measured). Used by the study for its pooled choice and by the audit for the
    number of models it compares."""
    ranked = sorted((e for e, v in change_errors.items() if v is not None), key=lambda e: change_errors[e])
    if not ranked:
        return None, None
    primary = ranked[0]
    family = lambda e: e.startswith("agreement")  # noqa: E731
    return primary, next((e for e in ranked[1:] if family(e) != family(primary)), None)


def estimators_for(n_models: int, available: tuple[str, ...] | list[str],
                   calibration: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
    """(default, corroborating) among ``available`` when ``n_models`` models are compared:
    :func:`most_accurate` of their change errors measured for that many models (the audit's
    rule for the estimate it shows; agreement's error depends on the count)."""
    errs = {}
    for name in available:
        e = measured_error(name, calibration, n_models=n_models)
        if e is not None and e.change_mean is not None:
            errs[name] = e.change_mean
    return most_accurate(errs)


def default_estimator(calibration: dict[str, Any] | None = None) -> str | None:
    """The estimator with the lowest measured mean error (recorded by the study)."""
    doc = load_calibration() if calibration is None else calibration
    return doc.get("default_estimator")
