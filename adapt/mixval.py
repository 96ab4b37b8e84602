"""MixVal — mixup validation of an unsupervised-adapted model (Hu et al., "Mixed Samples
as Probes for Unsupervised Model Selection in Domain Adaptation", NeurIPS 2023).

The model's own target pseudo-labels ŷ = argmax f(x) are the probe. Target images are
mixed in pairs, x̃ = λ x_i + (1 − λ) x_j with λ > ½ (so x_i dominates), and the model
should still predict ŷ_i on x̃:

* intra-cluster consistency (IAE): pairs with ŷ_i = ŷ_j — the share of x̃ predicted ŷ_i;
* inter-cluster consistency (ICE): pairs with ŷ_i ≠ ŷ_j — the share of x̃ predicted ŷ_i,

each averaged over the pseudo-classes (the share within each class of dominant images,
then the mean over classes), and

    MixVal = ½ (ICE + IAE)    (higher is better).

Why per class: pooled over images, a model that predicts one class for 99 % of the images
is "consistent" on 99 % of its mixes (the majority image dominates and keeps its label),
and scored 0.99 on the label-free study's near-collapsed runs; averaged over classes its
rare classes, which a mix with a majority image overturns, weigh as much as the majority.

The paper combines the two by their ranks over the candidate models; a per-epoch score
must be comparable without the other candidates, so the two are averaged here instead
(a simplification, said so). A model collapsed onto one class has no inter-cluster pair:
its ICE counts as 0, so collapse cannot score well. Mixing normalised inputs equals
mixing pixels and then normalising (the normalisation is affine), so the dataset's
tensors are mixed as they come.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

#: weight of the dominant image: close enough to ½ to probe the decision boundary,
#: above it so that the dominant image's pseudo-label stays the expected answer
MIXVAL_LAMBDA = 0.6


def _partners(labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """For each image, a partner with the same pseudo-label (−1 when it has none) and one
    with a different pseudo-label (−1 when none exists)."""
    n = len(labels)
    same, diff = np.full(n, -1), np.full(n, -1)
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        if len(idx) >= 2:
            order = rng.permutation(idx)
            same[order] = np.roll(order, 1)
        others = np.flatnonzero(labels != k)
        if len(others):
            diff[idx] = rng.choice(others, size=len(idx))
    return same, diff


@torch.no_grad()
def mixval_score(model: nn.Module, target: Dataset, device: torch.device | str = "cpu", batch_size: int = 256,
                 lam: float = MIXVAL_LAMBDA, seed: int = 0) -> float:
    """MixVal of ``model`` on the unlabelled ``target`` images (labels, if any, unused):
    ½ (ICE + IAE) in [0, 1], pairs drawn within each batch with a seeded generator."""
    if not 0.5 < lam < 1.0:
        raise ValueError(f"lam must lie in (0.5, 1), got {lam}")
    was_training = model.training
    model.eval()
    rng = np.random.default_rng([seed, 0x313A])
    n_classes = None
    hits: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for x, _ in DataLoader(target, batch_size=batch_size, shuffle=False):
        x = x.to(device)
        logits = model(x)
        if n_classes is None:
            n_classes = logits.shape[1]
            hits = {k: np.zeros(n_classes) for k in ("intra", "inter")}
            counts = {k: np.zeros(n_classes) for k in ("intra", "inter")}
        pseudo = logits.argmax(1).cpu().numpy()
        same, diff = _partners(pseudo, rng)
        for kind, partner in (("intra", same), ("inter", diff)):
            keep = np.flatnonzero(partner >= 0)
            if len(keep) == 0:
                continue
            i, j = torch.as_tensor(keep, device=x.device), torch.as_tensor(partner[keep], device=x.device)
            pred = model(lam * x[i] + (1 - lam) * x[j]).argmax(1).cpu().numpy()
            np.add.at(hits[kind], pseudo[keep], (pred == pseudo[keep]).astype(float))
            np.add.at(counts[kind], pseudo[keep], 1.0)
    model.train(was_training)
    if n_classes is None:
        raise ValueError("MixVal needs target images")

    def per_class_mean(kind: str) -> float:
        seen = counts[kind] > 0
        return float(np.mean(hits[kind][seen] / counts[kind][seen])) if seen.any() else 0.0

    iae, ice = per_class_mean("intra"), per_class_mean("inter")
    return 0.5 * (ice + iae)
