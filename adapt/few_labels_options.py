"""The recipe's few-target-labels checks: they tie ``data.target.labeled_per_class`` to the
runs (objectives registered with ``needs_labeled_target``: finetune, mme) and the selector
using it.

Kept out of :mod:`adapt.recipe` (one concept per file); the recipe imports it.
"""

from __future__ import annotations

from typing import Any

from adapt.method_registry import objective


def check_few_labels(recipe: Any) -> None:
    """For an :class:`adapt.recipe.Recipe` (not imported: the recipe imports this module):
    ValueError (a one-line message naming the key) when a run or the selector needs the
    k labelled target images and ``data.target.labeled_per_class`` is not set, or when the
    source sets it (only the target has a few labels)."""
    source = recipe.data.source
    if source is not None and source.labeled_per_class is not None:
        raise ValueError("data.source.labeled_per_class: only the target takes k labelled images per class "
                         "(a source is fully labelled)")
    if recipe.data.target.labeled_per_class is not None:
        return
    for run in recipe.method.runs:
        if objective(run.objective).needs_labeled_target:
            raise ValueError(f"method.runs.{run.name}: objective '{run.objective}' needs labelled target images "
                             "(set data.target.labeled_per_class: k)")
    if recipe.method.selection == "few_labels":
        raise ValueError("method.selection: few_labels needs labelled target images "
                         "(set data.target.labeled_per_class: k)")
    if recipe.method.target_scratch:
        raise ValueError("method.target_scratch: needs labelled target images (set data.target.labeled_per_class: k)")
