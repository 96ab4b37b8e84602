"""DANN: domain-adversarial training (Ganin et al., JMLR 2016, "Domain-Adversarial
Training of Neural Networks").

With f = G(x) the pooled features (``model.features``), C the class head and D a
domain discriminator, one step minimises

    L = CE(C(f_s), y_s) + BCE(D(R_λ(f_s)), 0) + BCE(D(R_λ(f_t)), 1)

where R_λ is the gradient-reversal layer: identity forward, gradient × (−λ) backward.
D therefore descends the domain loss while G ascends it with weight λ, in a single
backward pass and a single optimizer step over G, C and D. Source is domain 0, target
domain 1; each BCE is the mean over its own batch, and the three terms are **summed**
(pytorch-adapt's ``DANNHook`` with ``weighter=SumWeighter()`` computes the same loss;
its default ``MeanWeighter`` divides the sum by 3).

Schedules (the paper's §5.2.2), with p ∈ [0, 1] the training progress:

    λ_p = domain_weight · (2 / (1 + exp(−10 p)) − 1)     (ramps 0 → ~domain_weight)
    μ_p = μ_0 / (1 + 10 p)^0.75                          (``adapt.train.lr_factor("dann", p)``)

BatchNorm: the ``"per_domain"`` convention (:mod:`adapt.methods.base`). Source and
target are forwarded as **separate batches** (as ``DANNHook`` does), so during training
every BN layer normalises each domain with its own batch statistics and a batch never
mixes domains; the model is deployed the same way — the pipeline scores, selects and
evaluates the target with target statistics (AdaBN), the source with source statistics.

Guarding against the known failure (the discriminator wins, the features collapse and
source accuracy is lost): λ starts at 0 and ramps up (warm-up), ``domain_weight``
caps it (default 1, keep ≤ 1), and the optional ``diversity_weight`` adds
w · (log K − H(mean_b softmax(C(f_t)))), which is zero when the target predictions
spread over all K classes and grows as they collapse onto one class.
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
from adapt.methods.base import features_per_domain


def grl_lambda(progress: float, domain_weight: float = 1.0) -> float:
    """λ_p = domain_weight · (2 / (1 + exp(−10 p)) − 1); 0 at p = 0, ≈ domain_weight at p = 1."""
    p = min(max(float(progress), 0.0), 1.0)
    return domain_weight * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


class _GradientReversal(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by −λ backward."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        return -ctx.lam * grad_output, None


def grad_reverse(x: Tensor, lam: float) -> Tensor:
    """Gradient-reversal layer R_λ(x): forward x, backward −λ · grad."""
    return _GradientReversal.apply(x, float(lam))


class DomainDiscriminator(nn.Module):
    """MLP D: [B, feature_dim] → [B] domain logits (positive = target).

    ``depth`` hidden layers of ``width`` units with ReLU (and optional dropout), then a
    linear output. Default 2 × 256, as pytorch-adapt's discriminator shape (its width
    defaults to 2048); 256 suffices for feature_dim 128–2048 and keeps D from
    overpowering a small backbone.
    """

    def __init__(self, feature_dim: int, width: int = 256, depth: int = 2, dropout: float = 0.0):
        super().__init__()
        if feature_dim < 1 or width < 1 or depth < 0:
            raise UserError(
                f"dann discriminator: feature_dim={feature_dim}, width={width}, depth={depth} must be positive"
            )
        layers: list[nn.Module] = []
        d_in = feature_dim
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d_in = width
        layers.append(nn.Linear(d_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f).squeeze(1)


def prediction_collapse(logits: Tensor) -> Tensor:
    """log K − H(mean_b softmax(logits)) ≥ 0: zero for a uniform marginal, log K for one class."""
    probs = logits.float().softmax(dim=1).mean(dim=0)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
    return math.log(logits.shape[1]) - entropy


class DANN:
    """DANN objective for the shared training loop.

    Parameters
    ----------
    feature_dim: width of ``model.features(x)`` (``model.feature_dim``).
    domain_weight: the maximum GRL coefficient λ (the schedule ramps 0 → this).
    width, depth, dropout: the discriminator MLP.
    schedule: False → λ = domain_weight from the first step (no warm-up; not advised).
    diversity_weight: weight of the optional anti-collapse term on target predictions.
    label_smoothing: for the class cross-entropy.

    The loop must: forward nothing itself (``loss`` forwards source then target),
    include ``modules()["discriminator"]`` in the optimizer and checkpoint, and apply
    ``adapt.train.lr_factor("dann", progress)`` to every param group's learning rate.
    """

    name = "dann"
    uses_target = True
    #: trained and deployed with per-domain BatchNorm statistics (adapt.methods.base)
    batchnorm = "per_domain"

    def __init__(
        self,
        feature_dim: int,
        *,
        domain_weight: float = 1.0,
        width: int = 256,
        depth: int = 2,
        dropout: float = 0.0,
        schedule: bool = True,
        diversity_weight: float = 0.0,
        label_smoothing: float = 0.0,
    ):
        if domain_weight < 0 or diversity_weight < 0:
            raise UserError(
                f"dann: domain_weight={domain_weight} and diversity_weight={diversity_weight} must be >= 0"
            )
        self.discriminator = DomainDiscriminator(feature_dim, width, depth, dropout)
        self.domain_weight = float(domain_weight)
        self.schedule = schedule
        self.diversity_weight = float(diversity_weight)
        self.class_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    @classmethod
    def for_model(cls, model: nn.Module, **kwargs) -> DANN:
        """Build with ``feature_dim`` taken from ``model.feature_dim``."""
        return cls(int(model.feature_dim), **kwargs)

    def modules(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator}

    def lambda_at(self, progress: float) -> float:
        """The GRL coefficient used at training progress p."""
        return grl_lambda(progress, self.domain_weight) if self.schedule else self.domain_weight

    def loss(
        self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None, progress: float
    ) -> tuple[Tensor, dict[str, float]]:
        if xt is None:
            raise ValueError("DANN needs a target batch xt (uses_target=True)")
        lam = self.lambda_at(progress)
        # Separate forwards: per-domain BatchNorm batch statistics (see module docstring).
        fs, ft = features_per_domain(model, xs, xt)
        logits_s = model.head(fs)
        class_loss = self.class_criterion(logits_s, ys)

        ds = self.discriminator(grad_reverse(fs, lam))
        dt = self.discriminator(grad_reverse(ft, lam))
        # float(): BCE in fp32 under autocast; each term is the mean over its own domain's batch
        loss_s = F.binary_cross_entropy_with_logits(ds.float(), torch.zeros_like(ds, dtype=torch.float32))
        loss_t = F.binary_cross_entropy_with_logits(dt.float(), torch.ones_like(dt, dtype=torch.float32))
        domain_loss = loss_s + loss_t
        total = class_loss + domain_loss

        with torch.no_grad():
            correct = (ds < 0).sum() + (dt > 0).sum()
            disc_acc = correct.item() / (ds.numel() + dt.numel())
            train_acc = (logits_s.argmax(1) == ys).float().mean().item()
        logs = {
            "class_loss": class_loss.item(),
            "domain_loss": domain_loss.item(),
            "src_domain_loss": loss_s.item(),
            "target_domain_loss": loss_t.item(),
            "lambda": lam,
            "disc_acc": disc_acc,
            "train_acc": train_acc,
        }
        if self.diversity_weight > 0:
            collapse = prediction_collapse(model.head(ft))
            total = total + self.diversity_weight * collapse
            logs["target_collapse"] = collapse.item()
        return total, logs

class DANNConfig(RecipeSection):
    """A run's ``dann:`` options (also msdann's)."""

    #: maximum weight of the domain loss; the paper's ramp 2/(1+exp(-10p))-1 scales it
    weight: float = Field(0.3, ge=0)
    hidden: int = Field(256, ge=1, le=65536)
    depth: int = Field(2, ge=1, le=8)


def _dann(ctx: BuildContext):
    o = ctx.options
    return DANN.for_model(ctx.model, domain_weight=o.weight, width=o.hidden, depth=o.depth,
                          label_smoothing=ctx.label_smoothing), ctx.source_train


register(ObjectiveSpec("dann", _dann, section=DANNConfig, batchnorm=DANN.batchnorm, schedule="dann"))
