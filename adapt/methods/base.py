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
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


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
