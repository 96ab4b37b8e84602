"""Training-time augmentation of source batches (``data.augment`` in the recipe).

A source that is grey and always dark-background (scanned digits, one scanner's
X-rays) teaches a model nothing about colour or polarity, so a target whose colours
and polarity vary (the MNIST-M protocol: |photo − digit| strokes are darker or
brighter than their background, in any hue) lies outside everything it saw. Measured
on digits → textured digits (``benchmarks/digits_probe.py``, docs/benchmarks.md "Digits study"):
a source-only small CNN reaches 24% on the target with a replicated grey source and
44% with both augmentations below.

* ``invert`` — with probability ½ per image, x → 1 − x (polarity);
* ``colour`` — per image and channel, x → g·x + o with g ~ U(0.4, 1), o ~ U(0, 0.3)
  (hue, contrast and brightness; for a grey source replicated to three channels this
  is what makes the channels differ).

Applied by the training loop to source batches only (images in [0, 1], after loading,
before any style transfer); never at evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from adapt.errors import UserError

AUGMENTS = ("invert", "colour")


class SourceAugment:
    """Batch augmentation ``[B, C, H, W] in [0, 1] → same shape in [0, 1]``."""

    def __init__(self, kinds: Sequence[str]):
        unknown = [k for k in kinds if k not in AUGMENTS]
        if unknown:
            raise UserError(f"data.augment: unknown augmentation(s) {unknown}; choose from {list(AUGMENTS)}")
        self.kinds = tuple(kinds)
        self.name = "+".join(self.kinds)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Draws on ``generator`` (CPU) so that a seeded epoch gives the same batches."""
        b, c = x.shape[:2]

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=generator).to(x.device, x.dtype)

        if "invert" in self.kinds:
            flip = (rand(b, 1, 1, 1) < 0.5).to(x.dtype)
            x = flip * (1.0 - x) + (1.0 - flip) * x
        if "colour" in self.kinds:
            x = x * (0.4 + 0.6 * rand(b, c, 1, 1)) + 0.3 * rand(b, c, 1, 1)
        return x.clamp(0.0, 1.0)
