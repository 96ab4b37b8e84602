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

__all__ = [
    "AttributionResult",
    "OcclusionResult",
    "RegionShare",
    "SpuriousResult",
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
    "roi_outside_share",
    "spurious_analysis",
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


def hottest_region(mean_map, size: int | tuple[int, int]) -> Box:
    """The ``size`` window (int, or (height, width)) holding the most attribution mass,
    as a box (x0, y0, x1, y1), ends exclusive. Window sums for every position come
    from one summed-area table, O(H·W). Ties go to the first window in raster order."""
    m = np.asarray(mean_map.detach().cpu() if isinstance(mean_map, Tensor) else mean_map, dtype=np.float64)
    if m.ndim != 2:
        raise UserError(f"hottest_region: expected one [H, W] map, got shape {m.shape}")
    sh, sw = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    h, w = m.shape
    if not (1 <= sh <= h and 1 <= sw <= w):
        raise UserError(f"hottest_region: window {sh}x{sw} does not fit a {h}x{w} map")
    sat = np.zeros((h + 1, w + 1))
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    win = sat[sh:, sw:] - sat[:-sh, sw:] - sat[sh:, :-sw] + sat[:-sh, :-sw]
    y0, x0 = np.unravel_index(int(np.argmax(win)), win.shape)
    return (int(x0), int(y0), int(x0) + sw, int(y0) + sh)


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
class SpuriousResult:
    """Spurious-feature analysis of one model on one domain (see :func:`spurious_analysis`).

    Shares are means over the analysed images of "fraction of each image's |attribution|
    inside the region"; ratios divide that by the region's area fraction (1 = fair share).
    ``mean_map``/``class_maps`` are full resolution numpy (for figures); ``to_dict``
    keeps them downsampled to ``map_resolution``.
    """

    domain: str
    method: str
    n: int
    image_size: tuple[int, int]
    indices: list[int]                       # analysed images (positions in the input)
    labels: list[int]
    predictions: list[int]
    maps: Tensor                             # [n, H, W], not serialised
    mean_map: np.ndarray                     # [H, W], all analysed images
    class_maps: dict[int, np.ndarray]        # class -> [H, W]
    hot_box: Box
    hot_share: float
    hot_area_share: float
    hot_in_border: float                     # fraction of the hot box inside the border band
    hot_outside_roi: float | None            # fraction of the hot box outside the mean ROI
    class_hot_boxes: dict[int, Box]
    border_px: int
    border_share: float
    border_area_share: float
    roi_outside_share: float | None
    roi_outside_area_share: float | None
    hot_occlusion: OcclusionResult
    border_occlusion: OcclusionResult
    control_flips: float                     # mean flips for same-size boxes elsewhere
    known_box_share: float | None = None
    known_box_area_share: float | None = None
    known_box_occlusion: OcclusionResult | None = None
    hot_known_iou: float | None = None
    reference_box: Box | None = None
    reference_share: float | None = None
    reference_occlusion: OcclusionResult | None = None
    convergence_delta: float | None = None
    gallery: dict[int, list[int]] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def hot_ratio(self) -> float:
        return self.hot_share / self.hot_area_share if self.hot_area_share > 0 else float("nan")

    @property
    def border_ratio(self) -> float:
        return self.border_share / self.border_area_share if self.border_area_share > 0 else float("nan")

    def to_dict(self, map_resolution: int = 16, include_maps: bool = False) -> dict:
        def r(x, nd=4):
            return None if x is None or not np.isfinite(x) else round(float(x), nd)

        def small(m: np.ndarray) -> list:
            t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
            s = min(map_resolution, m.shape[0], m.shape[1])
            t = F.adaptive_avg_pool2d(t, s)[0, 0]
            t = t / t.max() if t.max() > 0 else t     # relative scale: a picture, not a measure
            return np.round(t.numpy().astype(np.float64), 3).tolist()

        d = {
            "domain": self.domain, "method": self.method, "n": self.n,
            "image_size": list(self.image_size), "indices": self.indices,
            "hot_region": {
                "box": list(self.hot_box), "share": r(self.hot_share), "area_share": r(self.hot_area_share),
                "ratio": r(self.hot_ratio, 3), "in_border": r(self.hot_in_border, 3),
                "outside_roi": r(self.hot_outside_roi, 3), "occlusion": self.hot_occlusion.to_dict(),
                "control_flipped_share": r(self.control_flips),
            },
            "class_hot_boxes": {str(c): list(b) for c, b in self.class_hot_boxes.items()},
            "border": {"band_px": self.border_px, "share": r(self.border_share),
                       "area_share": r(self.border_area_share), "ratio": r(self.border_ratio, 3),
                       "occlusion": self.border_occlusion.to_dict()},
            "roi_outside": None if self.roi_outside_share is None else {
                "share": r(self.roi_outside_share), "area_share": r(self.roi_outside_area_share),
                "ratio": r(self.roi_outside_share / self.roi_outside_area_share
                           if self.roi_outside_area_share else None, 3)},
            "known_boxes": None if self.known_box_share is None else {
                "share": r(self.known_box_share), "area_share": r(self.known_box_area_share),
                "hot_iou": r(self.hot_known_iou, 3),
                "occlusion": None if self.known_box_occlusion is None else self.known_box_occlusion.to_dict()},
            "reference": None if self.reference_box is None else {
                "box": list(self.reference_box), "share": r(self.reference_share),
                "occlusion": None if self.reference_occlusion is None else self.reference_occlusion.to_dict()},
            "convergence_delta": r(self.convergence_delta, 6),
            "mean_map": small(self.mean_map),
            "class_maps": {str(c): small(m) for c, m in self.class_maps.items()},
            "gallery": {str(c): v for c, v in self.gallery.items()},
            "thresholds": self.thresholds,
            "verdict": self.verdict,
            "seconds": r(self.seconds, 2),
        }
        if include_maps:
            d["maps"] = np.round(self.maps.numpy().astype(np.float64), 5).tolist()
        return d


def stratified_subsample(labels: np.ndarray, max_samples: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_samples`` items, classes in proportion (largest
    remainder), drawn with a fixed seed. All indices when there are few enough."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if n <= max_samples:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * max_samples / n
    take = np.floor(quota).astype(int)
    for j in np.argsort(-(quota - take), kind="stable")[: max_samples - take.sum()]:
        take[j] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(picked))


def _control_boxes(h: int, w: int, size: tuple[int, int], avoid: Box, band: np.ndarray,
                   k: int, rng: np.random.Generator) -> list[Box]:
    """Up to k same-size boxes away from the hot box and the border band: the flips
    their occlusion causes are the base rate that hiding *any* patch of this size has."""
    sh, sw = size
    out: list[Box] = []
    for _ in range(50 * k):
        if len(out) == k:
            break
        y0 = int(rng.integers(0, h - sh + 1))
        x0 = int(rng.integers(0, w - sw + 1))
        b = (x0, y0, x0 + sw, y0 + sh)
        if box_iou(b, avoid) == 0 and not band[y0 : y0 + sh, x0 : x0 + sw].any():
            out.append(b)
    return out


DEFAULT_THRESHOLDS = {
    # The hot window must hold at least this multiple of its area's fair share of the
    # attribution (an 8x8 window on 64x64 is 1.6% of the area: ratio 4 means ≥ 6%).
    "share_ratio": 4.0,
    # Occluding it must flip at least this fraction of predictions ...
    "flip_share": 0.05,
    # ... and at least this multiple of the flips that same-size patches elsewhere cause.
    "flip_over_control": 2.0,
    # A window counts as "in the border" / "outside the ROI" when at least this
    # fraction of its pixels is there.
    "location_fraction": 0.5,
    # The whole border band: attention ratio that earns a warning (and, with flips, a fail).
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
    baseline: str | float | Tensor = "zeros",
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
    subsample, the per-class maps and accuracy under occlusion — the attributed class
    is always the *predicted* one, because it is the model's decision we explain).
    masks: optional ROI masks ([H, W] or [N, H, W], 1 = anatomy). known_boxes: optional
    [N, 4] boxes of a known artefact (the phantom's marker; −1 rows = none), scored and
    occluded separately. reference_box: a box to score and occlude as well, e.g. the
    hot box of the model *before* adaptation, so the after-model is tested on it.
    hot_size: window side for the hot region (default: ⌈side/8⌉).

    Verdict (thresholds: :data:`DEFAULT_THRESHOLDS`, override any key):
      * **fail** (flagged) when the hot window lies in the border band or outside the
        ROI, holds ≥ ``share_ratio``× its area's share of the attribution, and occluding
        it flips ≥ ``flip_share`` of the predictions and ≥ ``flip_over_control``× the
        flips of same-size windows elsewhere; or when the whole border band is
        over-attended (≥ ``border_ratio``) and occluding the band flips that many.
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
    x = images[idx]
    lab = lab_all[idx]
    m_sel = None
    if masks is not None:
        mk = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
        m_sel = mk if mk.ndim == 2 else mk[idx]
    kb_sel = None if known_boxes is None else _boxes_np(known_boxes, n_all)[idx]

    preds = predict(model, x, batch_size=256)
    att = attribute(model, x, preds, method=method, baseline=baseline, n_steps=n_steps,
                    internal_batch_size=internal_batch_size, batch_size=batch_size)
    maps = att.maps
    mm = mean_maps(maps, lab, domain_name)
    mean_map = mm[(domain_name, -1)]
    class_maps = {c: v for (d, c), v in mm.items() if c != -1}

    side = hot_size if hot_size is not None else max(1, math.ceil(min(h, w) / 8))
    size = (side, side) if isinstance(side, (int, np.integer)) else (int(side[0]), int(side[1]))
    hot = hottest_region(mean_map, size)
    class_hot = {c: hottest_region(v, size) for c, v in class_maps.items()}
    hot_rs = box_share(maps, hot)
    band = border_mask(h, w, band_frac)
    b_px = band_width(h, w, band_frac)
    bs = border_share(maps, band_px=b_px)
    hot_k = box_mask(h, w, hot)
    hot_in_border = float(band[hot_k].mean())
    roi_share = roi_area = hot_out = None
    if m_sel is not None:
        ro = roi_outside_share(maps, m_sel)
        roi_share, roi_area = ro.mean_share, float(np.mean(ro.area_share))
        mean_roi = _masks_np(m_sel, tuple(maps.shape)).mean(0) > 0.5
        hot_out = float((~mean_roi)[hot_k].mean())

    occ_hot = occlusion_flips(model, x, hot, labels=lab, predictions=preds)
    occ_border = occlusion_flips(model, x, band, labels=lab, predictions=preds)
    rng = np.random.default_rng(seed + 1)
    controls = _control_boxes(h, w, size, hot, band, n_control, rng)
    control = float(np.mean([occlusion_flips(model, x, b, predictions=preds).flipped_share
                             for b in controls])) if controls else float("nan")

    kb_share = kb_area = kb_occ = kb_iou = None
    if kb_sel is not None:
        has = np.array([_valid_box(b) for b in kb_sel])
        if has.any():
            ks = box_share(maps[torch.from_numpy(has)], kb_sel[has])
            kb_share, kb_area = ks.mean_share, float(np.nanmean(np.asarray(ks.area_share, dtype=float)))
            kb_occ = occlusion_flips(model, x[torch.from_numpy(has)], kb_sel[has], labels=lab[has],
                                     predictions=preds[torch.from_numpy(has)])
            kb_iou = max(box_iou(hot, tuple(b)) for b in {tuple(int(v) for v in b) for b in kb_sel[has]})
    ref_share = ref_occ = None
    ref = None if reference_box is None else tuple(int(v) for v in reference_box)
    if ref is not None:
        ref_share = box_share(maps, ref).mean_share
        ref_occ = occlusion_flips(model, x, ref, labels=lab, predictions=preds)

    result = SpuriousResult(
        domain=domain_name, method=method, n=len(idx), image_size=(h, w),
        indices=[int(i) for i in idx], labels=[int(v) for v in lab], predictions=preds.tolist(),
        maps=maps, mean_map=mean_map, class_maps=class_maps,
        hot_box=hot, hot_share=hot_rs.mean_share, hot_area_share=float(hot_rs.area_share),
        hot_in_border=hot_in_border, hot_outside_roi=hot_out, class_hot_boxes=class_hot,
        border_px=b_px, border_share=bs.mean_share, border_area_share=float(bs.area_share),
        roi_outside_share=roi_share, roi_outside_area_share=roi_area,
        hot_occlusion=occ_hot, border_occlusion=occ_border, control_flips=control,
        known_box_share=kb_share, known_box_area_share=kb_area, known_box_occlusion=kb_occ,
        hot_known_iou=kb_iou, reference_box=ref, reference_share=ref_share, reference_occlusion=ref_occ,
        convergence_delta=att.mean_abs_delta,
        gallery=top_attributed(maps, lab, hot, k=gallery_k, indices=idx),
        thresholds=th,
    )
    result.verdict = spurious_verdict(result, th)
    result.seconds = time.perf_counter() - t0
    return result


def spurious_verdict(r: SpuriousResult, th: dict[str, float]) -> dict:
    """The verdict of :func:`spurious_analysis` from its numbers (see there)."""
    loc = th["location_fraction"]
    where = []
    if r.hot_in_border >= loc:
        where.append("in the image border")
    if r.hot_outside_roi is not None and r.hot_outside_roi >= loc:
        where.append("outside the region of interest")
    attended = r.hot_ratio >= th["share_ratio"]
    control = 0.0 if not np.isfinite(r.control_flips) else r.control_flips
    relied = (r.hot_occlusion.flipped_share >= th["flip_share"]
              and r.hot_occlusion.flipped_share >= th["flip_over_control"] * control)
    border_attended = r.border_ratio >= th["border_ratio"]
    border_relied = r.border_occlusion.flipped_share >= th["flip_share"]
    box = "(x0, y0, x1, y1) = ({}, {}, {}, {})".format(*r.hot_box)
    hot_flips = r.hot_occlusion.flipped_share
    if where and attended and relied:
        return {"level": "fail", "flagged": True, "region": list(r.hot_box), "share": round(r.hot_share, 4),
                "flips": round(hot_flips, 4),
                "reason": f"On {r.domain}, the hottest region {box} lies {' and '.join(where)}, holds "
                          f"{r.hot_share:.0%} of the attribution ({r.hot_ratio:.1f}x its area share), and "
                          f"hiding it changes {hot_flips:.0%} of the predictions "
                          f"(same-size patches elsewhere: {control:.0%}): the model relies on it."}
    if border_attended and border_relied:
        return {"level": "fail", "flagged": True, "region": "border", "share": round(r.border_share, 4),
                "flips": round(r.border_occlusion.flipped_share, 4),
                "reason": f"On {r.domain}, the {r.border_px}-pixel border band holds {r.border_share:.0%} "
                          f"of the attribution ({r.border_ratio:.1f}x its area share) and hiding it "
                          f"changes {r.border_occlusion.flipped_share:.0%} of the predictions."}
    if where and attended:
        return {"level": "warn", "flagged": False, "region": list(r.hot_box), "share": round(r.hot_share, 4),
                "flips": round(hot_flips, 4),
                "reason": f"On {r.domain}, the hottest region {box} lies {' and '.join(where)} and holds "
                          f"{r.hot_share:.0%} of the attribution ({r.hot_ratio:.1f}x its area share), but "
                          f"hiding it changes only {hot_flips:.0%} of the predictions."}
    if border_attended:
        return {"level": "warn", "flagged": False, "region": "border", "share": round(r.border_share, 4),
                "flips": round(r.border_occlusion.flipped_share, 4),
                "reason": f"On {r.domain}, the border band holds {r.border_share:.0%} of the attribution "
                          f"({r.border_ratio:.1f}x its area share), though hiding it changes only "
                          f"{r.border_occlusion.flipped_share:.0%} of the predictions."}
    place = "inside the image" if not where else " and ".join(where)
    return {"level": "ok", "flagged": False, "region": list(r.hot_box), "share": round(r.hot_share, 4),
            "flips": round(hot_flips, 4),
            "reason": f"On {r.domain}, no spurious region: the hottest region {box} lies {place}, holds "
                      f"{r.hot_share:.0%} of the attribution ({r.hot_ratio:.1f}x its area share), and hiding "
                      f"it changes {hot_flips:.0%} of the predictions."}


def compare_reliance(before: SpuriousResult, after: SpuriousResult) -> dict:
    """Did reliance on the suspect region fall from ``before`` to ``after``?

    The region is ``before``'s hot box. Its share and occlusion flips under the
    after-model come from ``after.reference_*`` when ``after`` was run with
    ``reference_box=before.hot_box`` (recommended); otherwise after's own hot region
    stands in. Also: the Pearson correlation of the two mean maps (1 = the model still
    looks at the same places) and the IoU of the two hot boxes.
    """
    same_ref = after.reference_box is not None and tuple(after.reference_box) == tuple(before.hot_box)
    a_share = after.reference_share if same_ref else after.hot_share
    a_flips = (after.reference_occlusion.flipped_share if same_ref and after.reference_occlusion
               else after.hot_occlusion.flipped_share)
    corr = (map_correlation(before.mean_map, after.mean_map)
            if before.mean_map.shape == after.mean_map.shape else float("nan"))
    d = {
        "region": list(before.hot_box),
        "after_measured_on_region": bool(same_ref),
        "share_before": before.hot_share, "share_after": a_share,
        "flips_before": before.hot_occlusion.flipped_share, "flips_after": a_flips,
        "border_ratio_before": before.border_ratio, "border_ratio_after": after.border_ratio,
        "border_flips_before": before.border_occlusion.flipped_share,
        "border_flips_after": after.border_occlusion.flipped_share,
        "map_correlation": corr,
        "hot_box_iou": box_iou(before.hot_box, after.hot_box),
        "flagged_before": bool(before.verdict.get("flagged")),
        "flagged_after": bool(after.verdict.get("flagged")),
    }
    d["reliance_fell"] = bool(a_flips < d["flips_before"] and a_share < d["share_before"])
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else
                round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}
