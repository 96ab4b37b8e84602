"""Each source's measured gap to the target, and the per-source weights derived from it.

A multi-source recipe (``data.sources``) measures, once the source model is trained, the
unbiased MMD² (Gretton et al. 2012; :func:`diagnostics.mmd.mmd2_unbiased`) between each
source's training images and the unlabelled target training images in the source
model's penultimate features — one Gaussian kernel for all of them, its bandwidth the
median heuristic on the pooled sample, so the distances are comparable. The weights are

    w_i = softmax_i(−MMD²_i / τ),   τ = mean_j max(MMD²_j, 0) (+ 1e-6)

(a source at the average distance counts e⁻¹ of one at distance 0; equal distances give
equal weights). A run with ``source_weights: similarity`` draws each source's images with
probability w_i (:func:`sample_weights`) instead of in proportion to its size. The
weights, distances and image counts are written to ``metrics.json`` (``sources``) and
shown in the audit's Sources section (docs/multisource.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from adapt.data.sources import SOURCE_GROUP, source_index
from adapt.data.splits import stratified_subsample
from diagnostics.features import extract_features
from diagnostics.mmd import median_bandwidth, mmd2_unbiased

#: images per domain the distances are measured on (subsampled, stratified, seeded)
MAX_IMAGES = 300


def similarity_weights(distances: dict[str, float]) -> dict[str, float]:
    """w_i = softmax(−d_i / τ), τ = mean max(d_j, 0) + 1e-6 (module docstring)."""
    names = list(distances)
    d = np.array([max(distances[n], 0.0) for n in names], dtype=np.float64)
    tau = float(d.mean()) + 1e-6
    z = np.exp(-(d - d.min()) / tau)
    return {n: float(w) for n, w in zip(names, z / z.sum())}


def measure_sources(model: nn.Module, domains: Any, device: torch.device, seed: int = 0,
                    max_images: int = MAX_IMAGES) -> dict[str, Any]:
    """Per source (``domains.source_names``): image count, MMD² to the target in the
    model's features, and the similarity weight. Returns the JSON-ready record."""
    names = domains.source_names
    train = domains.source_split["train"]
    which = source_index(train, names)

    def feats(ds) -> np.ndarray:
        idx = stratified_subsample(ds.labels, max_images, seed=seed) if len(ds) > max_images else np.arange(len(ds))
        return extract_features(ds.subset(idx), model, "model", device=device, progress=False,
                                shard=False).features

    target = feats(domains.target_split["train"])
    per = {n: feats(train.subset(np.flatnonzero(which == i))) for i, n in enumerate(names)}
    bandwidth = median_bandwidth(np.concatenate([target, *per.values()]), seed=seed)
    distances = {n: mmd2_unbiased(f, target, bandwidth) for n, f in per.items()}
    weights = similarity_weights(distances)
    return {"names": names, "statistic": "MMD² (unbiased, Gaussian kernel, median-heuristic bandwidth "
                                          f"{bandwidth:.3g}) in the source model's features",
            "images": {n: int((which == i).sum()) for i, n in enumerate(names)},
            "mmd2": distances, "weights": weights}


def sample_weights(data: Any, names: list[str], weights: dict[str, float]) -> np.ndarray:
    """Per-image draw weights over a tagged union (``groups["source"]``, or a
    ``DomainTagged`` wrapper's ``base``): source i's images share w_i equally."""
    base = getattr(data, "base", data)
    which = source_index(base, names) if SOURCE_GROUP in base.groups else None
    if which is None:
        raise ValueError("sample_weights: the data carry no source tags")
    counts = np.bincount(which, minlength=len(names)).astype(np.float64)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    return w[which] / np.maximum(counts[which], 1.0)
