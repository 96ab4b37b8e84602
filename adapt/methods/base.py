"""The protocols a method implements to plug into the one training loop.

``adapt.train.fit`` owns the loop (device, AMP, optimiser, schedule, checkpoints,
early stopping). A method contributes pieces to it and never loops itself:

* :class:`Objective` — the loss for one (source batch, target batch) step;
* :class:`ImageStyle` — an image-level transform of the source batch towards the
  target's style (FDA, histogram matching), applied in [0, 1] pixel space before the
  model's own normalisation, during training only;
* :class:`FeatureStyle` — forward hooks that restyle feature maps (MixStyle);
* :class:`Penalty` — a parameter regulariser added to every step's loss (EWC, L2-SP);
* :class:`EpochStart` — optional: an objective that also has ``start_epoch`` is called
  at the start of every epoch, after the transfer strategy set ``requires_grad`` and
  before the epoch's batches are drawn (SHOT refreshes its pseudo-labels and re-freezes
  the head there; TENT re-freezes everything but the BatchNorm affine parameters).

Each protocol lists exactly what the loop calls. The loop draws an unlabelled target
batch ``xt`` for every source batch if and only if one of the objective, the image style
or the feature style declares ``uses_target = True``; otherwise ``xt`` is None.

**BatchNorm convention.** An objective may set ``batchnorm`` (see
:func:`batchnorm_convention`) to say which BatchNorm statistics its model is trained
and deployed with:

* ``"source"`` (the default) — one set of statistics, the source's: precise BN
  re-estimates them on source images after every epoch, and both domains are scored
  and evaluated with them (source-only training, style transfer on source images);
* ``"per_domain"`` — every feature-alignment objective (DANN; CDAN, MCC, CORAL, DAN):
  training forwards source and target as **separate** batches (:func:`features_per_domain`),
  so each domain is normalised with its own statistics and the alignment is learnt
  between per-domain-normalised features; the model is deployed the same way: the
  target is scored, selected and evaluated with target statistics (AdaBN on unlabelled
  target training images), the source with source statistics. Chosen by measurement
  over joint-batch BatchNorm (one forward of cat(x_s, x_t), the pytorch-adapt / TLlib
  convention) and over the source statistics this project used before: docs/benchmarks.md,
  "BatchNorm convention for DANN".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from adapt.method_registry import BATCHNORM_CONVENTIONS


def batchnorm_convention(objective: object | None) -> str:
    """The BatchNorm statistics an objective trains and is deployed with: its
    ``batchnorm`` attribute, ``"source"`` when it has none (or for no objective)."""
    convention = getattr(objective, "batchnorm", "source")
    if convention not in BATCHNORM_CONVENTIONS:
        raise ValueError(f"{type(objective).__name__}.batchnorm must be one of {BATCHNORM_CONVENTIONS}, "
                         f"got {convention!r}")
    return convention


def features_per_domain(model: nn.Module, xs: Tensor, xt: Tensor) -> tuple[Tensor, Tensor]:
    """``model.features`` of the source and the target batch, forwarded separately (the
    ``"per_domain"`` convention: every BatchNorm normalises each domain with its own batch
    statistics). Source first: a MixStyle armed by the loop restyles the next forward."""
    return model.features(xs), model.features(xt)


@runtime_checkable
class Objective(Protocol):
    """The training loss of a method."""

    name: str
    #: when True the loop draws an unlabelled target batch ``xt`` for every source batch
    uses_target: bool

    def modules(self) -> dict[str, nn.Module]:
        """Extra trainable modules (e.g. a domain discriminator): optimised and checkpointed."""
        ...

    def loss(
        self, model: nn.Module, xs: Tensor, ys: Tensor, xt: Tensor | None, progress: float
    ) -> tuple[Tensor, dict[str, float]]:
        """Return (scalar loss, logs). ``progress`` is p in [0, 1] over the whole run."""
        ...


@runtime_checkable
class ImageStyle(Protocol):
    """Moves source images towards the target style; training only.

    (Styles that need the whole target set, e.g. histogram matching, are fitted on it
    when the run is assembled, :func:`adapt.methods.build_run_components`; the loop only
    calls the style.)"""

    name: str
    #: when True ``xt`` is the step's target batch; else None
    uses_target: bool
    #: (optional) True when an image's restyled form depends on that image alone (no
    #: target batch, no randomness, not on the rest of the batch): the loop then restyles
    #: the training images once per run instead of every epoch (histogram matching)
    # per_image: bool

    def __call__(
        self, xs: Tensor, xt: Tensor | None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Restyle a source batch [B, C, H, W] in [0, 1]; returns the same shape, in [0, 1]."""
        ...


@runtime_checkable
class FeatureStyle(Protocol):
    """Restyles intermediate feature maps through forward hooks while attached."""

    name: str
    #: when True the loop calls :meth:`observe_target` before every step's loss
    uses_target: bool

    def attach(self, model: nn.Module) -> None:
        """Register the hooks; called at the start of every training epoch."""
        ...

    def observe_target(self, model: nn.Module, xt: Tensor) -> None:
        """See the step's target batch [B, C, H, W] in [0, 1] before the source forward."""
        ...

    def detach(self) -> None:
        """Remove the hooks; called at the end of every training epoch."""
        ...


@runtime_checkable
class Penalty(Protocol):
    """A regulariser on the parameters, added to the objective's loss."""

    name: str

    def __call__(self, model: nn.Module) -> Tensor: ...


@runtime_checkable
class EpochStart(Protocol):
    """An objective's per-epoch hook (optional; see the module docstring)."""

    def start_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Prepare epoch ``epoch`` (0-based); returns logs for the epoch's history record."""
        ...


@dataclass
class MethodParts:
    """What a method plugs into the loop: the parts above, and (from a recipe run,
    :func:`adapt.methods.build_run_components`) the data they train on."""

    objective: Objective | None
    style: ImageStyle | None = None
    feature_style: FeatureStyle | None = None
    penalties: Sequence[Penalty] = ()
    #: the labelled batches: source train, the labelled target images, or target images (source-free)
    train_data: Any = None
    #: unlabelled target images; drawn from when a part ``uses_target``
    target_data: Any = None
    #: the recipe's ``data.augment`` transform of the labelled batch (not a method part)
    augment: Callable[..., Tensor] | None = None
    fairness: Any = None  # adapt.fairness.FairnessLoss: told each step's batch indices

    def uses_target(self) -> bool:
        """Whether any part declared it needs an unlabelled target batch every step."""
        parts = (self.objective, self.style, self.feature_style)
        return any(p.uses_target for p in parts if p is not None)
