"""The cosine classifier of MME (Saito et al., ICCV 2019, Sec. 3.2): class prototypes
w_c and logits ``cos(w_c, f) / T`` — the features and every prototype L2-normalised, no
bias, temperature T (the paper's 0.05).

A :class:`CosineHead` is an ``nn.Linear`` without bias whose forward normalises, so a
:class:`~adapt.models.modules.Classifier` keeps its ``head`` attribute, its
``in_features``/``out_features`` and its state-dict keys; checkpoints record the head's
kind and temperature (:func:`head_spec`) and rebuild it (:func:`head_from_spec`).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from adapt.errors import UserError


class CosineHead(nn.Linear):
    """``logits = normalize(f) @ normalize(W)ᵀ / temperature`` ([B, D] → [B, K])."""

    def __init__(self, in_features: int, out_features: int, temperature: float = 0.05):
        super().__init__(in_features, out_features, bias=False)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    @classmethod
    def from_linear(cls, head: nn.Linear, temperature: float = 0.05) -> CosineHead:
        """A cosine head whose prototypes start as ``head``'s weight rows (its bias dropped)."""
        cosine = cls(head.in_features, head.out_features, temperature).to(head.weight.device)
        cosine.weight.data.copy_(head.weight.data)
        return cosine

    def forward(self, f: Tensor) -> Tensor:
        return F.linear(F.normalize(f, dim=1), F.normalize(self.weight, dim=1)) / self.temperature

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, temperature={self.temperature:g}"


def head_spec(head: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint records of a non-linear head (None for a plain ``nn.Linear``)."""
    return {"kind": "cosine", "temperature": head.temperature} if isinstance(head, CosineHead) else None


def head_from_spec(spec: Any, linear: nn.Linear, where: str) -> nn.Module:
    """The head a checkpoint recorded (``spec`` from :func:`head_spec`), built in place of the
    freshly built model's ``linear`` head; a one-line UserError when ``spec`` is damaged."""
    if spec is None:
        return linear
    t = spec.get("temperature") if isinstance(spec, dict) else None
    if not (isinstance(spec, dict) and spec.get("kind") == "cosine" and isinstance(t, (int, float)) and t > 0):
        raise UserError(f"{where}: damaged domaingap checkpoint, unknown head {spec!r}")
    return CosineHead(linear.in_features, linear.out_features, float(t))
