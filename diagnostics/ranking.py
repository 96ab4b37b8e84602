"""Which adapted run would a user deploy? The label-free ranking of the runs.

Three rules (``method.deploy``). ``estimate`` (the default since 2026-12-07): every model —
the source model too — ranked by its estimated target accuracy (:func:`rank_by_estimate`).
``reverse_validation``: the same models re-ordered by reverse validation from the images
(:func:`by_reverse_validation`; over 32 label-hidden cases a lower mean regret than
``estimate`` — 0.6 to 1.2 points against 1.5 over three seeds of the reverse network — but a
worse worst case in two of the three, 10.3 against 8.1: ``benchmarks/reverse_validation_study.py``,
docs/labelfree.md). ``selection``: the runs ranked by the checkpoint
selector's score at their chosen epoch (:func:`rank_runs`):

The audit judges the run a user would ship: the one the recipe's label-free selector
(``method.selection``: IM, SND, source validation accuracy) scores highest at its selected
epoch — not whichever run the recipe happens to list last. When target labels are known
the oracle rank (by target test accuracy) is shown beside it, so a reader sees how far
the label-free choice is from the best run (Musgrave et al., "Benchmarking validation
methods for unsupervised domain adaptation", 2021: label-free selectors often miss it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from adapt.accuracy_estimation.agreement import agreement_estimate
from adapt.accuracy_estimation.calibration import estimators_for
from adapt.accuracy_estimation.cot import estimate_cot
from adapt.selectors import chosen_epoch, run_score_key

__all__ = ["selection_score", "rank_runs", "oracle_ranks", "EstimateRanking", "rank_by_estimate",
           "by_reverse_validation"]

#: the estimators a deployment ranking reads: they need only each model's target
#: predictions (and the source label mix), not the model as deployed on the source
RANKING_ESTIMATORS = ("agreement", "agreement_mean", "cot")


def selection_score(selection: Mapping | None, selector: str) -> float | None:
    """The selector's score of the selected epoch (None when it was not recorded).

    ``selection``: ``{"selected_epoch": e, "epochs": [{"epoch": e, "im": ..., ...}]}``;
    for the ``last`` selector (no score of its own) the IM score ranks.
    """
    if not selection:
        return None
    key = run_score_key(selector)
    epochs = selection.get("epochs") or []
    chosen = chosen_epoch(selection) or (epochs[-1] if epochs else {})
    v = chosen.get(key, chosen.get("score"))
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def rank_runs(selections: Mapping[str, Mapping | None], selector: str,
              target_accuracy: Mapping[str, float | None] | None = None) -> list[dict[str, Any]]:
    """Runs ordered by the label-free score, best first (ties and unscored runs keep the
    recipe order, unscored last).

    Returns ``[{run, score, rank, oracle_rank}]``: ``rank`` 1 = recommended; ``oracle_rank``
    by target accuracy (1 = best; None when target labels are unknown).
    """
    names = list(selections)
    scores = {n: selection_score(selections[n], selector) for n in names}
    order = sorted(names, key=lambda n: (scores[n] is None, -(scores[n] or 0.0), names.index(n)))
    oracle = oracle_ranks(names, target_accuracy)
    return [{"run": n, "score": scores[n], "rank": i + 1, "oracle_rank": oracle.get(n)}
            for i, n in enumerate(order)]


def oracle_ranks(names: list[str], target_accuracy: Mapping[str, float | None] | None) -> dict[str, int]:
    """{name: rank by target accuracy} (1 = best; ties keep the order of ``names``) for the
    models whose accuracy is known — the oracle beside a label-free ranking."""
    acc = {n: (target_accuracy or {}).get(n) for n in names}
    known = sorted((n for n in names if acc[n] is not None), key=lambda n: (-float(acc[n]), names.index(n)))
    return {n: i + 1 for i, n in enumerate(known)}


def recommended_run(selections: Mapping[str, Mapping | None], selector: str,
                    audit_run: str | None = None) -> str | None:
    """The run a user would deploy: ``audit_run`` when the recipe names one, else the run
    :func:`rank_runs` ranks first by the label-free score (None when there are no runs)."""
    if audit_run:
        return audit_run
    ranking = rank_runs(selections, selector)
    return ranking[0]["run"] if ranking else None


@dataclass(frozen=True)
class EstimateRanking:
    """Models ranked by estimated target accuracy (:func:`rank_by_estimate`).

    ``order``: model names, best first; ``estimator`` / ``corroborating``: what ranks and
    what breaks ties; ``estimates``: {model: {estimator: estimated accuracy [0, 1]}};
    ``images``: the target images the estimates read."""

    order: list[str]
    estimator: str
    corroborating: str | None
    estimates: dict[str, dict[str, float]]
    images: int
    #: the audit's label-free reading of the first-listed (source) model's predictions
    #: (``verdict``, ``reason``: :func:`diagnostics.gap.collapse_section`) when one was
    #: given; "label_shift" put that model first
    source_reading: dict[str, str] | None = None
    #: what ordered the models: "estimate", or "reverse_validation" (:func:`by_reverse_validation`)
    rule: str = "estimate"
    #: {model: reverse-validation score [0, 1]} when ``rule`` is "reverse_validation"
    reverse_validation: dict[str, float] | None = None

    def rows(self, target_accuracy: Mapping[str, float | None] | None = None) -> list[dict[str, Any]]:
        """The ranking as :func:`rank_runs` gives it — ``[{run, score, rank, oracle_rank}]``,
        every model, score = what ordered them: the reverse-validation score, or the ranking
        estimator's estimate."""
        oracle = oracle_ranks(self.order, target_accuracy)
        rv = self.reverse_validation if self.rule == "reverse_validation" else None
        return [{"run": n, "score": rv[n] if rv else self.estimates[n][self.estimator], "rank": i + 1,
                 "oracle_rank": oracle.get(n)} for i, n in enumerate(self.order)]

    def to_dict(self) -> dict[str, Any]:
        rv = self.reverse_validation or {}
        return {"rule": self.rule, "estimator": self.estimator, "corroborating": self.corroborating,
                "images": self.images, "source_reading": self.source_reading,
                "ranking": [{"model": n, "rank": i + 1, **{k: round(v, 6) for k, v in self.estimates[n].items()},
                             **({"reverse_validation": round(rv[n], 6)} if n in rv else {})}
                            for i, n in enumerate(self.order)]}


def rank_by_estimate(target_probs: Mapping[str, np.ndarray], source_labels: np.ndarray | None = None,
                     seed: int = 0, calibration: dict[str, Any] | None = None,
                     source_reading: Mapping[str, Any] | None = None) -> EstimateRanking | None:
    """Rank models by their estimated accuracy on the same unlabelled target images.

    ``target_probs``: {model name: [n, K] predicted probabilities}, every model on the same
    n images in the same order (the first listed wins ties: list the source model first,
    so that a run must be estimated *higher* to be preferred); ``source_labels`` [m]: the
    labelled source images' classes (COT's label mix; None: COT is not used).

    The estimator is the one the audit shows for this many models — the lowest measured
    error of the estimated change for that count
    (:func:`adapt.accuracy_estimation.calibration.estimators_for`: COT for two or three
    models, the median agreement from four); the corroborating one breaks ties. Agreement
    (Jiang et al., ICLR 2022): each model's agreement rate with every other model; COT
    (Lu et al., NeurIPS 2023): 1 − the optimal-transport cost between the predictions and
    the source label mix. None when no estimator with a measured error applies, or when
    only agreement applies to two models (no source labels): each agrees with the other
    equally, so it could not rank them (the caller then keeps its other rule).

    ``source_reading``: the audit's label-free reading of the first-listed model's target
    predictions (its collapse section: BBSE's label mix, the χ² test that the predicted
    classes changed, the label-shift assumption checked on the features). When it is
    ``"label_shift"`` that model ranks first whatever the estimates say: under a pure label
    shift (p(x | y) unchanged) every estimator here reads the changed class mix as lost
    accuracy and rates highest the models whose predictions were pulled back to the source
    mix — what marginal alignment does, and what hurts there (Zhao et al., ICML 2019). On
    the 29 label-hidden cases this rule's regret is 1.0 / 8.1 points (mean / worst) against
    1.5 / 8.1 without it (``benchmarks/run_selection_study.py``, docs/labelfree.md).
    """
    names = list(target_probs)
    probs = {n: np.asarray(p, dtype=np.float64) for n, p in target_probs.items()}
    available = [e for e in RANKING_ESTIMATORS
                 if (e != "cot" or source_labels is not None) and (e == "cot" or len(names) >= 2)]
    first, second = estimators_for(len(names), available, calibration)
    if first is None or not names:
        return None
    if len(names) == 2 and first.startswith("agreement"):
        return None  # two models agree with each other equally: no ranking, by construction
    preds = {n: p.argmax(1) for n, p in probs.items()}
    used = [e for e in (first, second) if e]
    est: dict[str, dict[str, float]] = {n: {} for n in names}
    for n in names:
        others = [preds[m] for m in names if m != n]
        for e in used:
            if e == "cot":
                est[n][e] = estimate_cot(probs[n], np.asarray(source_labels), seed=seed)
            else:
                est[n][e] = agreement_estimate(preds[n], others, "median" if e == "agreement" else "mean")
    key = lambda n: tuple(est[n][e] for e in used)  # noqa: E731
    order = sorted(names, key=lambda n: tuple(-v for v in key(n)))  # stable: the first listed wins ties
    reading = None if source_reading is None else {"verdict": str(source_reading.get("verdict")),
                                                   "reason": str(source_reading.get("reason", ""))}
    order = _source_first_under_label_shift(order, names[0], reading)
    return EstimateRanking(order, first, second, est, int(len(next(iter(preds.values())))), reading)


def _source_first_under_label_shift(order: list[str], source: str, reading: Mapping | None) -> list[str]:
    """``order`` with ``source`` first when the audit's reading of its predictions is a pure
    label shift (:func:`rank_by_estimate` says why), else ``order`` as it is."""
    if reading is not None and reading.get("verdict") == "label_shift":
        return [source] + [n for n in order if n != source]
    return order


def by_reverse_validation(ranking: EstimateRanking, scores: Mapping[str, float]) -> EstimateRanking:
    """``ranking``'s models re-ordered by their reverse-validation score (highest first;
    :func:`adapt.reverse_validation.reverse_validation_images`), ties in ``ranking``'s own
    order; the label-shift reading still puts the source model first (under a pure label
    shift, :func:`rank_by_estimate`). The estimates stay: the audit shows them, with their
    measured bands, as the estimated accuracies — reverse validation is a score for choosing,
    not an accuracy. ``scores`` must name every model of ``ranking``."""
    missing = [n for n in ranking.order if n not in scores]
    if missing:
        raise ValueError(f"reverse validation: no score for {', '.join(missing)}")
    position = {n: i for i, n in enumerate(ranking.order)}
    order = sorted(ranking.order, key=lambda n: (-float(scores[n]), position[n]))
    # under a label shift rank_by_estimate put the source model (listed first) at the top
    order = _source_first_under_label_shift(order, ranking.order[0], ranking.source_reading)
    return EstimateRanking(order, ranking.estimator, ranking.corroborating, ranking.estimates, ranking.images,
                           ranking.source_reading, rule="reverse_validation",
                           reverse_validation={n: float(scores[n]) for n in ranking.order})
