"""SHOT: source-free adaptation by hypothesis transfer (Liang et al., ICML 2020, "Do
We Really Need to Access the Source Data? Source Hypothesis Transfer for Unsupervised
Domain Adaptation").

Starts from a trained source model and sees **target images only**. The classifier
head C (the source "hypothesis") is frozen; the feature extractor G is trained on
unlabelled target batches to minimise

    L = E_i H(p_i) − diversity_weight · H(E_i p_i) + β · CE(p, ŷ)       p = softmax(C(G(x)))

— information maximisation (confident and diverse predictions) plus self-supervised
pseudo-labels ŷ, refreshed once per epoch from the whole target training set by
weighted k-means in feature space (:func:`shot_pseudo_labels`). The paper's β = 0.3
(0.1 on digits) and diversity weight 1.

:class:`PseudoLabelled` wraps the target dataset so the one training loop draws
(target image, pseudo-label) batches as its "labelled" data; :meth:`SHOT.start_epoch`
(the loop's epoch hook) re-freezes the head after the transfer strategy ran and
refreshes the labels. No source image is read anywhere.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.adabn import adabn
from adapt.methods.entropy import information_maximization


def _cosine_nearest(features: Tensor, centroids: Tensor) -> Tensor:
    """Index of the centroid [K', d] with the smallest cosine distance, per row of features [N, d]."""
    sim = F.normalize(features, dim=1) @ F.normalize(centroids, dim=1).T
    return sim.argmax(dim=1)


@torch.no_grad()
def shot_pseudo_labels(features: Tensor, probs: Tensor) -> Tensor:
    """SHOT's self-supervised pseudo-labels (Liang et al. 2020, Eq. 4–6) → int64 [N].

    ``features`` [N, d] from G, ``probs`` [N, K] = softmax(C(features)). With f̂ the
    features with a constant 1 appended and L2-normalised (as the authors' code):

        c_k⁰ = Σ_i p_ik f̂_i / Σ_i p_ik                  (probability-weighted centroids)
        ŷ_i⁰ = argmin_k d_cos(f̂_i, c_k⁰)
        c_k¹ = Σ_i 1[ŷ_i⁰ = k] f̂_i / Σ_i 1[ŷ_i⁰ = k]    (one k-means update)
        ŷ_i  = argmin_k d_cos(f̂_i, c_k¹)

    Only classes that are somebody's argmax prediction compete (the authors' code drops
    centroids of classes the model never predicts); a class whose hard cluster empties
    keeps its weighted centroid.
    """
    f = features.double()
    f = F.normalize(torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype, device=f.device)], dim=1), dim=1)
    p = probs.double()
    centroids = (p.T @ f) / (p.sum(dim=0).unsqueeze(1) + 1e-8)
    present = torch.unique(p.argmax(dim=1))
    labels = present[_cosine_nearest(f, centroids[present])]
    onehot = F.one_hot(labels, p.shape[1]).double()
    counts = onehot.sum(dim=0)
    hard = (onehot.T @ f) / counts.clamp_min(1).unsqueeze(1)
    centroids = torch.where((counts > 0).unsqueeze(1), hard, centroids)
    return present[_cosine_nearest(f, centroids[present])]


class PseudoLabelled(Dataset):
    """A target dataset whose labels are SHOT's pseudo-labels: (image, ŷ_i).

    Before the first refresh every label is −1 (:meth:`SHOT.start_epoch` refreshes
    before the first batch is drawn).
    """

    def __init__(self, target: Dataset):
        self.target = target
        self.labels = np.full(len(target), -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.target)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.target[i][0], int(self.labels[i])


@torch.no_grad()
def features_and_probs(model: nn.Module, data: Dataset, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """G(x) [N, d] and softmax(C(G(x))) [N, K] over ``data`` in order, eval mode, on the model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats, probs = [], []
    for x, _ in DataLoader(data, batch_size=batch_size, shuffle=False):
        f = model.features(x.to(device)).float()
        feats.append(f)
        probs.append(model.head(f.to(next(model.head.parameters()).dtype)).float().softmax(dim=1))
    model.train(was_training)
    return torch.cat(feats), torch.cat(probs)


class SHOT:
    """SHOT objective: IM + β · CE(pseudo-labels) on target batches, head frozen.

    The loop trains on ``self.data`` (a :class:`PseudoLabelled` target set) with no
    second (target) stream, and calls :meth:`start_epoch` at every epoch's start.
    """

    name = "shot"
    uses_target = False
    #: trains on target batches only: deployed with target BatchNorm statistics, the source with its own
    batchnorm = "per_domain"

    def __init__(self, target: Dataset, *, pseudo_label_weight: float = 0.3, diversity_weight: float = 1.0,
                 label_smoothing: float = 0.0, target_statistics: bool = True):
        if pseudo_label_weight < 0 or diversity_weight < 0:
            raise UserError(f"shot: pseudo_label_weight={pseudo_label_weight} and "
                            f"diversity_weight={diversity_weight} must be >= 0")
        self.data = PseudoLabelled(target)
        self.beta = float(pseudo_label_weight)
        self.diversity_weight = float(diversity_weight)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.target_statistics = target_statistics

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Freeze the head (the source hypothesis) and refresh the pseudo-labels.

        The pseudo-labels are computed with target BatchNorm statistics: training
        normalises target batches with their own statistics, and later epochs start from
        the loop's precise-BN pass over the target; before the first epoch the model still
        holds the source's, so they are re-estimated on the target images first (AdaBN).
        """
        for p in model.head.parameters():
            p.requires_grad_(False)
        logs: dict[str, float] = {}
        if epoch == 0 and self.target_statistics:
            adabn(model, DataLoader(self.data.target, batch_size=256, shuffle=False),
                  next(model.parameters()).device)
        if self.beta > 0:
            feats, probs = features_and_probs(model, self.data.target)
            labels = shot_pseudo_labels(feats, probs).cpu().numpy()
            previous = self.data.labels
            logs["pseudo_label_agreement"] = float((labels == probs.argmax(1).cpu().numpy()).mean())
            if (previous >= 0).all():
                logs["pseudo_label_changed"] = float((labels != previous).mean())
            self.data.labels = labels
        return logs

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        logits = model(xs)
        ent, div = information_maximization(logits)
        total = ent - self.diversity_weight * div
        logs = {"entropy": ent.item(), "diversity": div.item()}
        if self.beta > 0:
            if (ys < 0).any():
                raise ValueError("SHOT: pseudo-labels missing (start_epoch was not called)")
            pl = self.criterion(logits.float(), ys)
            total = total + self.beta * pl
            logs["pseudo_label_loss"] = pl.item()
        return total, logs

class SHOTConfig(RecipeSection):
    """A run's ``shot:`` options."""

    #: beta, the weight of the pseudo-label cross-entropy (the paper: 0.3; 0.1 on digits)
    pseudo_label_weight: float = Field(0.3, ge=0)
    #: weight of the diversity term H(mean prediction)
    diversity_weight: float = Field(1.0, ge=0)


def _shot(ctx: BuildContext):
    # no label smoothing on pseudo-labels (the paper smooths the source training only)
    o = ctx.options
    objective = SHOT(ctx.target_train, pseudo_label_weight=o.pseudo_label_weight, diversity_weight=o.diversity_weight)
    return objective, objective.data  # target images with pseudo-labels, refreshed every epoch


register(ObjectiveSpec("shot", _shot, section=SHOTConfig, batchnorm=SHOT.batchnorm, trains_on="target",
                       study=({},)))
