"""Attribution maps through Captum, behind one call: :func:`attribute`.

Integrated Gradients (Sundararajan et al., ICML 2017)

    IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂F(x' + α(x − x'))/∂x_i dα     (Gauss–Legendre, n_steps)

with completeness ``Σ_i IG_i = F(x) − F(x')`` (the *convergence delta* measures how far
the quadrature is from it); or Grad-CAM (Selvaraju et al., ICCV 2017) on the model's
``gradcam_layer()``, ``ReLU(Σ_k mean_uv(∂y/∂A_k) · A_k)`` upsampled to the input size.
Each method is one small explainer class with the same call, ``(x, target) -> (maps,
delta | None)``, as Captum gives its attribution methods one ``attribute`` call.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from adapt.errors import UserError
from diagnostics.attribution.predictions import check_images, device_of, frozen_eval, predict

METHODS = ("integrated_gradients", "gradcam")


@dataclass
class AttributionResult:
    """Per-pixel attribution magnitudes.

    maps: [N, H, W] float32 ≥ 0 — |attribution| summed over input channels (IG), or the
        ReLU'd Grad-CAM map upsampled bilinearly to the input size.
    convergence_delta: [N] float32 (IG only) — ``Σ_i IG_i − (F(x) − F(x'))`` per sample.
    method: "integrated_gradients" | "gradcam".
    targets: [N] int64, the class whose logit was attributed.
    """

    maps: Tensor
    method: str
    targets: Tensor
    convergence_delta: Tensor | None = None

    @property
    def mean_abs_delta(self) -> float | None:
        """Mean |convergence delta| (IG): small compared with |F(x) − F(x')| means the
        n_steps quadrature is accurate enough."""
        if self.convergence_delta is None:
            return None
        return float(self.convergence_delta.abs().mean())


def _baseline_for(images: Tensor, baseline: str | float | Tensor) -> Tensor:
    """IG reference image x'. "zeros": black; "mean": each image's own mean intensity
    as a flat image (per channel) — no structure, same brightness, so IG does not
    credit plain brightness; a tensor: broadcast to the batch."""
    if isinstance(baseline, Tensor):
        base = baseline.to(images.device, images.dtype)
        if base.ndim == 3:
            base = base.unsqueeze(0)
        try:
            return base.expand_as(images).contiguous()
        except RuntimeError:
            raise UserError(f"attribute: baseline of shape {tuple(baseline.shape)} does not "
                            f"broadcast to images {tuple(images.shape)}") from None
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(images, float(baseline))
    if baseline == "zeros":
        return torch.zeros_like(images)
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).contiguous()
    raise UserError(f"attribute: baseline={baseline!r} is not 'zeros', 'mean', a number or a tensor")


def _as_targets(targets, n: int, model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    if targets is None:
        return predict(model, images, batch_size)
    if isinstance(targets, (int, np.integer)):
        return torch.full((n,), int(targets), dtype=torch.long)
    t = torch.as_tensor(np.asarray(targets)).long().reshape(-1)
    if len(t) != n:
        raise UserError(f"attribute: {len(t)} targets for {n} images")
    if (t < 0).any():
        raise UserError("attribute: negative target (unknown label); pass targets=None to "
                        "attribute the predicted class")
    return t


class _IntegratedGradients:
    """Captum IntegratedGradients; maps are |IG| summed over channels."""

    def __init__(self, model: nn.Module, *, baseline, n_steps: int, internal_batch_size: int | None, **_):
        from captum.attr import IntegratedGradients  # late: captum is slow to import

        self.explainer = IntegratedGradients(model)
        self.baseline, self.n_steps, self.internal_batch_size = baseline, n_steps, internal_batch_size

    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        ibs = None if self.internal_batch_size is None else max(int(self.internal_batch_size), len(x))
        attr, delta = self.explainer.attribute(
            x, baselines=_baseline_for(x.detach(), self.baseline), target=target, n_steps=self.n_steps,
            internal_batch_size=ibs, return_convergence_delta=True)
        return attr.detach().abs().sum(1).float().cpu(), delta.detach().float().cpu().reshape(-1)


class _GradCam:
    """Captum LayerGradCam on ``model.gradcam_layer()``, ReLU'd, upsampled bilinearly."""

    def __init__(self, model: nn.Module, *, size: tuple[int, int], **_):
        from captum.attr import LayerGradCam  # late: captum is slow to import

        if not hasattr(model, "gradcam_layer"):
            raise UserError(f"attribute: method='gradcam' needs a model with gradcam_layer(); "
                            f"{type(model).__name__} has none")
        self.explainer = LayerGradCam(model, model.gradcam_layer())
        self.size = size

    def __call__(self, x: Tensor, target: Tensor) -> tuple[Tensor, None]:
        from captum.attr import LayerAttribution  # late: captum is slow to import

        cam = self.explainer.attribute(x, target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(cam.detach(), self.size, interpolate_mode="bilinear")
        # bilinear upsampling of a non-negative map stays non-negative up to
        # rounding; clamp so every downstream share is well defined.
        return up.sum(1).clamp_min(0).float().cpu(), None


_EXPLAINERS = {"integrated_gradients": _IntegratedGradients, "gradcam": _GradCam}


def attribute(
    model: nn.Module,
    images: Tensor,
    targets=None,
    method: str = "integrated_gradients",
    baseline: str | float | Tensor = "zeros",
    n_steps: int = 32,
    internal_batch_size: int | None = 512,
    batch_size: int = 64,
) -> AttributionResult:
    """Attribution maps for ``images`` [N, C, H, W] in [0, 1].

    targets: None (the predicted class), an int, or [N] class ids.
    method: "integrated_gradients" (Captum IntegratedGradients, Gauss–Legendre with
        ``n_steps``; the ``batch_size × n_steps`` scaled copies are pushed through the
        model ``internal_batch_size`` at a time) or "gradcam" (Captum LayerGradCam on
        ``model.gradcam_layer()``, ReLU'd, upsampled bilinearly with
        ``LayerAttribution.interpolate``).
    batch_size: images per outer chunk (bounds memory for large N).

    The model is put in eval mode with frozen parameters for the duration: no
    parameter ``.grad`` is created or changed.
    """
    images = check_images(images, "attribute")
    if method not in METHODS:
        raise UserError(f"attribute: method={method!r} is not one of {', '.join(METHODS)}")
    if n_steps < 1:
        raise UserError(f"attribute: n_steps={n_steps} must be >= 1")
    n, _, h, w = images.shape
    device = device_of(model)
    tgt = _as_targets(targets, n, model, images, batch_size)
    maps, deltas = [], []
    with frozen_eval(model):
        explain = _EXPLAINERS[method](model, baseline=baseline, n_steps=n_steps,
                                      internal_batch_size=internal_batch_size, size=(h, w))
        for i in range(0, n, batch_size):
            # requires_grad on the input: with frozen weights it is the only leaf that
            # puts the activations in the autograd graph (Grad-CAM needs that too).
            x = images[i : i + batch_size].to(device).requires_grad_(True)
            m, delta = explain(x, tgt[i : i + batch_size].to(device))
            maps.append(m)
            if delta is not None:
                deltas.append(delta)
    return AttributionResult(
        maps=torch.cat(maps) if maps else torch.zeros(0, h, w),
        method=method,
        targets=tgt,
        convergence_delta=torch.cat(deltas) if deltas else None,
    )
