"""MixVal — mixup validation of an unsupervised-adapted model (Hu et al., "Mixed Samples
as Probes for Unsupervised Model Selection in Domain Adaptation", NeurIPS 2023).

The model's own target pseudo-labels ŷ = argmax f(x) are the probe. Target images are
mixed in pairs, x̃ = λ x_i + (1 − λ) x_j with λ > ½ (so x_i dominates), and the model
should still predict ŷ_i on x̃:

* intra-cluster consistency (IAE): pairs with ŷ_i = ŷ_j — the share of x̃ predicted ŷ_i;
* inter-cluster consistency (ICE): pairs with ŷ_i ≠ ŷ_j — the share of x̃ predicted ŷ_i,

    MixVal = ½ (ICE + IAE)    (higher is better).

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
    hits = {"intra": 0, "inter": 0}
    counts = {"intra": 0, "inter": 0}
    for x, _ in DataLoader(target, batch_size=batch_size, shuffle=False):
        x = x.to(device)
        pseudo = model(x).argmax(1).cpu().numpy()
        same, diff = _partners(pseudo, rng)
        for kind, partner in (("intra", same), ("inter", diff)):
            keep = np.flatnonzero(partner >= 0)
            if len(keep) == 0:
                continue
            i, j = torch.as_tensor(keep, device=x.device), torch.as_tensor(partner[keep], device=x.device)
            pred = model(lam * x[i] + (1 - lam) * x[j]).argmax(1).cpu().numpy()
            hits[kind] += int((pred == pseudo[keep]).sum())
            counts[kind] += len(keep)
    model.train(was_training)
    iae = hits["intra"] / counts["intra"] if counts["intra"] else 0.0
    ice = hits["inter"] / counts["inter"] if counts["inter"] else 0.0
    return 0.5 * (ice + iae)
