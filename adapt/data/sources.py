"""Several labelled source domains: the recipe's ``data.sources`` list and their union.

``data.sources: [{name: A, kind: phantom-cxr, site: A}, {name: C, kind: phantom-cxr, site: C}]``
names each source (a :class:`~adapt.data.spec.DomainSpec` plus ``name``). One entry is
the single-source case (it becomes ``data.source``); two or more are loaded one by one,
checked to share one class mapping (the error names the source that differs) and joined
into one :class:`~adapt.data.domain.DomainDataset` whose ``groups["source"]`` holds each
image's source name — so every split and subset still knows where an image came from,
and every single-source method trains on the union unchanged (docs/multisource.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from pydantic import Field

from adapt.data.domain import DomainDataset, load_domain
from adapt.data.spec import RUN_NAME, DomainSpec
from adapt.errors import UserError

#: the group column of a union that holds each image's source name
SOURCE_GROUP = "source"


class SourceSpec(DomainSpec):
    """One labelled source of a multi-source recipe: a domain spec with a short name."""

    name: str = Field(..., min_length=1, max_length=64, pattern=RUN_NAME)

    def domain(self) -> DomainSpec:
        """The plain domain spec (without the name)."""
        return DomainSpec(**self.model_dump(exclude={"name"}))


def resolve_sources(data: Any) -> Any:
    """The ``data`` section's check of ``sources`` (a pydantic after-validator body).

    (Empty lists and repeated names are refused by the field, ``SourceList``.) Given
    together with an explicit ``data.source`` → error; one entry → ``data.source`` (single-source) and no list;
    two or more → ``data.source`` none (the union is loaded from the list)."""
    sources = data.sources
    if not sources:  # None; an empty list is refused by the field's own check
        return data
    if "source" in data.model_fields_set and data.source is not None:
        raise ValueError("give data.source or data.sources, not both")
    object.__setattr__(data, "source", sources[0].domain() if len(sources) == 1 else None)
    if len(sources) == 1:
        object.__setattr__(data, "sources", None)
    return data


def load_sources(specs: list[SourceSpec], *, seed: int, **common: Any) -> DomainDataset:
    """Load every source and return their union (one class mapping; ``groups["source"]``).

    The first source fixes the class order; a source whose class set differs, or that
    is unlabelled, is a :class:`UserError` naming it (``data.sources.<i> (<name>)``)."""
    parts: list[DomainDataset] = []
    for i, spec in enumerate(specs):
        where = f"data.sources.{i} ({spec.name})"
        try:
            # the same seed for every source: a phantom site's images are those a single-source run sees
            ds = load_domain(spec.domain(), seed=seed, classes=parts[0].classes if parts else None, **common)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
        if not ds.has_labels:
            raise UserError(f"{where}: a source domain needs labels")
        if parts and set(ds.classes) != set(parts[0].classes):
            extra = sorted(set(ds.classes) - set(parts[0].classes))
            missing = sorted(set(parts[0].classes) - set(ds.classes))
            raise UserError(f"{where}: classes differ from source {specs[0].name} (extra: {extra}, missing: "
                            f"{missing})")
        if parts and ds.class_counts().min() == 0:
            empty = [c for c, n in zip(ds.classes, ds.class_counts()) if n == 0]
            raise UserError(f"{where}: classes differ from source {specs[0].name} (no images of {empty})")
        parts.append(ds)
    return union(parts, [s.name for s in specs])


def union(parts: list[DomainDataset], names: list[str]) -> DomainDataset:
    """One dataset holding every image of ``parts`` (same classes), tagged with its source
    name in ``groups["source"]``. File domains stay files; when any part lives in memory,
    the file parts are read into memory too (a union is either)."""
    first = parts[0]
    tags = [n for ds, n in zip(parts, names) for _ in range(len(ds))]
    common_groups = set.intersection(*(set(ds.groups) for ds in parts)) - {SOURCE_GROUP}
    groups = {k: [v for ds in parts for v in ds.groups[k]] for k in sorted(common_groups)}
    groups[SOURCE_GROUP] = tags

    def cat_boxes(attr: str) -> np.ndarray | None:
        boxes = [getattr(ds, attr) for ds in parts]
        return None if any(b is None for b in boxes) else np.concatenate(boxes)

    kw: dict[str, Any] = dict(
        name="+".join(names), classes=first.classes, labels=np.concatenate([ds.labels for ds in parts]),
        ids=[f"{n}:{i}" for ds, n in zip(parts, names) for i in ds.ids], channels=first.channels,
        image_size=first.image_size, groups=groups, skipped=[s for ds in parts for s in ds.skipped],
        marker_boxes=cat_boxes("marker_boxes"), lesion_boxes=cat_boxes("lesion_boxes"))
    if all(not ds.in_memory for ds in parts):
        return DomainDataset(paths=[p for ds in parts for p in ds._paths],
                             dicom=[d for ds in parts for d in ds._dicom],
                             mask_paths=(None if any(ds._mask_paths is None for ds in parts)
                                         else [m for ds in parts for m in ds._mask_paths]), **kw)
    masks = None
    if all(ds._masks is not None for ds in parts):
        masks = torch.cat([ds._masks for ds in parts])
    same_shape = len({tuple(ds._images.shape[1:]) for ds in parts if ds.in_memory}) == 1 and all(
        ds.in_memory for ds in parts)
    images = torch.cat([ds._images if same_shape else ds.images() for ds in parts])
    return DomainDataset(images=images, masks=masks, **kw)


def source_index(ds: DomainDataset, names: list[str]) -> np.ndarray:
    """int64 [N]: the position in ``names`` of each image's source (``groups["source"]``)."""
    where = {n: i for i, n in enumerate(names)}
    return np.asarray([where[t] for t in ds.groups[SOURCE_GROUP]], dtype=np.int64)
