"""CDAN and CDAN+E: conditional adversarial adaptation (Long et al., NeurIPS 2018,
"Conditional Adversarial Domain Adaptation").

DANN's discriminator sees the features f alone; CDAN's sees them *conditioned on the
classifier's prediction* g = softmax(C(f)) through the multilinear map

    T(f, g) = g ⊗ f  ∈ R^{K·d}                    (outer product, flattened; exact)
    T(f, g) = (f R_f) ⊙ (g R_g) / √m  ∈ R^m       (randomised, when K·d > max_dim;
                                                  R_f [d, m], R_g [K, m] fixed N(0, 1))

so it aligns the joint distribution of features and predictions, class by class.
The randomised map's inner products approximate the exact one's in expectation
(E⟨T̃(f, g), T̃(f', g')⟩ = ⟨f, f'⟩⟨g, g'⟩); the paper switches to it beyond 4096
dimensions, with m = 1024. One step minimises

    L = CE(C(f_s), y_s) + Σ_{d ∈ {s, t}} Σ_i w_i · BCE(D(R_λ(T(f_i, g_i))), d) / Σ_i w_i

with R_λ the gradient-reversal layer and λ ramped as in DANN
(:func:`adapt.methods.dann.grl_lambda`). Plain CDAN: w_i = 1 (the mean over each
domain's batch). CDAN+E (``entropy=True``): w_i = 1 + exp(−H(g_i)), so confidently
classified samples weigh more; each domain's weights are normalised by their sum (as
in the authors' code, thuml/CDAN, where the weights carry no gradient).

g enters T detached — the prediction conditions the discriminator but the domain
loss does not train the classifier through it (as the authors' code does) — and the
BCE terms are summed over the two domains as in :class:`adapt.methods.dann.DANN`.
BatchNorm: source and target are forwarded as separate batches, as in DANN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.dann import DomainDiscriminator, grad_reverse, grl_lambda
from adapt.methods.entropy import entropy_weights


class MultilinearMap(nn.Module):
    """CDAN's conditioning T(f, g): features [B, d] and probabilities [B, K] → [B, out_dim].

    Exact outer product (out_dim = K·d, index k·d + j holds g_k f_j) while K·d ≤ ``max_dim``;
    otherwise the randomised map with ``randomized_dim`` outputs and fixed Gaussian
    matrices drawn from ``seed`` (buffers, so they are checkpointed with the run).
    """

    def __init__(self, feature_dim: int, num_classes: int, *, randomized_dim: int = 1024,
                 max_dim: int = 4096, seed: int = 0):
        super().__init__()
        if feature_dim < 1 or num_classes < 1 or randomized_dim < 1 or max_dim < 1:
            raise UserError(f"cdan: feature_dim={feature_dim}, num_classes={num_classes}, "
                            f"randomized_dim={randomized_dim}, max_dim={max_dim} must be positive")
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.randomized = feature_dim * num_classes > max_dim
        if self.randomized:
            gen = torch.Generator().manual_seed(seed)
            self.register_buffer("r_f", torch.randn(feature_dim, randomized_dim, generator=gen))
            self.register_buffer("r_g", torch.randn(num_classes, randomized_dim, generator=gen))
            self.out_dim = randomized_dim
        else:
            self.out_dim = feature_dim * num_classes

    def forward(self, f: Tensor, g: Tensor) -> Tensor:
        if self.randomized:
            return (f @ self.r_f.to(f.dtype)) / math.sqrt(self.out_dim) * (g.to(f.dtype) @ self.r_g.to(f.dtype))
        return torch.bmm(g.to(f.dtype).unsqueeze(2), f.unsqueeze(1)).flatten(1)


def weighted_domain_bce(logits: Tensor, domain: float, weights: Tensor | None) -> Tensor:
    """Σ_i w_i BCE(logit_i, domain) / Σ_i w_i (the mean when ``weights`` is None), fp32."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits, domain, dtype=torch.float32),
                                                reduction="none")
    if weights is None:
        return losses.mean()
    w = weights.float()
    return (w * losses).sum() / w.sum()


class CDAN:
    """CDAN / CDAN+E objective for the shared training loop.

    Parameters
    ----------
    feature_dim, num_classes: ``model.feature_dim`` and ``model.num_classes``.
    domain_weight: the maximum GRL coefficient λ (ramped 0 → this, as in DANN).
    entropy: CDAN+E's entropy conditioning.
    randomized_dim, max_dim: the multilinear map (:class:`MultilinearMap`).
    width, depth: the discriminator MLP on T(f, g).

    Like DANN, the loop applies the DANN learning-rate schedule and optimises and
    checkpoints ``modules()`` (the discriminator; the map's random matrices ride along).
    """

    name = "cdan"
    uses_target = True
    #: trained on each domain's own BatchNorm statistics and deployed so (target with target's)
    batchnorm = "per_domain"

    def __init__(self, feature_dim: int, num_classes: int, *, domain_weight: float = 1.0, entropy: bool = False,
                 randomized_dim: int = 1024, max_dim: int = 4096, width: int = 256, depth: int = 2,
                 schedule: bool = True, label_smoothing: float = 0.0, seed: int = 0):
        if domain_weight < 0:
            raise UserError(f"cdan: weight={domain_weight} must be >= 0")
        self.map = MultilinearMap(feature_dim, num_classes, randomized_dim=randomized_dim, max_dim=max_dim,
                                  seed=seed)
        self.discriminator = DomainDiscriminator(self.map.out_dim, width, depth)
        self.domain_weight = float(domain_weight)
        self.entropy = entropy
        self.schedule = schedule
        self.class_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        if entropy:
            self.name = "cdan+e"

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> CDAN:
        return cls(int(model.feature_dim), int(model.num_classes), **kwargs)

    def modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator, "multilinear_map": self.map}

    def lambda_at(self, progress: float) -> float:
        return grl_lambda(progress, self.domain_weight) if self.schedule else self.domain_weight

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        if xt is None:
            raise ValueError("CDAN needs a target batch xt (uses_target=True)")
        lam = self.lambda_at(progress)
        fs = model.features(xs)  # separate forwards: per-domain BatchNorm statistics
        ft = model.features(xt)
        logits_s, logits_t = model.head(fs), model.head(ft)
        class_loss = self.class_criterion(logits_s, ys)
        gs = logits_s.detach().float().softmax(dim=1)
        gt = logits_t.detach().float().softmax(dim=1)
        ds = self.discriminator(grad_reverse(self.map(fs, gs), lam))
        dt = self.discriminator(grad_reverse(self.map(ft, gt), lam))
        ws = entropy_weights(gs) if self.entropy else None
        wt = entropy_weights(gt) if self.entropy else None
        loss_s = weighted_domain_bce(ds, 0.0, ws)
        loss_t = weighted_domain_bce(dt, 1.0, wt)
        domain_loss = loss_s + loss_t
        with torch.no_grad():
            disc_acc = ((ds < 0).sum() + (dt > 0).sum()).item() / (ds.numel() + dt.numel())
            train_acc = (logits_s.argmax(1) == ys).float().mean().item()
        return class_loss + domain_loss, {
            "class_loss": class_loss.item(), "domain_loss": domain_loss.item(),
            "src_domain_loss": loss_s.item(), "target_domain_loss": loss_t.item(),
            "lambda": lam, "disc_acc": disc_acc, "train_acc": train_acc,
        }

class CDANConfig(RecipeSection):
    """A run's ``cdan:`` options."""

    #: maximum GRL coefficient (ramped as DANN's)
    weight: float = Field(1.0, ge=0)
    #: CDAN+E: weight each sample's domain loss by 1 + exp(-entropy of its prediction)
    entropy: bool = False
    #: output size of the randomised multilinear map, used when classes x features > max_multilinear_dim
    randomized_dim: int = Field(1024, ge=1, le=65536)
    max_multilinear_dim: int = Field(4096, ge=1, le=1 << 20)
    hidden: int = Field(256, ge=1, le=65536)
    depth: int = Field(2, ge=1, le=8)


def _cdan(ctx: BuildContext):
    c = ctx.options
    return CDAN.for_model(ctx.model, domain_weight=c.weight, entropy=c.entropy, randomized_dim=c.randomized_dim,
                          max_dim=c.max_multilinear_dim, width=c.hidden, depth=c.depth,
                          label_smoothing=ctx.label_smoothing, seed=ctx.seed), ctx.source_train


register(ObjectiveSpec("cdan", _cdan, section=CDANConfig, batchnorm=CDAN.batchnorm, schedule="dann",
                       study=({}, {"name": "cdan+e", "cdan": {"entropy": True}})))
