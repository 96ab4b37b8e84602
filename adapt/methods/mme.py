"""MME: minimax entropy (Saito et al., ICCV 2019, "Semi-supervised Domain Adaptation via
Minimax Entropy") — a few labelled target images plus the unlabelled rest.

The classifier is cosine (:class:`~adapt.models.cosine_head.CosineHead`: prototypes w_c,
p = softmax(cos(w_c, F(x)) / T), T = 0.05). With x_s, y_s a labelled source batch, x_l, y_l
a batch of the k labelled target images per class and x_u an unlabelled target batch:

    L_ce  = CE(p(x_s ∪ x_l), y_s ∪ y_l)
    H     = −(1/|x_u|) Σ_u Σ_c p_c(x_u) log p_c(x_u)
    θ_C   = argmin L_ce − λ H      (the prototypes move towards the unlabelled target:
                                    they *maximise* its entropy)
    θ_F   = argmin L_ce + λ H      (the features cluster around the prototypes: they
                                    *minimise* it)

One loss, ``L_ce − λ H``, with a gradient-reversal layer between the features and the
classifier on the unlabelled branch gives both updates in one step (the authors' code
takes two optimiser steps per batch, one for L_ce and one for the entropy; λ = 0.1).

The loop's labelled batch is the source batch; the k labelled target images per class
are few (k · K), so this objective keeps them and draws |x_s| of them per step, with
replacement (source and labelled target weigh equally in L_ce, as in the paper's equal
batch sizes), from a generator re-seeded every epoch (``start_epoch``: a resumed run draws
the same). BatchNorm is per domain (:mod:`adapt.methods.base`): the source batch is
forwarded alone, the labelled and unlabelled target images together.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.dann import grad_reverse
from adapt.models.cosine_head import CosineHead
from adapt.models.modules import unwrap_model


def entropy(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of softmax(``logits``) [B, K] over the batch, fp32; the
    authors' ``+ 1e-5`` inside the log keeps the gradient finite at p = 0."""
    p = logits.float().softmax(dim=1)
    return -(p * torch.log(p + 1e-5)).sum(dim=1).mean()


class MME:
    """CE on source + labelled target, −λ·H on unlabelled target through a gradient reversal."""

    name = "mme"
    uses_target = True
    #: source and target normalised with their own statistics, deployed with the target's
    batchnorm = "per_domain"

    def __init__(self, labeled_images: Tensor, labeled_labels: Tensor, *, lam: float = 0.1,
                 label_smoothing: float = 0.0, seed: int = 0):
        if len(labeled_images) == 0 or len(labeled_images) != len(labeled_labels):
            raise UserError("mme: needs labelled target images (data.target.labeled_per_class: k)")
        if lam < 0:
            raise UserError(f"mme: lambda={lam} must be >= 0")
        self.images = labeled_images
        self.labels = torch.as_tensor(labeled_labels, dtype=torch.long)
        self.lam = float(lam)
        self.seed = int(seed)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def for_model(cls, model: nn.Module, labeled, *, lam: float = 0.1, temperature: float = 0.05,
                  label_smoothing: float = 0.0, seed: int = 0) -> MME:
        """MME for ``model`` (a Classifier), whose linear head becomes a cosine head with
        the same prototypes (in place); ``labeled``: the labelled target images (a
        DomainDataset: ``.images()``, ``.labels``)."""
        m = unwrap_model(model)
        if not isinstance(m.head, CosineHead):
            m.head = CosineHead.from_linear(m.head, temperature)
        return cls(labeled.images(), torch.as_tensor(labeled.labels), lam=lam,
                   label_smoothing=label_smoothing, seed=seed)

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return {}

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        if xt is None:
            raise ValueError("MME needs an unlabelled target batch xt (uses_target=True)")
        idx = torch.randint(len(self.images), (len(xs),), generator=self.generator)
        xl = self.images[idx].to(xs.device, xs.dtype)
        yl = self.labels[idx].to(ys.device)
        head = unwrap_model(model).head
        logits_s = model(xs)
        f_t = model.features(torch.cat([xl, xt]))  # one target forward: target BatchNorm statistics
        logits_l = head(f_t[: len(xl)])
        logits_u = head(grad_reverse(f_t[len(xl):], 1.0))
        class_loss = self.criterion(torch.cat([logits_s, logits_l]), torch.cat([ys, yl]))
        h = entropy(logits_u)
        with torch.no_grad():
            acc_s = (logits_s.argmax(1) == ys).float().mean().item()
            acc_l = (logits_l.argmax(1) == yl).float().mean().item()
        return class_loss - self.lam * h, {"class_loss": class_loss.item(), "target_entropy": h.item(),
                                            "train_acc": acc_s, "labeled_target_acc": acc_l}

class MMEConfig(RecipeSection):
    """A run's ``mme:`` options; defaults are the paper's."""

    #: λ: weight of the minimax entropy term on the unlabelled target images
    lam: float = Field(0.1, ge=0, le=100, alias="lambda")
    #: T of the cosine classifier: logits = cos(w_c, f) / T
    temperature: float = Field(0.05, gt=0, le=10)


def _mme(ctx: BuildContext):
    # source batches from the loop, labelled target ones kept by MME
    o = ctx.options
    return MME.for_model(ctx.model, ctx.labeled_target(), lam=o.lam, temperature=o.temperature,
                         label_smoothing=ctx.label_smoothing, seed=ctx.seed), ctx.source_train


register(ObjectiveSpec("mme", _mme, section=MMEConfig, batchnorm=MME.batchnorm, needs_labeled_target=True))
