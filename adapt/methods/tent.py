"""TENT: fully test-time adaptation by entropy minimisation (Wang et al., ICLR 2021,
"Tent: Fully Test-Time Adaptation by Entropy Minimization").

Only the BatchNorm affine parameters (γ, β) train; every other weight is frozen. BN
normalises each target batch with its own statistics (train mode), and each batch's

    L = E_i H(softmax(f_θ(x_i)))

is minimised with one optimiser step, online: one pass over the unlabelled target
batches (``epochs: 1`` by default), no source data, no labels.

Deployment: the authors' code keeps normalising every test batch by its own
statistics; here the model is deployed with target *population* statistics
(re-estimated over the target training images after the pass, by the loop's precise
BN on the data it trained on), which equals batch normalisation in expectation and
makes a prediction independent of what else is in its batch.
"""

from __future__ import annotations

from torch import Tensor, nn

from adapt.errors import UserError
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.entropy import entropy


def configure_tent(model: nn.Module) -> int:
    """Freeze everything but the BatchNorm affine parameters; returns how many tensors train."""
    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.requires_grad_(True)
            m.bias.requires_grad_(True)
            n += 2
    return n


class TENT:
    """TENT objective: mean prediction entropy of target batches, BN affine only."""

    name = "tent"
    uses_target = False
    #: trains on target batches only: deployed with target BatchNorm statistics, the source with its own
    batchnorm = "per_domain"

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Re-apply the freezing after the loop's transfer strategy (which unfreezes the head)."""
        if configure_tent(model) == 0:
            raise UserError("tent: the model has no BatchNorm layer with affine parameters to adapt")
        return {}

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        ent = entropy(model(xs).float().softmax(dim=1)).mean()
        return ent, {"entropy": ent.item()}

def _tent(ctx: BuildContext):
    return TENT(), ctx.target_train  # unlabelled: TENT ignores the labels


register(ObjectiveSpec("tent", _tent, batchnorm=TENT.batchnorm, trains_on="target", epochs=1,
                       study=({"epochs": 1},)))
