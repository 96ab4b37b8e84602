"""MCC: minimum class confusion (Jin et al., ECCV 2020, "Minimum Class Confusion for
Versatile Domain Adaptation").

For target logits [B, K], temperature T and Ŷ = softmax(logits / T):

    w_i   = B · (1 + exp(−H(Ŷ_i))) / Σ_j (1 + exp(−H(Ŷ_j)))     (certainty weights, mean 1, no gradient)
    C     = Ŷᵀ diag(w) Ŷ                                         (class correlation, [K, K])
    C̃_jk = C_jk / Σ_k' C_jk'                                     (rows normalised)
    ℓ_MCC = (Σ_{j,k} C̃_jk − Σ_j C̃_jj) / K                        (between-class confusion)

added to the source cross-entropy with ``weight`` (the paper's μ = 1, T = 2.5). The
source batch is forwarded for the cross-entropy only; the target batch separately
(per-domain BatchNorm statistics). pytorch-adapt's ``MCCLoss`` is the test's oracle.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.entropy import entropy_weights


def mcc_loss(logits: Tensor, temperature: float = 2.5) -> Tensor:
    """ℓ_MCC of target logits [B, K] (scalar, in [0, (K − 1)/K]), fp32."""
    probs = (logits.float() / temperature).softmax(dim=1)
    w = entropy_weights(probs)
    w = w * (len(w) / w.sum())
    confusion = (probs * w.unsqueeze(1)).T @ probs
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / confusion.shape[0]


class MCC:
    """Source CE + weight · ℓ_MCC(target logits)."""

    name = "mcc"
    uses_target = True
    #: trained on each domain's own BatchNorm statistics and deployed so (target with target's)
    batchnorm = "per_domain"

    def __init__(self, *, weight: float = 1.0, temperature: float = 2.5, label_smoothing: float = 0.0):
        if weight < 0 or temperature <= 0:
            raise UserError(f"mcc: weight={weight} must be >= 0 and temperature={temperature} > 0")
        self.weight = float(weight)
        self.temperature = float(temperature)
        self.class_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        if xt is None:
            raise ValueError("MCC needs a target batch xt (uses_target=True)")
        logits_s = model(xs)
        logits_t = model(xt)
        class_loss = self.class_criterion(logits_s, ys)
        confusion = mcc_loss(logits_t, self.temperature)
        with torch.no_grad():
            train_acc = (logits_s.argmax(1) == ys).float().mean().item()
        return class_loss + self.weight * confusion, {
            "class_loss": class_loss.item(), "mcc_loss": confusion.item(), "train_acc": train_acc}

class MCCConfig(RecipeSection):
    """A run's ``mcc:`` options."""

    #: mu, the weight of the class-confusion loss
    weight: float = Field(1.0, ge=0)
    #: softmax temperature of the target predictions (the paper's 2.5)
    temperature: float = Field(2.5, gt=0)


def _mcc(ctx: BuildContext):
    o = ctx.options
    return MCC(weight=o.weight, temperature=o.temperature, label_smoothing=ctx.label_smoothing), ctx.source_train


register(ObjectiveSpec("mcc", _mcc, section=MCCConfig, batchnorm=MCC.batchnorm, study=({},)))
