"""The label-free selectors: their names and the per-epoch score each one maximises.

One table for every place that reads a selector's score: the epoch selection during
training (:mod:`adapt.selection`), the ranking of runs in the audit
(:mod:`diagnostics.ranking`) and the sweep's objective (:mod:`domaingap.sweep`). The scores
themselves are computed in :mod:`adapt.selection`; docs/labelfree.md has their measured regret.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping, get_args

#: a recipe's ``method.selection``
Selector = Literal["im", "snd", "dev", "source_val", "mixval", "atc", "doc", "cot", "last", "few_labels"]
SELECTORS: tuple[str, ...] = get_args(Selector)

#: selector → the key of its score in an epoch's log (``selection.json``'s epoch records);
#: ``last`` has no score: it maximises the epoch number
SELECTOR_KEYS = {"im": "im", "snd": "snd", "dev": "dev", "source_val": "source_val_accuracy", "mixval": "mixval",
                 "atc": "atc", "doc": "doc", "cot": "cot", "last": "epoch",
                 # not label-free: accuracy on the data.target.labeled_per_class images (docs/fewlabels.md)
                 "few_labels": "few_labels_accuracy"}


def run_score_key(selector: str) -> str:
    """The epoch-log key that ranks *runs* for ``selector``: its own score, except for
    ``last``, whose epoch number says nothing about a run — the IM score ranks then."""
    return "im" if selector == "last" else SELECTOR_KEYS.get(selector, selector)


def chosen_epoch(selection: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The epoch record a selector chose: the entry of ``selection["epochs"]`` whose
    ``epoch`` is ``selection["selected_epoch"]`` (``selection.json``); None when absent."""
    if not selection:
        return None
    return next((e for e in selection.get("epochs") or [] if e.get("epoch") == selection.get("selected_epoch")),
                None)
