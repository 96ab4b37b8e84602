"""Region geometry on [H, W] images: the border band, boxes, ROI masks and their
convex hull, window sums and the hottest window of a map.

Boxes are ``(x0, y0, x1, y1)`` pixel coordinates with exclusive ends
(``map[y0:y1, x0:x1]``), the convention of the phantom's marker boxes; a row of ``-1``
means "no box". Masks are [H, W] (or [N, H, W]) with 1 = inside.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import Tensor

from adapt.errors import UserError

Box = tuple[int, int, int, int]


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


def masks_np(masks, shape: tuple[int, int, int]) -> np.ndarray:
    """ROI masks ([H, W] or [N, H, W]) as float64 {0, 1} of ``shape`` [N, H, W]."""
    k = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if k.ndim == 2:
        k = np.broadcast_to(k, shape)
    if k.shape != shape:
        raise UserError(f"ROI masks: shape {k.shape} does not match maps {shape}")
    return (k > 0.5).astype(np.float64)


def box_mask(h: int, w: int, box: Sequence[int]) -> np.ndarray:
    """[H, W] bool for box (x0, y0, x1, y1), ends exclusive, clipped to the image."""
    x0, y0, x1, y1 = (int(v) for v in box)
    m = np.zeros((h, w), dtype=bool)
    m[max(y0, 0) : max(min(y1, h), 0), max(x0, 0) : max(min(x1, w), 0)] = True
    return m


def boxes_np(boxes, n: int) -> np.ndarray:
    """One box for all or [N, 4] boxes as an int64 [N, 4] array."""
    b = np.asarray(boxes, dtype=np.int64)
    if b.ndim == 1:
        b = np.broadcast_to(b, (n, 4))
    if b.shape != (n, 4):
        raise UserError(f"boxes: expected [4] or [{n}, 4] (x0, y0, x1, y1), got shape {b.shape}")
    return b


def valid_box(b: np.ndarray) -> bool:
    """False for a "no box" row (negative coordinates) or an empty box."""
    return bool((b >= 0).all() and b[2] > b[0] and b[3] > b[1])


def box_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes, ends exclusive."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def roi_hull(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool: the convex hull of a region-of-interest mask (pixel squares).

    The location test asks whether a hot window lies outside the *anatomy*, and an ROI
    such as two lung fields leaves the mediastinum and heart between them outside the
    mask although they are anatomy; artefacts (markers, text, collimator edges) sit
    outside the hull. The window-level share score (:func:`roi_outside_share`) keeps
    the mask itself. An empty or degenerate mask is returned unchanged.
    """
    from scipy.spatial import Delaunay, QhullError  # late: only analyses with ROI masks need it

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


def window_sums(m: np.ndarray, sh: int, sw: int) -> np.ndarray:
    """[H−sh+1, W−sw+1] sums of every sh×sw window (summed-area table)."""
    sat = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    sat[1:, 1:] = m.cumsum(0).cumsum(1)
    return sat[sh:, sw:] - sat[:-sh, sw:] - sat[sh:, :-sw] + sat[:-sh, :-sw]


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
    win = window_sums(m, sh, sw)
    if within is not None:
        zone = np.asarray(within, dtype=np.float64)
        if zone.shape != m.shape:
            raise UserError(f"hottest_region: zone shape {zone.shape} does not match map {m.shape}")
        ok = window_sums(zone, sh, sw) >= min_fraction * sh * sw - 1e-9
        if not ok.any():
            return None
        win = np.where(ok, win, -np.inf)
    y0, x0 = np.unravel_index(int(np.argmax(win)), win.shape)
    return (int(x0), int(y0), int(x0) + sw, int(y0) + sh)
