"""Spurious-feature analysis: attributions, region scores, occlusion counterfactuals.

A classifier that moved from hospital A to hospital B may have learned a shortcut —
a laterality marker, burnt-in text, the collimation edge — instead of the anatomy.
This module finds such a shortcut in three steps:

1. **Attribute** (:func:`attribute`): a per-pixel map ``|a(x)|`` of how much each pixel
   drove the predicted logit, by Integrated Gradients (Sundararajan et al., ICML 2017)

       IG_i(x) = (x_i − x'_i) · ∫₀¹ ∂F(x' + α(x − x'))/∂x_i dα     (Riemann/Gauss–Legendre, n_steps)

   with completeness ``Σ_i IG_i = F(x) − F(x')`` (the *convergence delta* measures how far
   the quadrature is from it), or by Grad-CAM (Selvaraju et al., ICCV 2017) on the last
   conv block, ``ReLU(Σ_k mean_uv(∂y/∂A_k) · A_k)`` upsampled to the input size.
2. **Score** where the attribution mass sits, as shares of the per-image total mass:
   in the image border band, outside a region-of-interest mask, inside given boxes;
   the mean map per (domain, class) and its hottest window.
3. **Confirm** with a counterfactual (Zech et al., PLoS Med 2018 used the same idea
   for hospital tokens): occlude the hot window with each image's mean intensity and
   count the predictions that change. Attention alone is not reliance; a region is
   called spurious only when it sits where the anatomy is not, carries a
   disproportionate share of the attribution, AND hiding it changes decisions.

Images are float32 in [0, 1], ``[N, C, H, W]``; normalisation lives inside the model,
so occlusion and attribution work in plain pixel space. Maps are ``[N, H, W]``
float32, non-negative. Boxes are ``(x0, y0, x1, y1)`` pixel coordinates with
exclusive ends (``map[y0:y1, x0:x1]``), the convention of the phantom's marker boxes;
a row of ``-1`` means "no box".
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adapt.errors import UserError
from diagnostics.subsample import stratified_indices

__all__ = [
    "AttributionResult",
    "OcclusionResult",
    "RegionShare",
    "RegionScore",
    "SpuriousResult",
    "DEFAULT_THRESHOLDS",
    "attribute",
    "border_mask",
    "border_share",
    "box_iou",
    "box_mask",
    "box_share",
    "compare_reliance",
    "hottest_region",
    "map_correlation",
    "mean_maps",
    "occlusion_flips",
    "roi_hull",
    "roi_outside_share",
    "spurious_analysis",
    "spurious_verdict",
    "stratified_subsample",
    "predict",
    "occlude",
    "frozen_eval",
    "top_attributed",
]

Box = tuple[int, int, int, int]
METHODS = ("integrated_gradients", "gradcam")


# =========================================================================== attribution
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


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with parameters that do not require grad, restored on exit.

    Attribution needs gradients w.r.t. the *input* only; freezing the parameters stops
    ``.grad`` from accumulating on the model (which a training loop could otherwise
    pick up) and saves the weight-gradient work in every backward pass.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _check_images(images: Tensor, where: str) -> Tensor:
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise UserError(f"{where}: expected images [N, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise UserError(f"{where}: expected float images in [0, 1], got dtype {images.dtype}")
    return images.float()


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted class ids [N] int64 (model in eval mode, restored afterwards)."""
    images = _check_images(images, "predict")
    device = _device_of(model)
    with frozen_eval(model):
        out = [model(images[i : i + batch_size].to(device)).argmax(1).cpu()
               for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


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
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam

    images = _check_images(images, "attribute")
    if method not in METHODS:
        raise UserError(f"attribute: method={method!r} is not one of {', '.join(METHODS)}")
    if n_steps < 1:
        raise UserError(f"attribute: n_steps={n_steps} must be >= 1")
    n, _, h, w = images.shape
    device = _device_of(model)
    tgt = _as_targets(targets, n, model, images, batch_size)
    maps, deltas = [], []
    with frozen_eval(model):
        if method == "integrated_gradients":
            explainer = IntegratedGradients(model)
        else:
            if not hasattr(model, "gradcam_layer"):
                raise UserError(f"attribute: method='gradcam' needs a model with gradcam_layer(); "
                                f"{type(model).__name__} has none")
            explainer = LayerGradCam(model, model.gradcam_layer())
        for i in range(0, n, batch_size):
            # requires_grad on the input: with frozen weights it is the only leaf that
            # puts the activations in the autograd graph (Grad-CAM needs that too).
            x = images[i : i + batch_size].to(device).requires_grad_(True)
            t = tgt[i : i + batch_size].to(device)
            if method == "integrated_gradients":
                ibs = None if internal_batch_size is None else max(int(internal_batch_size), len(x))
                attr, delta = explainer.attribute(
                    x, baselines=_baseline_for(x.detach(), baseline), target=t, n_steps=n_steps,
                    internal_batch_size=ibs, return_convergence_delta=True)
                maps.append(attr.detach().abs().sum(1).float().cpu())
                deltas.append(delta.detach().float().cpu().reshape(-1))
            else:
                cam = explainer.attribute(x, target=t, relu_attributions=True)
                up = LayerAttribution.interpolate(cam.detach(), (h, w), interpolate_mode="bilinear")
                # bilinear upsampling of a non-negative map stays non-negative up to
                # rounding; clamp so every downstream share is well defined.
                maps.append(up.sum(1).clamp_min(0).float().cpu())
    empty = torch.zeros(0, h, w)
    return AttributionResult(
        maps=torch.cat(maps) if maps else empty,
        method=method,
        targets=tgt,
        convergence_delta=torch.cat(deltas) if deltas else None,
    )


# =========================================================================== region scores
class RegionShare(NamedTuple):
    """Share of each map's total |attribution| inside a region, and the region's share
    of the image area. ``share`` [N] (NaN where a map is all zero or the sample has no
    region); ``area_share`` a float (same region for all) or [N]."""

    share: np.ndarray
    area_share: float | np.ndarray

    @property
    def mean_share(self) -> float:
        s = self.share[np.isfinite(self.share)]
        return float(s.mean()) if s.size else float("nan")

    @property
    def ratio(self) -> float:
        """mean share / mean area share: 1 = attribution spread evenly, > 1 means the
        region gets more than its area's worth (over-attention)."""
        area = np.asarray(self.area_share, dtype=np.float64)
        if area.ndim:
            area = area[np.isfinite(self.share)]
        a = float(area.mean()) if area.size else float("nan")
        return self.mean_share / a if a > 0 else float("nan")


def _maps_np(maps) -> np.ndarray:
    m = maps.detach().cpu().numpy() if isinstance(maps, Tensor) else np.asarray(maps)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise UserError(f"attribution maps: expected [N, H, W], got shape {m.shape}")
    return m.astype(np.float64, copy=False)


def _shares(maps: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ map·weight / Σ map per sample; NaN for an all-zero map (no evidence either way)."""
    total = maps.sum(axis=(1, 2))
    inside = (maps * weights).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def band_width(h: int, w: int, band_frac: float | None = 0.125, band_px: int | None = None) -> int:
    """Border band width in pixels: ``band_px``, else ``max(1, round(band_frac·min(H, W)))``."""
    if band_px is None:
        if band_frac is None or not 0 < band_frac < 0.5:
            raise UserError(f"border band: band_frac={band_frac} must be in (0, 0.5)")
        band_px = max(1, round(band_frac * min(h, w)))
    band_px = int(band_px)
    if not 1 <= band_px < (min(h, w) + 1) // 2:
        raise UserError(f"border band: band_px={band_px} must be in [1, {(min(h, w) + 1) // 2 - 1}] "
                        f"for a {h}x{w} image")
    return band_px


def border_mask(h: int, w: int, band_frac: float | None = 0.125, band_px: int | None = None) -> np.ndarray:
    """[H, W] bool, True in the band of width ``band_width(...)`` along the four edges."""
    b = band_width(h, w, band_frac, band_px)
    m = np.ones((h, w), dtype=bool)
    m[b : h - b, b : w - b] = False
    return m


def border_share(maps, band_frac: float | None = 0.125, band_px: int | None = None) -> RegionShare:
    """Share of |attribution| in the border band per sample, and the band's area share.

    ``share / area_share > 1`` means the model looks at the edges (markers, text,
    collimation) more than their area warrants.
    """
    m = _maps_np(maps)
    band = border_mask(m.shape[1], m.shape[2], band_frac, band_px)
    return RegionShare(_shares(m, band[None].astype(np.float64)), float(band.mean()))


def _masks_np(masks, shape: tuple[int, int, int]) -> np.ndarray:
    k = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if k.ndim == 2:
        k = np.broadcast_to(k, shape)
    if k.shape != shape:
        raise UserError(f"ROI masks: shape {k.shape} does not match maps {shape}")
    return (k > 0.5).astype(np.float64)


def roi_outside_share(maps, masks) -> RegionShare:
    """Share of |attribution| outside the region-of-interest mask ([H, W] or [N, H, W],
    1 = inside), and the outside area's share per sample."""
    m = _maps_np(maps)
    outside = 1.0 - _masks_np(masks, m.shape)
    return RegionShare(_shares(m, outside), outside.mean(axis=(1, 2)))


def box_mask(h: int, w: int, box: Sequence[int]) -> np.ndarray:
    """[H, W] bool for box (x0, y0, x1, y1), ends exclusive, clipped to the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    m = np.zeros((h, w), dtype=bool)
    m[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = True
    return m


def _boxes_np(boxes, n: int) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.int64)
    if b.ndim == 1:
        b = np.broadcast_to(b, (n, 4))
    if b.shape != (n, 4):
        raise UserError(f"boxes: expected [4] or [{n}, 4] (x0, y0, x1, y1), got shape {b.shape}")
    return b


def _valid_box(b: np.ndarray) -> bool:
    return bool((b >= 0).all() and b[2] > b[0] and b[3] > b[1])


def box_share(maps, boxes) -> RegionShare:
    """Share of |attribution| inside a box per sample (one box for all, or [N, 4]).
    Samples whose box row is -1 (no box) get NaN share and NaN area."""
    m = _maps_np(maps)
    n, h, w = m.shape
    b = _boxes_np(boxes, n)
    share = np.full(n, np.nan)
    area = np.full(n, np.nan)
    for i in range(n):
        if _valid_box(b[i]):
            k = box_mask(h, w, b[i])
            share[i] = _shares(m[i : i + 1], k[None].astype(np.float64))[0]
            area[i] = k.mean()
    if b.ndim == 2 and n and (b == b[0]).all() and np.isfinite(area[0]):
        return RegionShare(share, float(area[0]))
    return RegionShare(share, area)


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes, ends exclusive."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mean_maps(maps, labels, domains=None, normalize: bool = True) -> dict[tuple[str, int], np.ndarray]:
    """Mean attribution map per (domain, class): ``{(domain, class): [H, W]}``.

    With ``normalize`` each map is first scaled to unit mass, so every image counts
    equally and a few high-confidence images do not dominate the picture; the mean
    map then reads as "where the attribution mass goes, on average". ``domains``: None
    (one domain, named ""), a single name, or [N] names. Also ``(domain, -1)``: all
    classes of that domain together.
    """
    m = _maps_np(maps)
    n = len(m)
    lab = np.asarray(labels).reshape(-1)
    if len(lab) != n:
        raise UserError(f"mean_maps: {len(lab)} labels for {n} maps")
    dom = np.asarray([""] * n if domains is None else
                     [domains] * n if isinstance(domains, str) else list(domains), dtype=object)
    if len(dom) != n:
        raise UserError(f"mean_maps: {len(dom)} domain names for {n} maps")
    if normalize:
        tot = m.sum(axis=(1, 2), keepdims=True)
        m = np.divide(m, tot, out=np.zeros_like(m), where=tot > 0)
    out: dict[tuple[str, int], np.ndarray] = {}
    for d in dict.fromkeys(dom.tolist()):
        sel_d = dom == d
        out[(d, -1)] = m[sel_d].mean(0)
        for c in sorted(set(lab[sel_d].tolist())):
            out[(d, int(c))] = m[sel_d & (lab == c)].mean(0)
    return out


def map_correlation(a, b) -> float:
    """Pearson correlation between two maps of the same shape (e.g. source vs target
    mean maps, or before vs after adaptation): 1 = same pattern up to scale.
    NaN when either map is constant."""
    x = np.asarray(a.detach().cpu() if isinstance(a, Tensor) else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu() if isinstance(b, Tensor) else b, dtype=np.float64)
    if x.shape != y.shape:
        raise UserError(f"map_correlation: shapes {x.shape} and {y.shape} differ")
    x = x.ravel() - x.mean()
    y = y.ravel() - y.mean()
    den = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / den if den > 0 else float("nan")


def hottest_region(mean_map, size: int | tuple[int, int], within=None,
                   min_fraction: float = 0.5) -> Box | None:
    """The ``size`` window (int, or (height, width)) holding the most attribution mass,
    as a box (x0, y0, x1, y1), ends exclusive. Window sums for every position come
    from one summed-area table, O(H·W). Ties go to the first window in raster order.

    within: optional [H, W] bool zone; only windows with ≥ ``min_fraction`` of their
    pixels in it compete (e.g. the border band, or outside the anatomy). None when no
    window qualifies.
    """
    m = np.asarray(mean_map.detach().cpu() if isinstance(mean_map, Tensor) else mean_map, dtype=np.float64)
    if m.ndim != 2:
        raise UserError(f"hottest_region: expected one [H, W] map, got shape {m.shape}")
    sh, sw = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    h, w = m.shape
    if not (1 <= sh <= h and 1 <= sw <= w):
        raise UserError(f"hottest_region: window {sh}x{sw} does not fit a {h}x{w} map")
    win = _window_sums(m, sh, sw)
    if within is not None:
        zone = np.asarray(within, dtype=np.float64)
        if zone.shape != m.shape:
            raise UserError(f"hottest_region: zone shape {zone.shape} does not match map {m.shape}")
        ok = _window_sums(zone, sh, sw) >= min_fraction * sh * sw - 1e-9
        if not ok.any():
            return None
        win = np.where(ok, win, -np.inf)
    y0, x0 = np.unravel_index(int(np.argmax(win)), win.shape)
    return (int(x0), int(y0), int(x0) + sw, int(y0) + sh)


def _window_sums(m: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """[H−sh+1, W−sw+1] sums of every sh×sw window (summed-area table)."""
    sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    return sat[sh:, sw:] - sat[:-sh, sw:] - sat[sh:, :-sw] + sat[:-sh, :-sw]


def top_attributed(maps, labels, region, k: int = 4, indices=None) -> dict[int, list[int]]:
    """For the report gallery: per class, the ``k`` samples with the largest share of
    their attribution inside ``region`` (a box, [N, 4] boxes, or an [H, W] bool mask).
    Returns ``{class: [index, ...]}``, mapped through ``indices`` when given (so the
    ids refer to the original dataset, not the analysed subsample)."""
    m = _maps_np(maps)
    r = np.asarray(region)
    if r.ndim == 2 and r.shape == m.shape[1:]:
        share = _shares(m, r[None].astype(np.float64))
    else:
        share = box_share(m, region).share
    lab = np.asarray(labels).reshape(-1)
    ids = np.arange(len(m)) if indices is None else np.asarray(indices)
    out = {}
    for c in sorted(set(lab.tolist())):
        sel = np.flatnonzero(lab == c)
        s = np.nan_to_num(share[sel], nan=-1.0)
        order = sel[np.argsort(-s, kind="stable")][:k]
        out[int(c)] = [int(ids[i]) for i in order]
    return out


# =========================================================================== occlusion
@dataclass
class OcclusionResult:
    """Counterfactual: predictions with a region replaced by ``fill``.

    flipped_share: fraction of the n images whose predicted class changed.
    flipped_indices: positions (in the images given) that changed.
    accuracy_before / accuracy_after: when labels were given (labels −1 ignored).
    """

    flipped_share: float
    n: int
    flipped_indices: list[int]
    accuracy_before: float | None = None
    accuracy_after: float | None = None

    def to_dict(self, max_indices: int = 50) -> dict:
        return {
            "flipped_share": round(self.flipped_share, 4),
            "n": self.n,
            "n_flipped": len(self.flipped_indices),
            "flipped_indices": self.flipped_indices[:max_indices],
            "accuracy_before": None if self.accuracy_before is None else round(self.accuracy_before, 4),
            "accuracy_after": None if self.accuracy_after is None else round(self.accuracy_after, 4),
        }


def _region_weights(region, n: int, h: int, w: int) -> Tensor:
    """[N, 1, H, W] float {0, 1} from a box, [N, 4] boxes, or an [H, W] / [N, H, W] mask."""
    r = region.detach().cpu().numpy() if isinstance(region, Tensor) else np.asarray(region)
    if r.ndim == 2 and r.shape == (h, w):
        k = np.broadcast_to(r > 0.5, (n, h, w))
    elif r.ndim == 3 and r.shape == (n, h, w):
        k = r > 0.5
    elif r.shape[-1] == 4 and r.ndim in (1, 2):
        b = _boxes_np(r, n)
        k = np.stack([box_mask(h, w, bi) if _valid_box(bi) else np.zeros((h, w), bool) for bi in b]) \
            if n else np.zeros((0, h, w), bool)
    else:
        raise UserError(f"occlusion region: expected a box, [N, 4] boxes or an [H, W]/[N, H, W] mask, "
                        f"got shape {r.shape}")
    return torch.from_numpy(np.ascontiguousarray(k, dtype=np.float32)).unsqueeze(1)


def occlude(images: Tensor, region, fill: str | float = "image_mean") -> Tensor:
    """Images with ``region`` replaced by ``fill``: "image_mean" (each image's own mean
    per channel — removes the content without adding an edge as bright as black or
    white would), "zeros", or a number."""
    images = _check_images(images, "occlude")
    n, _, h, w = images.shape
    k = _region_weights(region, n, h, w).to(images.device)
    if fill == "image_mean":
        value = images.mean(dim=(2, 3), keepdim=True)
    elif fill == "zeros":
        value = torch.zeros(1, device=images.device)
    elif isinstance(fill, (int, float)) and not isinstance(fill, bool):
        value = torch.full((1,), float(fill), device=images.device)
    else:
        raise UserError(f"occlude: fill={fill!r} is not 'image_mean', 'zeros' or a number")
    return images * (1 - k) + value * k


def occlusion_flips(model: nn.Module, images: Tensor, region, fill: str | float = "image_mean",
                    labels=None, batch_size: int = 256,
                    predictions: Tensor | None = None) -> OcclusionResult:
    """Occlude ``region`` (box, [N, 4] boxes — rows of −1 leave that image untouched — or
    mask) in every image and count the predictions that change. ``predictions``: the
    un-occluded predictions, when already known (saves one pass)."""
    images = _check_images(images, "occlusion_flips")
    before = predict(model, images, batch_size) if predictions is None else torch.as_tensor(predictions).long()
    after = predict(model, occlude(images, region, fill), batch_size)
    flipped = (before != after).nonzero().flatten().tolist()
    n = len(images)
    acc_b = acc_a = None
    if labels is not None:
        lab = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        known = lab >= 0
        if known.any():
            acc_b = float((before[known] == lab[known]).float().mean())
            acc_a = float((after[known] == lab[known]).float().mean())
    return OcclusionResult(len(flipped) / n if n else float("nan"), n, flipped, acc_b, acc_a)


# =========================================================================== the analysis
@dataclass
class RegionScore:
    """One candidate region of :func:`spurious_analysis`.

    source: which mean map it is the hottest window of ("all" or "class <c>").
    share / area_share: mean share of |attribution| in the box over the images of that
        source (all images, or that class's), and the box's share of the image area.
    in_border / outside_roi: fraction of the box's pixels in the border band / outside
        the convex hull of the mean ROI mask (:func:`roi_hull`; None without masks).
    occlusion: predictions over *all* analysed images with the box occluded.
    """

    box: Box
    source: str
    share: float
    area_share: float
    in_border: float
    outside_roi: float | None
    occlusion: OcclusionResult

    @property
    def ratio(self) -> float:
        return self.share / self.area_share if self.area_share > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"box": list(self.box), "source": self.source, "share": _r(self.share),
                "area_share": _r(self.area_share), "ratio": _r(self.ratio, 3),
                "in_border": _r(self.in_border, 3), "outside_roi": _r(self.outside_roi, 3),
                "occlusion": self.occlusion.to_dict()}


def _r(x, nd: int = 4):
    """Round for JSON; NaN/inf/None -> None."""
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


@dataclass
class SpuriousResult:
    """Spurious-feature analysis of one model on one domain (see :func:`spurious_analysis`).

    Shares are means over the analysed images of "fraction of each image's |attribution|
    inside the region"; ratios divide that by the region's area fraction (1 = fair share).
    ``mean_map``/``class_maps`` are full-resolution numpy (for figures); ``to_dict``
    keeps them downsampled to ``map_resolution`` and scaled to max 1.
    """

    domain: str
    method: str
    n: int
    image_size: tuple[int, int]
    indices: list[int]                       # analysed images (positions in the input)
    labels: list[int]
    predictions: list[int]
    maps: Tensor                             # [n, H, W], not serialised by default
    mean_map: np.ndarray                     # [H, W], all analysed images, unit-mass maps
    class_maps: dict[int, np.ndarray]        # class -> [H, W]
    hot: RegionScore                         # hottest window of the overall mean map
    candidates: list[RegionScore]            # hot + hottest suspect-zone windows (distinct)
    control_flips: float                     # mean flips for same-size boxes away from them
    border_px: int
    border_share: float
    border_area_share: float
    border_occlusion: OcclusionResult
    roi_outside_share: float | None = None
    roi_outside_area_share: float | None = None
    known_box_share: float | None = None
    known_box_area_share: float | None = None
    known_box_occlusion: OcclusionResult | None = None
    hot_known_iou: float | None = None       # best IoU of any candidate with any known box
    reference_box: Box | None = None
    reference_share: float | None = None
    reference_occlusion: OcclusionResult | None = None
    convergence_delta: float | None = None
    gallery: dict[int, list[int]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def hot_box(self) -> Box:
        return self.hot.box

    @property
    def border_ratio(self) -> float:
        return self.border_share / self.border_area_share if self.border_area_share > 0 else float("nan")

    def to_dict(self, map_resolution: int = 16, include_maps: bool = False) -> dict:
        def small(m: np.ndarray) -> list:
            t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
            t = F.adaptive_avg_pool2d(t, min(map_resolution, m.shape[0], m.shape[1]))[0, 0]
            t = t / t.max() if t.max() > 0 else t     # relative scale: a picture, not a measure
            return np.round(t.numpy().astype(np.float64), 3).tolist()

        d = {
            "domain": self.domain, "method": self.method, "n": self.n,
            "image_size": list(self.image_size), "indices": self.indices,
            "hot_region": self.hot.to_dict(),
            "candidates": [c.to_dict() for c in self.candidates],
            "control_flipped_share": _r(self.control_flips),
            "border": {"band_px": self.border_px, "share": _r(self.border_share),
                       "area_share": _r(self.border_area_share), "ratio": _r(self.border_ratio, 3),
                       "occlusion": self.border_occlusion.to_dict()},
            "roi_outside": None if self.roi_outside_share is None else {
                "share": _r(self.roi_outside_share), "area_share": _r(self.roi_outside_area_share),
                "ratio": _r(self.roi_outside_share / self.roi_outside_area_share
                            if self.roi_outside_area_share else None, 3)},
            "known_boxes": None if self.known_box_share is None else {
                "share": _r(self.known_box_share), "area_share": _r(self.known_box_area_share),
                "ratio": _r(self.known_box_share / self.known_box_area_share
                            if self.known_box_area_share else None, 3),
                "best_candidate_iou": _r(self.hot_known_iou, 3),
                "occlusion": None if self.known_box_occlusion is None else self.known_box_occlusion.to_dict()},
            "reference": None if self.reference_box is None else {
                "box": list(self.reference_box), "share": _r(self.reference_share),
                "occlusion": None if self.reference_occlusion is None else self.reference_occlusion.to_dict()},
            "convergence_delta": _r(self.convergence_delta, 6),
            "mean_map": small(self.mean_map),
            "class_maps": {str(c): small(m) for c, m in self.class_maps.items()},
            "gallery": {str(c): v for c, v in self.gallery.items()},
            "thresholds": self.thresholds,
            "verdict": self.verdict,
            "seconds": _r(self.seconds, 2),
        }
        if include_maps:
            d["maps"] = np.round(self.maps.numpy().astype(np.float64), 5).tolist()
        return d


def stratified_subsample(labels: np.ndarray, max_samples: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` items, classes in proportion (largest
    remainder), drawn with a fixed seed. All indices when there are few enough."""
    return stratified_indices(labels, max_samples, seed, what="spurious_analysis: max_samples")


def roi_hull(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool: the convex hull of a region-of-interest mask (pixel squares).

    The location test asks whether a hot window lies outside the *anatomy*, and an ROI
    such as two lung fields leaves the mediastinum and heart between them outside the
    mask although they are anatomy; artefacts (markers, text, collimator edges) sit
    outside the hull. The window-level share score (:func:`roi_outside_share`) keeps
    the mask itself. An empty or degenerate mask is returned unchanged.
    """
    from scipy.spatial import Delaunay, QhullError

    mask = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return mask
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    try:
        tri = Delaunay(corners.astype(np.float64))
    except QhullError:
        return mask
    h, w = mask.shape
    gy, gx = np.mgrid[0:h, 0:w]
    centres = np.stack([gx.ravel() + 0.5, gy.ravel() + 0.5], 1)
    return (tri.find_simplex(centres) >= 0).reshape(h, w) | mask


def _control_boxes(h: int, w: int, size: tuple[int, int], avoid: list[Box], band: np.ndarray,
                   k: int, rng: np.random.Generator) -> list[Box]:
    """Up to k same-size boxes away from the candidates and the border band: the flips
    their occlusion causes are the base rate of hiding *any* patch of this size."""
    sh, sw = size
    out: list[Box] = []
    for _ in range(50 * k):
        if len(out) == k:
            break
        y0 = int(rng.integers(0, h - sh + 1))
        x0 = int(rng.integers(0, w - sw + 1))
        b = (x0, y0, x0 + sw, y0 + sh)
        if all(box_iou(b, a) == 0 for a in avoid) and not band[y0 : y0 + sh, x0 : x0 + sw].any():
            out.append(b)
    return out


#: Verdict thresholds of :func:`spurious_analysis` (override any key via ``thresholds=``).
DEFAULT_THRESHOLDS = {
    # The candidate window must hold at least this multiple of its area's fair share of
    # the attribution (an 8x8 window on 64x64 is 1.6% of the area: 2.5x means ≥ 3.9%).
    # A shortcut present in only part of the images is diluted in the mean, hence modest.
    "share_ratio": 2.5,
    # Occluding it must flip at least this fraction of all predictions ...
    "flip_share": 0.05,
    # ... and at least this multiple of the flips that same-size patches elsewhere cause
    # (hiding any patch changes some borderline predictions).
    "flip_over_control": 2.0,
    # A window counts as "in the border" / "outside the ROI" when at least this
    # fraction of its pixels is there.
    "location_fraction": 0.5,
    # The whole border band: attention ratio that earns a warning (and, with
    # flip_over_control x the patch base rate of flips, a fail).
    "border_ratio": 2.0,
}


def spurious_analysis(
    model: nn.Module,
    images: Tensor,
    labels,
    domain_name: str,
    *,
    masks=None,
    known_boxes=None,
    reference_box: Sequence[int] | None = None,
    method: str = "integrated_gradients",
    baseline: str | float | Tensor = "mean",
    n_steps: int = 32,
    max_samples: int = 200,
    band_frac: float = 0.125,
    hot_size: int | tuple[int, int] | None = None,
    thresholds: dict[str, float] | None = None,
    gallery_k: int = 4,
    n_control: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    internal_batch_size: int | None = 512,
) -> SpuriousResult:
    """Does the model rely on something that is not the anatomy, on this domain?

    images [N, C, H, W] in [0, 1]; labels [N] (−1 = unknown; used for stratifying the
    subsample of ≤ ``max_samples``, the per-class maps and accuracy under occlusion —
    the attributed class is always the *predicted* one: we explain the decision made).
    masks: optional ROI masks ([H, W] or [N, H, W], 1 = anatomy). known_boxes: optional
    [N, 4] boxes of a known artefact (the phantom's marker; −1 rows = none), scored and
    occluded on the images that have one. reference_box: a box to score and occlude too,
    e.g. the hot box of the model *before* adaptation, so the after-model is tested on it.
    hot_size: window side (default ⌈side/8⌉). baseline: IG reference, default "mean"
    (each image's flat mean): a black baseline credits IG ∝ x·∂F/∂x to bright pixels,
    so dense anatomy (heart, spine) would dominate every map whether used or not.

    Candidates: the hottest window of the mean map of all images, and the hottest
    window inside the suspect zone (border band ∪ outside the ROI hull) of the overall
    and of each class's mean map.
    Verdict (thresholds: :data:`DEFAULT_THRESHOLDS`):
      * **fail** (flagged) when a candidate lies in the border band or outside the ROI,
        holds ≥ ``share_ratio``× its area's share of the attribution, and occluding it
        flips ≥ ``flip_share`` of the predictions and ≥ ``flip_over_control``× the flips
        of same-size windows elsewhere; or when the whole border band is over-attended
        (≥ ``border_ratio``) and occluding it flips that many.
      * **warn** when the attention criteria hold but occlusion barely changes the
        predictions (attention without reliance), or the border is over-attended.
      * **ok** otherwise.
    """
    import time

    t0 = time.perf_counter()
    images = _check_images(images, "spurious_analysis")
    n_all, _, h, w = images.shape
    lab_all = np.asarray(labels).reshape(-1)
    if len(lab_all) != n_all:
        raise UserError(f"spurious_analysis: {len(lab_all)} labels for {n_all} images of {domain_name!r}")
    if n_all == 0:
        raise UserError(f"spurious_analysis: domain {domain_name!r} has no images")
    th = dict(DEFAULT_THRESHOLDS)
    for key, value in (thresholds or {}).items():
        if key not in th:
            raise UserError(f"spurious_analysis: unknown threshold {key!r} (known: {', '.join(th)})")
        th[key] = float(value)

    idx = stratified_subsample(lab_all, max_samples, seed)
    sel = torch.from_numpy(idx)
    x = images[sel]
    lab = lab_all[idx]
    m_sel = None
    if masks is not None:
        mk = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
        m_sel = mk if mk.ndim == 2 else mk[idx]

    preds = predict(model, x, batch_size=256)
    att = attribute(model, x, preds, method=method, baseline=baseline, n_steps=n_steps,
                    internal_batch_size=internal_batch_size, batch_size=batch_size)
    maps = att.maps
    mm = mean_maps(maps, lab, domain_name)
    mean_map = mm[(domain_name, -1)]
    class_maps = {c: v for (d, c), v in mm.items() if c != -1}

    side = hot_size if hot_size is not None else max(1, math.ceil(min(h, w) / 8))
    size = (side, side) if isinstance(side, (int, np.integer)) else (int(side[0]), int(side[1]))
    b_px = band_width(h, w, band_frac)
    band = border_mask(h, w, band_px=b_px)
    mean_roi = None if m_sel is None else roi_hull(_masks_np(m_sel, tuple(maps.shape)).mean(0) > 0.5)

    def score(box: Box, source: str, rows: np.ndarray) -> RegionScore:
        k = box_mask(h, w, box)
        rs = box_share(maps[torch.from_numpy(rows)], box)
        return RegionScore(
            box=box, source=source, share=rs.mean_share, area_share=float(rs.area_share),
            in_border=float(band[k].mean()),
            outside_roi=None if mean_roi is None else float((~mean_roi)[k].mean()),
            occlusion=occlusion_flips(model, x, box, labels=lab, predictions=preds))

    # Candidates: the hottest window overall, and the hottest window in the suspect
    # zone (border band, or outside the anatomy) of the overall and per-class mean
    # maps — a marker in a corner is rarely the hottest spot of the whole image, and a
    # shortcut tied to one class shows most clearly in that class's map.
    suspect_zone = band if mean_roi is None else band | ~mean_roi
    everyone = np.arange(len(idx))
    hot = score(hottest_region(mean_map, size), "all", everyone)
    candidates = [hot]
    for c, cmap in [("all", mean_map), *class_maps.items()]:
        box = hottest_region(cmap, size, within=suspect_zone, min_fraction=th["location_fraction"])
        source = "all" if c == "all" else f"class {c}"
        # The same window scored on one class's images is a different candidate: a
        # shortcut tied to that class concentrates there (the marker on site A holds
        # 2x its area share over all images but 3x over the opacity images).
        if box is not None and all((box, source) != (other.box, other.source) for other in candidates):
            rows = everyone if c == "all" else np.flatnonzero(lab == c)
            candidates.append(score(box, source, rows))

    bs = border_share(maps, band_px=b_px)
    occ_border = occlusion_flips(model, x, band, labels=lab, predictions=preds)
    rng = np.random.default_rng(seed + 1)
    controls = _control_boxes(h, w, size, [c.box for c in candidates], band, n_control, rng)
    control = float(np.mean([occlusion_flips(model, x, b, predictions=preds).flipped_share
                             for b in controls])) if controls else float("nan")

    roi_share = roi_area = None
    if m_sel is not None:
        ro = roi_outside_share(maps, m_sel)
        roi_share, roi_area = ro.mean_share, float(np.mean(ro.area_share))

    kb_share = kb_area = kb_occ = kb_iou = None
    if known_boxes is not None:
        kb = _boxes_np(known_boxes, n_all)[idx]
        has = np.array([_valid_box(b) for b in kb])
        if has.any():
            hs = torch.from_numpy(has)
            ks = box_share(maps[hs], kb[has])
            kb_share, kb_area = ks.mean_share, float(np.nanmean(np.asarray(ks.area_share, dtype=float)))
            kb_occ = occlusion_flips(model, x[hs], kb[has], labels=lab[has], predictions=preds[hs])
            distinct = {tuple(int(v) for v in b) for b in kb[has]}
            kb_iou = max(box_iou(c.box, b) for c in candidates for b in distinct)

    ref = None if reference_box is None else tuple(int(v) for v in reference_box)
    ref_share = ref_occ = None
    if ref is not None:
        ref_share = box_share(maps, ref).mean_share
        ref_occ = occlusion_flips(model, x, ref, labels=lab, predictions=preds)

    result = SpuriousResult(
        domain=domain_name, method=method, n=len(idx), image_size=(h, w),
        indices=[int(i) for i in idx], labels=[int(v) for v in lab], predictions=preds.tolist(),
        maps=maps, mean_map=mean_map, class_maps=class_maps,
        hot=hot, candidates=candidates, control_flips=control,
        border_px=b_px, border_share=bs.mean_share, border_area_share=float(bs.area_share),
        border_occlusion=occ_border, roi_outside_share=roi_share, roi_outside_area_share=roi_area,
        known_box_share=kb_share, known_box_area_share=kb_area, known_box_occlusion=kb_occ,
        hot_known_iou=kb_iou, reference_box=ref, reference_share=ref_share, reference_occlusion=ref_occ,
        convergence_delta=att.mean_abs_delta, thresholds=th,
    )
    result.verdict = spurious_verdict(result, th)
    flagged_box = result.verdict["region"] if isinstance(result.verdict["region"], list) else hot.box
    result.gallery = top_attributed(maps, lab, flagged_box if result.verdict["region"] != "border" else band,
                                    k=gallery_k, indices=idx)
    result.seconds = time.perf_counter() - t0
    return result


def _where(c: RegionScore, loc: float) -> list[str]:
    out = []
    if c.in_border >= loc:
        out.append("in the image border")
    if c.outside_roi is not None and c.outside_roi >= loc:
        out.append("outside the region of interest")
    return out


def spurious_verdict(r: SpuriousResult, th: dict[str, float]) -> dict:
    """The verdict of :func:`spurious_analysis` from its numbers (rules there)."""
    control = r.control_flips if np.isfinite(r.control_flips) else 0.0

    def relied(flips: float) -> bool:
        return flips >= th["flip_share"] and flips >= th["flip_over_control"] * control

    def entry(level: str, region, share: float, flips: float, reason: str) -> dict:
        return {"level": level, "flagged": level == "fail", "region": region,
                "share": _r(share), "flips": _r(flips), "reason": reason}

    def describe(c: RegionScore) -> str:
        return ("the hottest region{} (x0, y0, x1, y1) = ({}, {}, {}, {})"
                .format("" if c.source == "all" else f" for {c.source}", *c.box))

    suspects = [c for c in r.candidates
                if _where(c, th["location_fraction"]) and c.ratio >= th["share_ratio"]]
    for c in suspects:
        f = c.occlusion.flipped_share
        if relied(f):
            return entry("fail", list(c.box), c.share, f,
                         f"On {r.domain}, {describe(c)} lies {' and '.join(_where(c, th['location_fraction']))}, "
                         f"holds {c.share:.0%} of the attribution ({c.ratio:.1f}x its area share), and hiding "
                         f"it changes {f:.0%} of the predictions (same-size patches elsewhere: {control:.0%}): "
                         f"the model relies on it.")
    bf = r.border_occlusion.flipped_share
    if r.border_ratio >= th["border_ratio"] and relied(bf):
        return entry("fail", "border", r.border_share, bf,
                     f"On {r.domain}, the {r.border_px}-pixel border band holds {r.border_share:.0%} of the "
                     f"attribution ({r.border_ratio:.1f}x its area share) and hiding it changes {bf:.0%} "
                     f"of the predictions.")
    if suspects:
        c = suspects[0]
        f = c.occlusion.flipped_share
        return entry("warn", list(c.box), c.share, f,
                     f"On {r.domain}, {describe(c)} lies {' and '.join(_where(c, th['location_fraction']))} and "
                     f"holds {c.share:.0%} of the attribution ({c.ratio:.1f}x its area share), but hiding it "
                     f"changes only {f:.0%} of the predictions (same-size patches elsewhere: {control:.0%}).")
    if r.border_ratio >= th["border_ratio"]:
        return entry("warn", "border", r.border_share, bf,
                     f"On {r.domain}, the border band holds {r.border_share:.0%} of the attribution "
                     f"({r.border_ratio:.1f}x its area share), though hiding it changes only {bf:.0%} of "
                     f"the predictions.")
    c = r.hot
    place = " and ".join(_where(c, th["location_fraction"])) or "inside the image"
    f = c.occlusion.flipped_share
    return entry("ok", list(c.box), c.share, f,
                 f"On {r.domain}, no spurious region: {describe(c)} lies {place}, holds {c.share:.0%} of the "
                 f"attribution ({c.ratio:.1f}x its area share), and hiding it changes {f:.0%} of the "
                 f"predictions.")


def compare_reliance(before: SpuriousResult, after: SpuriousResult) -> dict:
    """Did reliance on the suspect region fall from ``before`` to ``after``?

    The region is the one ``before``'s verdict names (its hot box when nothing was
    flagged, or when the border was). The after-model's share and occlusion flips on
    it come from ``after.reference_*`` when ``after`` was run with ``reference_box`` set
    to that region (recommended); otherwise after's own hot region stands in. Also:
    the Pearson correlation of the two overall mean maps (1 = the model still looks at
    the same places) and the IoU of the two hot boxes.
    """
    region = before.verdict.get("region")
    box = tuple(region) if isinstance(region, list) else before.hot_box
    cand = next((c for c in before.candidates if c.box == box), before.hot)
    same_ref = after.reference_box is not None and tuple(after.reference_box) == box
    if same_ref:
        a_share = after.reference_share
        a_flips = after.reference_occlusion.flipped_share
    else:
        a_share, a_flips = after.hot.share, after.hot.occlusion.flipped_share
    b_share = box_share(before.maps, box).mean_share
    corr = (map_correlation(before.mean_map, after.mean_map)
            if before.mean_map.shape == after.mean_map.shape else float("nan"))
    d = {
        "region": list(box),
        "after_measured_on_region": bool(same_ref),
        "share_before": b_share, "share_after": a_share,
        "flips_before": cand.occlusion.flipped_share, "flips_after": a_flips,
        "border_ratio_before": before.border_ratio, "border_ratio_after": after.border_ratio,
        "border_flips_before": before.border_occlusion.flipped_share,
        "border_flips_after": after.border_occlusion.flipped_share,
        "map_correlation": corr,
        "hot_box_iou": box_iou(before.hot_box, after.hot_box),
        "flagged_before": bool(before.verdict.get("flagged")),
        "flagged_after": bool(after.verdict.get("flagged")),
    }
    d["reliance_fell"] = bool(a_flips < d["flips_before"] and a_share < b_share)
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else
                round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
