"""Per-group metrics of a classifier, computed by fairlearn (``MetricFrame``,
``equalized_odds_difference``, ``demographic_parity_difference``).

fairlearn is the optional ``fairness`` extra (``pip install 'domaingap[fairness]'``);
without it a :class:`~adapt.errors.UserError` names the extra. The groups of a report
are the values of one group column; its *cells* are (group value x class), the groups of
group DRO (Sagawa et al., ICLR 2020), whose smallest accuracy is the worst-group accuracy.
With more than two classes the two parity differences are the largest one-vs-rest ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from adapt.errors import UserError

FAIRNESS_EXTRA = "pip install 'domaingap[fairness]'"


def fairlearn_metrics():
    """fairlearn.metrics, or a UserError naming the optional extra."""
    try:
        import fairlearn.metrics as fm  # optional extra: imported on first use
    except ImportError:
        raise UserError(f"per-group fairness metrics need fairlearn: {FAIRNESS_EXTRA}") from None
    return fm


@dataclass
class GroupReport:
    """Accuracy per group and per cell (``"value / class"``), the worst cell, and the
    equalized-odds and demographic-parity differences between the groups (None when
    undefined, e.g. one group only)."""

    column: str
    per_group: dict[str, dict[str, Any]]
    per_cell: dict[str, dict[str, Any]]
    worst_cell: str
    worst_group_accuracy: float
    worst_cell_n: int
    eo_difference: float | None
    dp_difference: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def group_report(labels: np.ndarray, preds: np.ndarray, groups: Sequence[str], classes: Sequence[str],
                 column: str) -> GroupReport:
    """The :class:`GroupReport` of predictions ``preds`` [N] for true ``labels`` [N]
    (class indices) over the per-sample group values ``groups`` [N] of ``column``."""
    fm = fairlearn_metrics()
    from sklearn.metrics import accuracy_score  # late: sklearn's import time; only group reports need it

    y, p = np.asarray(labels), np.asarray(preds)
    g = np.asarray([str(v) for v in groups])
    metrics = {"accuracy": accuracy_score, "n": fm.count}
    by_group = fm.MetricFrame(metrics=metrics, y_true=y, y_pred=p, sensitive_features=g).by_group
    cells = np.char.add(np.char.add(g, " / "), np.asarray([classes[int(c)] for c in y], dtype=str))
    by_cell = fm.MetricFrame(metrics=metrics, y_true=y, y_pred=p, sensitive_features=cells).by_group
    per_cell = {str(k): {"accuracy": float(r["accuracy"]), "n": int(r["n"])} for k, r in by_cell.iterrows()}
    worst = min(per_cell, key=lambda k: (per_cell[k]["accuracy"], k))
    eo = dp = None
    if len(set(g.tolist())) >= 2:
        # binary: the positive class only; K > 2: the largest one-vs-rest difference
        positives = [1] if len(classes) == 2 else range(len(classes))
        eo = max(_finite(fm.equalized_odds_difference(y == k, p == k, sensitive_features=g)) or 0.0
                 for k in positives)
        dp = max(_finite(fm.demographic_parity_difference(y == k, p == k, sensitive_features=g)) or 0.0
                 for k in positives)
    return GroupReport(
        column=column,
        per_group={str(k): {"accuracy": float(r["accuracy"]), "n": int(r["n"])} for k, r in by_group.iterrows()},
        per_cell=per_cell, worst_cell=worst, worst_group_accuracy=per_cell[worst]["accuracy"],
        worst_cell_n=per_cell[worst]["n"], eo_difference=eo, dp_difference=dp,
    )


def worst_group_score(labels: np.ndarray, preds: np.ndarray, groups: Sequence[str], classes: Sequence[str],
                      column: str) -> tuple[float, dict[str, float]]:
    """Model selection by worst-group accuracy (Sagawa et al., ICLR 2020; their code keeps
    the epoch with the best ``min(avg_group_acc)`` on the validation split): (score, logs).

    score = worst cell accuracy + average accuracy / (n^2 + 1) on n images: two different
    worst-cell accuracies k/a and l/b (a, b <= n) differ by at least 1/n^2, more than the
    second term, so the order is the worst cell first and the average only among ties
    (with a handful of minority images per cell, ties are common)."""
    rep = group_report(labels, preds, groups, classes, column)
    n = len(labels)
    avg = float(np.mean(np.asarray(labels) == np.asarray(preds)))
    score = rep.worst_group_accuracy + avg / (n * n + 1)
    return score, {"val_accuracy": avg, "val_worst_group_accuracy": rep.worst_group_accuracy}


def group_values(dataset: Any, column: str, key: str) -> list[str]:
    """The group column ``column`` of ``dataset`` (a DomainDataset), or a UserError naming
    ``key`` (the recipe key that asked for it) and the columns the domain has."""
    groups = getattr(dataset, "groups", None) or {}
    if column not in groups:
        have = ", ".join(sorted(groups)) or "none"
        raise UserError(f"{key}: {getattr(dataset, 'name', 'the domain')} has no group column {column!r} "
                        f"(its group columns: {have}; a CSV domain names them in group_columns)")
    return [str(v) for v in groups[column]]
