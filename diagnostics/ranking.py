"""Which adapted run would a user deploy? The label-free selector's ranking of the runs.

The audit judges the run a user would ship: the one the recipe's label-free selector
(``method.selection``: IM, SND, source validation accuracy) scores highest at its selected
epoch — not whichever run the recipe happens to list last. When target labels are known
the oracle rank (by target test accuracy) is shown beside it, so a reader sees how far
the label-free choice is from the best run (Musgrave et al., "Benchmarking validation
methods for unsupervised domain adaptation", 2021: label-free selectors often miss it).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

from adapt.selectors import chosen_epoch, run_score_key

__all__ = ["selection_score", "rank_runs"]


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
    acc = {n: (target_accuracy or {}).get(n) for n in names}
    known = [n for n in names if acc[n] is not None]
    by_acc = sorted(known, key=lambda n: (-float(acc[n]), names.index(n)))
    oracle = {n: i + 1 for i, n in enumerate(by_acc)}
    return [{"run": n, "score": scores[n], "rank": i + 1, "oracle_rank": oracle.get(n)}
            for i, n in enumerate(order)]


def recommended_run(selections: Mapping[str, Mapping | None], selector: str,
                    audit_run: str | None = None) -> str | None:
    """The run a user would deploy: ``audit_run`` when the recipe names one, else the run
    :func:`rank_runs` ranks first by the label-free score (None when there are no runs)."""
    if audit_run:
        return audit_run
    ranking = rank_runs(selections, selector)
    return ranking[0]["run"] if ranking else None
