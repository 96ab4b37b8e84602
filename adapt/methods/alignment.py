"""The shared shape of the statistic-alignment objectives (DeepCORAL, DAN).

One step minimises

    L = CE(C(f_s), y_s) + weight · Σ_{ℓ ∈ layers} A(z_s^ℓ, z_t^ℓ)

where z^ℓ is the pooled features f = G(x) (``"features"``) or the logits C(f)
(``"logits"``) of each domain's batch and A is the method's discrepancy (CORAL's
covariance distance, DAN's multi-kernel MMD). Source and target are forwarded as
separate batches (per-domain BatchNorm statistics, as DANN); A is computed in fp32.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from adapt.errors import UserError

LAYERS = ("features", "logits")


class StatisticAlignment:
    """Source cross-entropy plus ``weight`` × a discrepancy between the domains' batches.

    Subclasses set ``name`` and implement :meth:`discrepancy` (``z_s`` [B_s, D],
    ``z_t`` [B_t, D] → scalar).
    """

    name = "alignment"
    uses_target = True
    #: trained on each domain's own BatchNorm statistics and deployed so (target with target's)
    batchnorm = "per_domain"

    def __init__(self, *, weight: float = 1.0, layers: Sequence[str] = ("features",), label_smoothing: float = 0.0):
        if weight < 0:
            raise UserError(f"{self.name}: weight={weight} must be >= 0")
        bad = [layer for layer in layers if layer not in LAYERS]
        if bad or not layers:
            raise UserError(f"{self.name}: layers {list(layers)}: choose one or more of {list(LAYERS)}")
        self.weight = float(weight)
        self.layers = tuple(layers)
        self.class_criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def modules(self) -> dict[str, nn.Module]:
        return {}

    def discrepancy(self, z_s: Tensor, z_t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None,
             progress: float) -> tuple[Tensor, dict[str, float]]:
        if xt is None:
            raise ValueError(f"{self.name} needs a target batch xt (uses_target=True)")
        fs = model.features(xs)
        ft = model.features(xt)
        logits_s, logits_t = model.head(fs), model.head(ft)
        class_loss = self.class_criterion(logits_s, ys)
        pick: dict[str, Callable[[], tuple[Tensor, Tensor]]] = {
            "features": lambda: (fs, ft), "logits": lambda: (logits_s, logits_t)}
        align = sum(self.discrepancy(*(z.float() for z in pick[layer]())) for layer in self.layers)
        with torch.no_grad():
            train_acc = (logits_s.argmax(1) == ys).float().mean().item()
        return class_loss + self.weight * align, {
            "class_loss": class_loss.item(), f"{self.name}_loss": float(align.detach()), "train_acc": train_acc}
