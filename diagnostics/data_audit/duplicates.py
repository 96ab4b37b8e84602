"""Exact and near-duplicate images: the same picture twice, perhaps resized, re-encoded
or shifted by a pixel or two — within a split, across splits (train/test leakage) or
across domains.

Two stages. (1) Candidates by perceptual hash: ``imagehash.phash`` (DCT hash, 64 bits)
of every image; pairs within ``max_hash_distance`` bits are candidates. (2) Each
candidate is confirmed on the pixels: both images at ``side`` x ``side``, smoothed by a
Gaussian of ``blur`` pixels (JPEG blocks and sub-pixel shifts then cost little) and with
their own mean removed, the root-mean-square difference, minimised over shifts of up to
``max_shift`` pixels (a crop of one image against shifted windows of the other), relative
to the images' contrast (the geometric mean of their standard deviations, so a dim,
low-contrast domain is held to the same bar as a bright one). A pair is a near duplicate
when that relative aligned RMSE is at most ``max_relative_rmse``; an exact duplicate when
the decoded pixels are identical. The pixel check is what
keeps look-alike images apart: on the phantom, where every chest shares one anatomy,
the hash alone cannot tell two patients from one re-encoded image (the hash distances
overlap), while the relative aligned RMSE of distinct images stays above 0.14 and that of
planted copies (resized, re-encoded, shifted) below 0.10, on both sites
(docs/data_audit.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from adapt.errors import UserError

#: pairs within this many of the 64 phash bits are candidates: a loose gate (the pixel check
#: decides) — 2,000 planted copies (resized, shifted, JPEG) lay at up to 22 bits, 1.7 % of
#: them beyond 16, the gate before (docs/data_audit.md)
MAX_HASH_DISTANCE = 24
#: a candidate is a near duplicate when its aligned RMSE over the images' contrast is at most this
MAX_RELATIVE_RMSE = 0.12
#: the Gaussian smoothing (sigma, pixels at ``SIDE``) applied before the comparison
BLUR = 1.0
#: the largest shift (pixels at ``SIDE``) the alignment tries
MAX_SHIFT = 2
SIDE = 64
#: the lower bound's block size (pixels at ``SIDE``): 60x60 crops become 10x10
BOUND_POOL = 6


@dataclass
class DuplicatePair:
    """Two images (indices into the audited stack), exact or near, and the evidence."""

    i: int
    j: int
    kind: str  # "exact" or "near"
    hash_distance: int
    rmse: float  # aligned RMSE, grey levels of 255
    relative_rmse: float  # rmse / the images' contrast (geometric mean of their standard deviations)

    def to_dict(self) -> dict:
        return {"i": self.i, "j": self.j, "kind": self.kind, "hash_distance": self.hash_distance,
                "rmse": round(self.rmse, 3), "relative_rmse": round(self.relative_rmse, 4)}


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """``imagehash.phash`` of each uint8 image [N, H, W] as bits, bool [N, 64]."""
    import imagehash  # late: an optional extra (.[data])

    return np.stack([imagehash.phash(Image.fromarray(im, mode="L")).hash.reshape(-1) for im in images])


def find_duplicates(images: np.ndarray, *, max_hash_distance: int = MAX_HASH_DISTANCE,
                    max_relative_rmse: float = MAX_RELATIVE_RMSE, max_shift: int = MAX_SHIFT, side: int = SIDE,
                    blur: float = BLUR, block: int = 256, pairs_once: bool = True,
                    bound_pool: int = BOUND_POOL) -> list[DuplicatePair]:
    """Every exact or near-duplicate pair (i < j) of uint8 grey images [N, H, W].

    The aligned distance of a pair is D = min_s ‖c_i − w_j^s‖² (and the same with i, j
    swapped), c the centred central crop, w^s the centred crop shifted by s. A pair can only
    be a near duplicate when D ≤ R² · contrast_i · contrast_j · P (R = ``max_relative_rmse``,
    P pixels in a crop). Averaging over k x k blocks (A) shrinks every vector's norm,
    ‖v‖² ≥ k² ‖A v‖² (Jensen: a block's squared mean is at most its mean square), and A is
    linear, so L = k² · min_s ‖A c_i − A w_j^s‖² ≤ D: a lower bound from crops k² times
    smaller. Stage 1 computes L for every pair (per block of ``block`` rows, matrix products
    over the pooled crops); stage 2 computes D exactly (float64, on the full crops) only for
    the pairs whose bound and hash are within the gates — no pair is lost (L ≤ D), and
    the exact D decides. On the phantom (1,200 images, k = 6) 0–5 of 719,400 distinct pairs
    pass stage 1 (docs/data_audit.md).

    Cost: N hashes, then the N² / 2 pairs' pooled distances (float64 matrix products on
    10 x 10 crops for every shift): 0.8 s in all for 1,200 phantom images on one CPU core,
    5.4x less than every pair's full distance (``benchmarks/bench_duplicates.py``). ``bound_pool=1`` computes the full distance of every
    pair (float32 matrix products), ``pairs_once=False`` then compares every row with every
    column (twice the work): the same pairs, for checking.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise UserError(f"find_duplicates: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    n = len(images)
    if n < 2:
        return []
    bits = perceptual_hashes(images).astype(np.float32)
    digests = [hashlib.sha1(im.tobytes()).digest() + bytes(str(im.shape), "ascii") for im in images]
    x = torch.from_numpy(images).float()[:, None]
    if x.shape[-1] != side or x.shape[-2] != side:
        x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    if blur > 0:
        from torchvision.transforms.functional import gaussian_blur  # late: torchvision's import time

        x = gaussian_blur(x, kernel_size=2 * int(3 * blur) + 1, sigma=blur)
    x = x[:, 0]
    m, c = max_shift, side - 2 * max_shift
    crops = [x[:, m + dy:m + dy + c, m + dx:m + dx + c] for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
    centre = _flat_centred(crops[len(crops) // 2])  # shift (0, 0)
    contrast = ((centre * centre).sum(1) / centre.shape[1]).sqrt().clamp_min(1.0)  # grey levels; 1: a flat image
    hb = torch.from_numpy(bits)
    if bound_pool > 1 and c // bound_pool >= 2:
        found = _pruned_pairs(crops, centre, contrast, hb, max_hash_distance, max_relative_rmse, bound_pool, block)
    else:
        found = _dense_pairs(crops, centre, contrast, hb, max_hash_distance, max_relative_rmse, block, pairs_once)
    pairs = []
    for a, b, hd, rmse, rel in found:
        exact = digests[a] == digests[b]  # identical pixels have distance 0 and RMSE 0: always found
        pairs.append(DuplicatePair(a, b, "exact" if exact else "near", hd, 0.0 if exact else rmse,
                                   0.0 if exact else rel))
    return sorted(pairs, key=lambda p: (p.i, p.j))


def _hash_distances(hb: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
    """Hamming distances between the hash bits of ``rows`` and ``cols`` (float [r, c])."""
    return hb.shape[1] - (hb[rows] @ hb[cols].T + (1 - hb[rows]) @ (1 - hb[cols]).T)


def _aligned_distances(centre: torch.Tensor, windows: list[torch.Tensor], rows: slice, cols: slice) -> torch.Tensor:
    """D[i, j] = min over shifts s of ‖c_i − w_j^s‖² and ‖w_i^s − c_j‖² for i in ``rows``, j in
    ``cols`` (matrix products in the inputs' dtype: ‖a‖² + ‖b‖² − 2 a·b), [len(rows), len(cols)]."""
    sq_c = (centre * centre).sum(1)
    best = torch.full((len(sq_c[rows]), len(sq_c[cols])), float("inf"), dtype=centre.dtype)
    for w in windows:
        sq_w = (w * w).sum(1)
        best = torch.minimum(best, sq_c[rows, None] + sq_w[None, cols] - 2 * centre[rows] @ w[cols].T)
        # symmetric: i's centre against j's windows, and j's centre against i's windows
        best = torch.minimum(best, sq_w[rows, None] + sq_c[None, cols] - 2 * w[rows] @ centre[cols].T)
    return best.clamp_min(0)


def _dense_pairs(crops, centre, contrast, hb, max_hash_distance, max_relative_rmse, block, pairs_once):
    """Every pair's aligned distance: (i, j, hash distance, rmse, relative rmse) within the gates."""
    n = len(centre)
    windows = [_flat_centred(w) for w in crops]
    out = []
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        # only the pairs i < j: a row's partners from the block's own start on (the
        # columns before it were this row's pairs with earlier rows: done), half the work
        cols = slice(start if pairs_once else 0, n)
        first = cols.start
        hd = _hash_distances(hb, rows, cols)
        rmse = (_aligned_distances(centre, windows, rows, cols) / centre.shape[1]).sqrt()
        rel = rmse / (contrast[rows, None] * contrast[None, cols]).sqrt()
        ii, jj = torch.nonzero((hd <= max_hash_distance) & (rel <= max_relative_rmse), as_tuple=True)
        for a, b in zip((ii + start).tolist(), (jj + first).tolist()):
            if a < b:
                i, j = a - start, b - first
                out.append((a, b, int(hd[i, j]), float(rmse[i, j]), float(rel[i, j])))
    return out


def _pruned_pairs(crops, centre, contrast, hb, max_hash_distance, max_relative_rmse, k, block):
    """The pairs within the gates, by the pooled lower bound then the exact distance
    (:func:`find_duplicates`): (i, j, hash distance, rmse, relative rmse)."""
    n, p = centre.shape

    def pooled(crop: torch.Tensor) -> torch.Tensor:
        # A(w − mean w) = A w − mean w (A is linear and keeps a constant): pool, then centre
        means = crop.mean(dim=(1, 2))
        return (torch.nn.functional.avg_pool2d(crop[:, None], k).reshape(n, -1) - means[:, None]).double()

    pw = [pooled(w) for w in crops]
    pc = pw[len(pw) // 2]
    c64 = contrast.double()
    out = []
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        cols = slice(start, n)  # pairs i < j only
        bound = _aligned_distances(pc, pw, rows, cols) * (k * k)
        limit = max_relative_rmse ** 2 * p * c64[rows, None] * c64[None, cols]  # D ≤ limit: a near duplicate
        hd = _hash_distances(hb, rows, cols)
        # the margin covers float32 pooling's rounding (~1e-6 relative of the pooled values)
        keep = ((hd <= max_hash_distance) & (bound <= limit * (1 + 1e-4) + 1.0)).triu(1)  # i < j
        ii, jj = torch.nonzero(keep, as_tuple=True)
        if len(ii) == 0:
            continue
        # the candidates' exact distances: the candidate rows against the candidate columns,
        # the dense route's arithmetic on that sub-block in float64 (float32's ‖a‖² + ‖b‖² − 2 a·b
        # loses ~1e-4 of a near copy's RMSE to cancellation)
        r_idx, c_idx = torch.unique(ii) + start, torch.unique(jj) + start
        sub = torch.cat([r_idx, c_idx])
        r, c = slice(0, len(r_idx)), slice(len(r_idx), len(sub))
        rmse = (_aligned_distances(centre[sub].double(), [_flat_centred(w[sub]).double() for w in crops], r, c)
                / p).sqrt()
        rel = rmse / (contrast[r_idx, None] * contrast[None, c_idx]).sqrt()
        at_row = {int(i): a for a, i in enumerate(r_idx)}
        at_col = {int(j): b for b, j in enumerate(c_idx)}
        for i, j in zip((ii + start).tolist(), (jj + start).tolist()):
            a, b = at_row[i], at_col[j]
            if float(rel[a, b]) <= max_relative_rmse:
                out.append((i, j, int(hd[i - start, j - start]), float(rmse[a, b]), float(rel[a, b])))
    return out


def _flat_centred(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), -1)
    return flat - flat.mean(1, keepdim=True)
