"""Two objectives for several labelled sources S_1..S_k and one unlabelled target T.

**Multi-domain DANN** (``objective: msdann``; the DANN of Ganin et al. 2016 with a
(k+1)-way domain discriminator, as in the multi-source baselines of Zhao et al.,
NeurIPS 2018, "Adversarial Multiple Source Domain Adaptation"): with f = G(x),

    L = CE(C(f_s), y_s) + mean_i CE(D(R_λ(f_{S_i})), i) + CE(D(R_λ(f_T)), k)

(each CE the mean over its own domain's part of the batch; with k = 1 this is exactly
DANN's sum of two BCE means). D tells every source apart from the others and from the
target, so G must make all k+1 feature distributions alike — not only the union's
mixture like the target's. λ follows DANN's ramp (``adapt.methods.dann.grl_lambda``).

**M3SDA moment matching** (``objective: m3sda``; Peng et al., ICCV 2019, "Moment Matching
for Multi-Source Domain Adaptation", eq. 1): for moment orders r = 1..R (the paper: 2),

    MD² = Σ_r [ 1/k Σ_i ‖E f_{S_i}^r − E f_T^r‖₂
                + C(k,2)⁻¹ Σ_{i<j} ‖E f_{S_i}^r − E f_{S_j}^r‖₂ ]

(element-wise powers, batch means), added to the source CE with ``weight``. Only the
moment-matching part: one shared classifier, not the paper's k classifiers and their
weighted vote.

**BatchNorm: per source.** Both follow the ``"per_domain"`` convention of
:mod:`adapt.methods.base` one step further: every source's images and the target's are
forwarded as separate batches, so each domain is normalised with its own statistics.

**Which source an image comes from.** The loop hands an objective (x, y) batches only, so
the union's labels are tagged: :class:`DomainTagged` yields y + K·d (K classes, d the
source's position) and the objectives decode d = y // K, y = y mod K.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.utils.data import Dataset

from adapt.data.sources import source_index
from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.dann import DANNConfig, DomainDiscriminator, grad_reverse, grl_lambda


class DomainTagged(Dataset):
    """A labelled union whose labels carry the source: item i is (x_i, y_i + K · d_i).

    ``base``: the dataset (``.labels``, ``.classes``, ``.images(idx)``); ``domain``: int [N],
    each image's source position in 0..k-1. ``labels`` stays the class labels (samplers)."""

    def __init__(self, base: Dataset, domain: np.ndarray):
        if len(domain) != len(base):
            raise ValueError("DomainTagged: one source index per image")
        self.base = base
        self.domain = np.asarray(domain, dtype=np.int64)
        self.n_classes = len(base.classes)
        self.labels = base.labels
        self.classes = base.classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        x, y = self.base[i]
        return x, int(y) + self.n_classes * int(self.domain[int(i)])

    def images(self, indices=None) -> Tensor:
        return self.base.images(indices)


def features_per_source(model: nn.Module, xs: Tensor, domain: Tensor) -> Tensor:
    """``model.features`` of a mixed source batch, each source forwarded as its own batch
    (its own BatchNorm batch statistics); rows back in the batch's order. A source with
    one image in the batch joins the largest group (a BatchNorm needs two values)."""
    groups = [torch.nonzero(domain == d).squeeze(1) for d in torch.unique(domain)]
    groups.sort(key=len, reverse=True)
    singles = [g for g in groups[1:] if len(g) < 2]
    if singles:
        groups = [torch.cat([groups[0], *singles])] + [g for g in groups[1:] if len(g) >= 2]
    feats = torch.cat([model.features(xs[g]) for g in groups])
    order = torch.cat(groups)
    return feats[torch.argsort(order)]


class _MultiSource:
    """Shared decoding and forwards of the two multi-source objectives."""

    uses_target = True
    batchnorm = "per_domain"

    def __init__(self, n_sources: int, n_classes: int, label_smoothing: float = 0.0):
        if n_sources < 2:
            raise UserError(f"{self.name}: needs two or more sources (got {n_sources})")
        self.k = int(n_sources)
        self.n_classes = int(n_classes)
        self.class_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def _forward(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None):
        if xt is None:
            raise ValueError(f"{self.name} needs a target batch xt (uses_target=True)")
        domain, y = ys // self.n_classes, ys % self.n_classes
        if int(domain.max()) >= self.k:
            raise ValueError(f"{self.name}: a label carries source {int(domain.max())} of {self.k} "
                             "(train on a DomainTagged union)")
        fs = features_per_source(model, xs, domain)
        ft = model.features(xt)
        logits = model.head(fs)
        class_loss = self.class_criterion(logits, y)
        train_acc = (logits.argmax(1) == y).float().mean().item()
        return fs, ft, domain, class_loss, train_acc


class MultiSourceDANN(_MultiSource):
    """DANN with a (k+1)-way discriminator and per-source BatchNorm (module docstring)."""

    name = "msdann"

    def __init__(self, feature_dim: int, n_sources: int, n_classes: int, *, domain_weight: float = 1.0,
                 width: int = 256, depth: int = 2, label_smoothing: float = 0.0):
        super().__init__(n_sources, n_classes, label_smoothing)
        if domain_weight < 0:
            raise UserError(f"msdann: domain weight must be >= 0 (got {domain_weight})")
        self.domain_weight = float(domain_weight)
        self.discriminator = DomainDiscriminator(feature_dim, width, depth)
        self.discriminator.net[-1] = nn.Linear(self.discriminator.net[-1].in_features, self.k + 1)

    def modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        fs, ft, domain, class_loss, train_acc = self._forward(model, xs, ys, xt)
        lam = grl_lambda(progress, self.domain_weight)
        ds = self.discriminator.net(grad_reverse(fs, lam)).float()
        dt = self.discriminator.net(grad_reverse(ft, lam)).float()
        per_source = [F.cross_entropy(ds[domain == d], domain[domain == d]) for d in torch.unique(domain)]
        loss_s = torch.stack(per_source).mean()
        loss_t = F.cross_entropy(dt, torch.full((len(dt),), self.k, dtype=torch.long, device=dt.device))
        with torch.no_grad():
            disc_acc = ((ds.argmax(1) == domain).sum() + (dt.argmax(1) == self.k).sum()).item() / (len(ds) + len(dt))
        return class_loss + loss_s + loss_t, {
            "class_loss": class_loss.item(), "domain_loss": (loss_s + loss_t).item(), "lambda": lam,
            "disc_acc": disc_acc, "train_acc": train_acc}


def moment_distance(feats: list[Tensor], target: Tensor, orders: int = 2) -> Tensor:
    """M3SDA's MD² (module docstring) of k ≥ 2 source feature batches and a target batch."""
    total = target.new_zeros((), dtype=torch.float32)
    for r in range(1, orders + 1):
        m = [f.float().pow(r).mean(0) for f in feats]
        mt = target.float().pow(r).mean(0)
        total = total + torch.stack([(mi - mt).norm() for mi in m]).mean()
        total = total + torch.stack([(a - b).norm() for a, b in itertools.combinations(m, 2)]).mean()
    return total


class M3SDA(_MultiSource):
    """Source CE + weight · MD² over every domain pair (module docstring)."""

    name = "m3sda"

    def __init__(self, n_sources: int, n_classes: int, *, weight: float = 1.0, moments: int = 2,
                 label_smoothing: float = 0.0):
        super().__init__(n_sources, n_classes, label_smoothing)
        self.weight, self.moments = float(weight), int(moments)

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        fs, ft, domain, class_loss, train_acc = self._forward(model, xs, ys, xt)
        parts = [fs[domain == d] for d in torch.unique(domain)]
        if len(parts) < 2:  # a batch holding one source only: nothing to match between sources
            md = moment_distance(parts + parts, ft, self.moments)
        else:
            md = moment_distance(parts, ft, self.moments)
        return class_loss + self.weight * md, {"class_loss": class_loss.item(), "moment_distance": md.item(),
                                               "train_acc": train_acc}


class M3SDAConfig(RecipeSection):
    """A run's ``m3sda:`` options."""

    #: weight of the moment-matching loss (first and second moments, every domain pair)
    weight: float = Field(1.0, ge=0)
    #: highest moment order matched (the paper: 2)
    moments: int = Field(2, ge=1, le=4)


def _tagged_union(ctx: BuildContext) -> DomainTagged:
    """The union of the recipe's sources (data.sources, in order), each image tagged with its source."""
    names = [s.name for s in ctx.recipe.data.sources]
    return DomainTagged(ctx.source_train, source_index(ctx.source_train, names))


def _msdann(ctx: BuildContext):
    data, o = _tagged_union(ctx), ctx.options
    return MultiSourceDANN(int(ctx.model.feature_dim), len(ctx.recipe.data.sources), len(ctx.source_train.classes),
                           domain_weight=o.weight, width=o.hidden, depth=o.depth,
                           label_smoothing=ctx.label_smoothing), data


def _m3sda(ctx: BuildContext):
    data, o = _tagged_union(ctx), ctx.options
    return M3SDA(len(ctx.recipe.data.sources), len(ctx.source_train.classes), weight=o.weight, moments=o.moments,
                 label_smoothing=ctx.label_smoothing), data


# msdann reads dann's options (its weight, hidden, depth); adversarial, but it keeps train.schedule
register(ObjectiveSpec("msdann", _msdann, section=DANNConfig, section_key="dann", batchnorm=_MultiSource.batchnorm,
                       min_sources=2))
register(ObjectiveSpec("m3sda", _m3sda, section=M3SDAConfig, batchnorm=_MultiSource.batchnorm, min_sources=2))
