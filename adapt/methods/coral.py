"""DeepCORAL: correlation alignment (Sun & Saenko, ECCV-W 2016, "Deep CORAL:
Correlation Alignment for Deep Domain Adaptation").

For source and target activations Z_s [n_s, d], Z_t [n_t, d] of one batch,

    C = (Zᵀ Z − (1ᵀZ)ᵀ(1ᵀZ) / n) / (n − 1)          (unbiased covariance, [d, d])
    ℓ_CORAL = ‖C_s − C_t‖²_F / (4 d²)

added to the source cross-entropy with ``weight`` (:class:`adapt.methods.alignment.
StatisticAlignment`). The paper applies it to the last layer (fc8, the logits:
``layers: [logits]``); the default here aligns the pooled features, as pytorch-adapt's
and TLlib's examples do. pytorch-adapt's ``CORALLoss`` computes the same ℓ (the test's
oracle).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.alignment import StatisticAlignment


def covariance(z: Tensor) -> Tensor:
    """Unbiased covariance of the rows of ``z`` [n, d] → [d, d] (n ≥ 2)."""
    n = z.shape[0]
    if n < 2:
        raise UserError(f"coral: a batch of {n} sample(s) has no covariance (needs >= 2; raise train.batch_size)")
    centred = z - z.mean(dim=0, keepdim=True)
    return centred.T @ centred / (n - 1)


def coral_loss(z_s: Tensor, z_t: Tensor) -> Tensor:
    """ℓ_CORAL = ‖C_s − C_t‖²_F / (4 d²) of [n_s, d] and [n_t, d] activations (scalar)."""
    d = z_s.shape[1]
    return (covariance(z_s) - covariance(z_t)).square().sum() / (4.0 * d * d)


class DeepCORAL(StatisticAlignment):
    """Source CE + weight · CORAL over the chosen layers."""

    name = "coral"

    def discrepancy(self, z_s: Tensor, z_t: Tensor) -> Tensor:
        return coral_loss(z_s, z_t)

class CORALConfig(RecipeSection):
    """A run's ``coral:`` options."""

    weight: float = Field(1.0, ge=0)
    #: activations to align: pooled features and/or logits (the paper: the last layer)
    layers: list[Literal["features", "logits"]] = Field(default_factory=lambda: ["features"], min_length=1)


def _coral(ctx: BuildContext):
    o = ctx.options
    return DeepCORAL(weight=o.weight, layers=o.layers, label_smoothing=ctx.label_smoothing), ctx.source_train


register(ObjectiveSpec("coral", _coral, section=CORALConfig, batchnorm=DeepCORAL.batchnorm, study=({},)))
