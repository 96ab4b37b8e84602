"""The recipe's multi-source keys (docs/multisource.md), kept out of :mod:`adapt.recipe`:

* ``data.sources`` — a list of named source domains (:class:`~adapt.data.sources.SourceSpec`),
  names unique, at least one (one entry = the single-source case);
* a run's ``objective: msdann`` (multi-domain DANN, the ``dann:`` section's options) or
  ``objective: m3sda`` (moment matching, the ``m3sda:`` section) — registered with
  ``min_sources=2`` (adapt/methods/multisource.py) —, and
  ``source_weights: similarity`` (draw each source in proportion to its measured
  similarity to the target; any objective that trains on source images);
* ``method.leave_one_source_out`` — the audit's per-source contribution.

Each needs two or more sources: :func:`check_multisource` says so, naming the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from adapt.data.sources import SourceSpec, resolve_sources  # noqa: F401 - re-exported for the recipe
from adapt.method_registry import objective

#: how the union's sources are drawn: uniform (every image alike) or by similarity to the target
SourceWeights = Literal["uniform", "similarity"]


def _unique_names(sources: list[SourceSpec]) -> list[SourceSpec]:
    if not sources:
        raise ValueError("the list is empty (give at least one source, or use data.source)")
    names = [s.name for s in sources]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"source names must be unique (repeated: {', '.join(dup)})")
    return sources


#: ``data.sources``: validated names (the recipe's formatter prefixes "data.sources: ")
SourceList = Annotated[list[SourceSpec], AfterValidator(_unique_names)]


def check_multisource(recipe: Any) -> Any:
    """Multi-source settings need two or more sources (a Recipe after-validator body)."""
    if recipe.data.sources:  # two or more (one entry became data.source)
        return recipe
    for r in recipe.method.runs:
        if objective(r.objective).min_sources > 1:
            raise ValueError(f"method.runs.{r.name}.objective: '{r.objective}' needs two or more labelled "
                             "sources (data.sources)")
        if r.source_weights != "uniform":
            raise ValueError(f"method.runs.{r.name}.source_weights: '{r.source_weights}' needs two or more "
                             "labelled sources (data.sources)")
    if recipe.method.leave_one_source_out:
        raise ValueError("method.leave_one_source_out: needs two or more labelled sources (data.sources)")
    return recipe
