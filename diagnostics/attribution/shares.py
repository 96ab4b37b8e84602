"""Where the attribution mass sits: shares of each map's total |attribution| in a
region (border band, outside the ROI, inside boxes), mean maps per (domain, class),
their correlation, and the images that attend most to a region.

Maps are [N, H, W] (or one [H, W]) non-negative; a share is
``Σ map·region / Σ map`` per image, NaN for an all-zero map (no evidence either way).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from torch import Tensor

from adapt.errors import UserError
from diagnostics.attribution.regions import border_mask, box_mask, boxes_np, masks_np, valid_box


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


def maps_np(maps) -> np.ndarray:
    """Attribution maps ([N, H, W] or one [H, W], tensor or array) as float64 [N, H, W]."""
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


def border_share(maps, band_frac: float | None = 0.125, band_px: int | None = None) -> RegionShare:
    """Share of |attribution| in the border band per sample, and the band's area share.

    ``share / area_share > 1`` means the model looks at the edges (markers, text,
    collimation) more than their area warrants.
    """
    m = maps_np(maps)
    band = border_mask(m.shape[1], m.shape[2], band_frac, band_px)
    return RegionShare(_shares(m, band[None].astype(np.float64)), float(band.mean()))


def roi_outside_share(maps, masks) -> RegionShare:
    """Share of |attribution| outside the region-of-interest mask ([H, W] or [N, H, W],
    1 = inside), and the outside area's share per sample."""
    m = maps_np(maps)
    outside = 1.0 - masks_np(masks, m.shape)
    return RegionShare(_shares(m, outside), outside.mean(axis=(1, 2)))


def box_share(maps, boxes) -> RegionShare:
    """Share of |attribution| inside a box per sample (one box for all, or [N, 4]).
    Samples whose box row is -1 (no box) get NaN share and NaN area."""
    m = maps_np(maps)
    n, h, w = m.shape
    b = boxes_np(boxes, n)
    share = np.full(n, np.nan)
    area = np.full(n, np.nan)
    for i in range(n):
        if valid_box(b[i]):
            k = box_mask(h, w, b[i])
            share[i] = _shares(m[i : i + 1], k[None].astype(np.float64))[0]
            area[i] = k.mean()
    if b.ndim == 2 and n and (b == b[0]).all() and np.isfinite(area[0]):
        return RegionShare(share, float(area[0]))
    return RegionShare(share, area)


def mean_maps(maps, labels, domains=None, normalize: bool = True) -> dict[tuple[str, int], np.ndarray]:
    """Mean attribution map per (domain, class): ``{(domain, class): [H, W]}``.

    With ``normalize`` each map is first scaled to unit mass, so every image counts
    equally and a few high-confidence images do not dominate the picture; the mean
    map then reads as "where the attribution mass goes, on average". ``domains``: None
    (one domain, named ""), a single name, or [N] names. Also ``(domain, -1)``: all
    classes of that domain together.
    """
    m = maps_np(maps)
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


def top_attributed(maps, labels, region, k: int = 4, indices=None) -> dict[int, list[int]]:
    """For the report gallery: per class, the ``k`` samples with the largest share of
    their attribution inside ``region`` (a box, [N, 4] boxes, or an [H, W] bool mask).
    Returns ``{class: [index, ...]}``, mapped through ``indices`` when given (so the
    ids refer to the original dataset, not the analysed subsample)."""
    m = maps_np(maps)
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
