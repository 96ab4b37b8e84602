"""The recipe's few-target-labels parts: MME's options (``method.runs[].mme``) and the
checks that tie ``data.target.labeled_per_class`` to the runs and the selector using it.

Kept out of :mod:`adapt.recipe` (one concept per file); the recipe imports both.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adapt.method_options import RecipeSection

#: objectives that train on the k labelled target images
FEW_LABEL_OBJECTIVES = ("mme", "finetune")


class MMEConfig(RecipeSection):
    """MME (Saito et al., ICCV 2019, "Semi-supervised Domain Adaptation via Minimax
    Entropy"); defaults are the paper's."""

    #: λ: weight of the minimax entropy term on the unlabelled target images
    lam: float = Field(0.1, ge=0, le=100, alias="lambda")
    #: T of the cosine classifier: logits = cos(w_c, f) / T
    temperature: float = Field(0.05, gt=0, le=10)


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
        if run.objective in FEW_LABEL_OBJECTIVES:
            raise ValueError(f"method.runs.{run.name}: objective '{run.objective}' needs labelled target images "
                             "(set data.target.labeled_per_class: k)")
    if recipe.method.selection == "few_labels":
        raise ValueError("method.selection: few_labels needs labelled target images "
                         "(set data.target.labeled_per_class: k)")
    if recipe.method.target_scratch:
        raise ValueError("method.target_scratch: needs labelled target images (set data.target.labeled_per_class: k)")
