"""Style transfer towards the target domain: image level (FDA, histogram matching) and
feature level (cross-domain MixStyle).

All image-level transforms work on float images in [0, 1], shape [B, C, H, W], before
the model's own normalisation, and are applied to source batches during training only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.methods.adabn import batchnorm_layers

# --------------------------------------------------------------------------- FDA


def fda_transfer(xs: Tensor, xt: Tensor, beta: float) -> Tensor:
    """Fourier domain adaptation (Yang & Soatto, CVPR 2020), without clamping.

    A_s, P_s = |F(x_s)|, ∠F(x_s) per image and channel (2-D FFT over H, W). In
    fftshift(A_s) the centred square of half-width b = ⌊β · min(H, W)⌋ (centre index
    (⌊H/2⌋, ⌊W/2⌋), i.e. frequencies |k_h| ≤ b and |k_w| ≤ b, both ends included as in
    the authors' code) is replaced by the same square of fftshift(A_t); the result is
    F⁻¹(A_mix · exp(i P_s)), real part. The square is symmetric about frequency 0, so
    the spectrum stays Hermitian and the real part is exact. β = 0 returns x_s unchanged
    (by definition: no transfer); for 0 < β·min(H, W) < 1 only the DC term (mean
    intensity) is transferred.

    xs, xt: [B, C, H, W], the same shape — xt[i] is the target image paired with xs[i].
    Returns [B, C, H, W] float32, possibly slightly outside [0, 1].
    """
    if xs.shape != xt.shape:
        raise ValueError(f"fda_transfer: source {tuple(xs.shape)} and target {tuple(xt.shape)} differ")
    if beta < 0:
        raise UserError(f"fda beta={beta}: must be >= 0")
    xs = xs.float()
    if beta == 0:
        return xs.clone()
    H, W = xs.shape[-2:]
    b = math.floor(beta * min(H, W))
    spec_s = torch.fft.fftshift(torch.fft.fft2(xs), dim=(-2, -1))
    amp_t = torch.fft.fftshift(torch.fft.fft2(xt.float()), dim=(-2, -1)).abs()
    amp, phase = spec_s.abs(), spec_s.angle()
    ch, cw = H // 2, W // 2
    h0, h1 = max(ch - b, 0), min(ch + b + 1, H)
    w0, w1 = max(cw - b, 0), min(cw + b + 1, W)
    amp = amp.clone()
    amp[..., h0:h1, w0:w1] = amp_t[..., h0:h1, w0:w1]
    mixed = torch.polar(amp, phase)
    return torch.fft.ifft2(torch.fft.ifftshift(mixed, dim=(-2, -1))).real


class FDA:
    """ImageStyle: each source image takes the low-frequency amplitude of a random image
    of the current target batch (drawn with ``generator``); output clamped to [0, 1]."""

    name = "fda"
    uses_target = True

    def __init__(self, beta: float = 0.01, clamp: bool = True):
        if not 0.0 <= beta <= 0.5:
            raise UserError(f"fda beta={beta}: must be in [0, 0.5] (the paper uses 0.01-0.1)")
        self.beta = float(beta)
        self.clamp = clamp

    def fit(self, target_images: Tensor) -> None:
        """Nothing to learn: FDA pairs each source image with a target image of the batch."""

    def __call__(self, xs: Tensor, xt: Tensor | None, generator: torch.Generator | None = None) -> Tensor:
        if xt is None or len(xt) == 0:
            raise ValueError("FDA needs a target batch xt")
        if xt.shape[1:] != xs.shape[1:]:
            raise UserError(
                f"fda: target images {tuple(xt.shape[1:])} differ from source images {tuple(xs.shape[1:])}"
            )
        gen_device = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(len(xt), (len(xs),), generator=generator, device=gen_device)
        out = fda_transfer(xs, xt[idx.to(xt.device)], self.beta).to(xs.dtype)
        return out.clamp(0.0, 1.0) if self.clamp else out


# --------------------------------------------------------------- histogram matching


def _sorted_quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    """Linear-interpolation quantiles (numpy's default) of rows already sorted: [..., N] → [..., Q]."""
    n = sorted_values.shape[-1]
    pos = levels.to(sorted_values) * (n - 1)
    lo = pos.floor().long().clamp(0, n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    frac = pos - lo
    v_lo = sorted_values[..., lo]
    v_hi = sorted_values[..., hi]
    return v_lo + (v_hi - v_lo) * frac


def _interp_levels(u: Tensor, quantiles: Tensor) -> Tensor:
    """Inverse CDF: evaluate the piecewise-linear quantile function given at Q evenly
    spaced levels (0, 1/(Q−1), …, 1) at u ∈ [0, 1]. u: [R, N], quantiles: [R, Q]."""
    q = quantiles.shape[-1]
    pos = u.clamp(0, 1) * (q - 1)
    lo = pos.floor().long().clamp(0, q - 1)
    hi = (lo + 1).clamp(max=q - 1)
    frac = pos - lo
    return torch.lerp(quantiles.gather(-1, lo), quantiles.gather(-1, hi), frac)


def intensity_quantiles(
    images: Tensor, n_quantiles: int = 256, max_values: int = 1 << 24, seed: int = 0
) -> Tensor:
    """Per-channel intensity quantiles of a set of images pooled together.

    images: [N, C, H, W] (or [C, H, W]) in [0, 1]. Returns [C, n_quantiles] at the
    levels k / (n_quantiles − 1). Above ``max_values`` pixels per channel a fixed random
    subset of that many pixels is used (quantile error ~1/√max_values, negligible).
    """
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.numel() == 0:
        raise UserError(f"histogram matching: target images must be a non-empty [N, C, H, W] tensor, got {tuple(images.shape)}")
    if n_quantiles < 2:
        raise UserError(f"histogram matching n_quantiles={n_quantiles}: must be >= 2")
    values = images.float().transpose(0, 1).reshape(images.shape[1], -1)
    if values.shape[1] > max_values:
        g = torch.Generator().manual_seed(seed)
        keep = torch.randperm(values.shape[1], generator=g)[:max_values].to(values.device)
        values = values[:, keep]
    levels = torch.linspace(0, 1, n_quantiles, device=values.device)
    return _sorted_quantiles(values.sort(dim=1).values, levels)


def match_histograms(x: Tensor, reference_quantiles: Tensor) -> Tensor:
    """Map each image's intensities through its own CDF onto a reference distribution.

    For every image and channel, a pixel of value v gets the mid-rank CDF value
    u = (#{x < v} + #{x ≤ v}) / (2 N) of its own image (ties share one value), and
    is replaced by Q_ref(u), the piecewise-linear interpolation of the reference
    quantiles (given at levels k / (Q − 1)). The output's quantiles therefore follow the
    reference's up to 1/N. Vectorised over the batch (one sort + searchsorted).

    x: [B, C, H, W] or [C, H, W]; reference_quantiles: [C, Q] or [Q] (shared by all
    channels). Returns x's shape, float32, within the reference's range.
    """
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    B, C, H, W = x.shape
    ref = reference_quantiles.float().to(x.device)
    if ref.dim() == 1:
        ref = ref.expand(C, -1)
    if ref.shape[0] != C:
        raise UserError(f"histogram matching: reference has {ref.shape[0]} channels, images have {C}")
    flat = x.float().reshape(B * C, H * W)
    srt = flat.sort(dim=1).values
    below = torch.searchsorted(srt, flat, right=False)
    at_or_below = torch.searchsorted(srt, flat, right=True)
    u = (below + at_or_below).float() / (2.0 * H * W)
    ref_rows = ref.unsqueeze(0).expand(B, C, -1).reshape(B * C, -1).contiguous()
    out = _interp_levels(u, ref_rows).reshape(B, C, H, W)
    return out.squeeze(0) if squeeze else out


class HistogramMatching:
    """ImageStyle: source intensities mapped onto the target's intensity distribution.

    ``fit(target_images)`` stores the pooled per-channel target quantiles; each call maps
    every source image through its own CDF onto them (:func:`match_histograms`). The
    target batch and generator are not used (deterministic).
    """

    name = "histogram_matching"
    uses_target = False
    per_image = True  # each image through its own CDF: the loop restyles the set once (adapt.train)

    def __init__(self, n_quantiles: int = 256):
        self.n_quantiles = int(n_quantiles)
        self.reference: Tensor | None = None  # [C, Q]

    def fit(self, target_images: Tensor) -> None:
        self.reference = intensity_quantiles(target_images, self.n_quantiles)

    def __call__(self, xs: Tensor, xt: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        if self.reference is None:
            raise RuntimeError("HistogramMatching: call fit(target_images) before use")
        return match_histograms(xs, self.reference).to(xs.dtype)


# ------------------------------------------------------------------------ MixStyle


def instance_stats(x: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and std over the spatial dims: [B, C, ...] → two [B, C, 1, …]."""
    dims = tuple(range(2, x.dim()))
    mu = x.mean(dim=dims, keepdim=True)
    sig = (x.var(dim=dims, keepdim=True) + eps).sqrt()
    return mu, sig


class MixStyle:
    """Cross-domain MixStyle (Zhou et al., ICLR 2021, "Domain Generalization with MixStyle").

    At the outputs of ``model.blocks()[i]`` for i in ``layers``, a source feature map x
    with instance statistics (μ_s, σ_s) becomes

        σ_mix · (x − μ_s) / σ_s + μ_mix,   μ_mix = λ μ_s + (1−λ) μ_t,  σ_mix = λ σ_s + (1−λ) σ_t,

    λ ~ Beta(α, α) per sample, (μ_t, σ_t) the statistics of a random image of the current
    target batch at the same layer; applied to a batch with probability p. As in the
    paper, μ_s, σ_s (and the target statistics) carry no gradient.

    Protocol for the loop (one-shot arming, so a target forward is never restyled):

        mixstyle.attach(model)                       # once, before training
        each training step:
            mixstyle.observe_target(model, xt)       # records target stats, arms hooks
            loss, logs = objective.loss(model, xs, ys, xt, p)   # first forward = source
        mixstyle.detach()                            # after training

    ``observe_target`` runs one no-grad forward of xt in the model's current mode and
    restores every BatchNorm's running statistics afterwards, so it leaves no trace.
    The armed statistics are consumed by the next training-mode forward through each
    hooked block (objectives forward the source batch first). In eval mode the hooks do
    nothing and leave the armed statistics in place.
    """

    name = "mixstyle"
    uses_target = True

    def __init__(self, p: float = 0.5, alpha: float = 0.1, layers: tuple[int, ...] = (0, 1), seed: int = 0, eps: float = 1e-6):
        if not 0.0 <= p <= 1.0 or alpha <= 0:
            raise UserError(f"mixstyle: p={p} must be in [0, 1] and alpha={alpha} > 0")
        self.p = float(p)
        self.alpha = float(alpha)
        self.layers = tuple(int(i) for i in layers)
        self.eps = eps
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self._handles: list = []
        self._recording = False
        self._target: dict[int, tuple[Tensor, Tensor]] = {}
        self._mix_this_batch: bool = False

    # -- attach / detach
    def attach(self, model: nn.Module) -> None:
        """Hook the model; called at the start of every epoch, after the loop fixed the
        epoch's torch seed from (seed, epoch) — the draws of this epoch are seeded from it,
        so a resumed run draws what an uninterrupted one does."""
        self.detach()
        self.rng = np.random.default_rng([self.seed, torch.initial_seed()])
        blocks = list(model.blocks())
        bad = [i for i in self.layers if not -len(blocks) <= i < len(blocks)]
        if bad:
            raise UserError(f"mixstyle layers={list(self.layers)}: model has {len(blocks)} blocks")
        for i in self.layers:
            self._handles.append(blocks[i].register_forward_hook(self._make_hook(i)))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._target = {}

    # -- target statistics
    @torch.no_grad()
    def observe_target(self, model: nn.Module, xt: Tensor) -> None:
        """Record the target batch's instance statistics at the hooked layers and arm the
        hooks for the next (source) training forward."""
        if not self._handles:
            raise RuntimeError("MixStyle: attach(model) before observe_target")
        saved = _save_bn_state(model)
        self._target = {}
        self._recording = True
        try:
            model.features(xt) if hasattr(model, "features") else model(xt)
        finally:
            self._recording = False
            _restore_bn_state(saved)
        # One coin for the whole source batch, as in the paper.
        self._mix_this_batch = bool(self.rng.random() < self.p)

    def _make_hook(self, layer: int):
        def hook(module: nn.Module, inputs, output: Tensor):
            if self._recording:
                mu, sig = instance_stats(output.float(), self.eps)
                self._target[layer] = (mu, sig)
                return None
            if not module.training or layer not in self._target:
                return None
            mu_t, sig_t = self._target.pop(layer)  # one-shot: a later target forward is left alone
            if not self._mix_this_batch:
                return None
            return self._mix(output, mu_t, sig_t)

        return hook

    def _mix(self, x: Tensor, mu_t: Tensor, sig_t: Tensor) -> Tensor:
        b = x.shape[0]
        pick = torch.as_tensor(self.rng.integers(0, mu_t.shape[0], size=b), device=x.device)
        lam = torch.as_tensor(self.rng.beta(self.alpha, self.alpha, size=b), dtype=torch.float32, device=x.device)
        lam = lam.view(b, *([1] * (x.dim() - 1)))
        mu_s, sig_s = instance_stats(x.detach().float(), self.eps)
        mu_mix = lam * mu_s + (1 - lam) * mu_t[pick]
        sig_mix = lam * sig_s + (1 - lam) * sig_t[pick]
        return ((x.float() - mu_s) / sig_s * sig_mix + mu_mix).to(x.dtype)


def _save_bn_state(model: nn.Module) -> list[tuple[nn.Module, dict[str, Tensor]]]:
    return [(m, {k: v.clone() for k, v in m.named_buffers(recurse=False)}) for m in batchnorm_layers(model)]


def _restore_bn_state(saved) -> None:
    for m, bufs in saved:
        for k, v in bufs.items():
            getattr(m, k).copy_(v)
