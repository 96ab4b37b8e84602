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
                    blur: float = BLUR, block: int = 256, pairs_once: bool = True) -> list[DuplicatePair]:
    """Every exact or near-duplicate pair (i < j) of uint8 grey images [N, H, W].

    Cost: N hashes, then the N² / 2 pairs' aligned differences (per block of ``block`` rows,
    2 (2·max_shift + 1)² matrix products against the images from that block on), about
    3.5 s for 1,200 phantom images on one CPU core (``benchmarks/bench_duplicates.py``).
    ``pairs_once=False`` compares every row with every column (twice the work, the same
    pairs: for checking).
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
    centre = _flat_centred(x[:, m:m + c, m:m + c])
    windows = [_flat_centred(x[:, m + dy:m + dy + c, m + dx:m + dx + c])
               for dy in range(-m, m + 1) for dx in range(-m, m + 1)]
    sq_c = (centre * centre).sum(1)
    contrast = (sq_c / centre.shape[1]).sqrt().clamp_min(1.0)  # grey levels; 1: a flat image
    sq_w = [(w * w).sum(1) for w in windows]
    hb = torch.from_numpy(bits)
    pairs: list[DuplicatePair] = []
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        # only the pairs i < j: a row's partners from the block's own start on (the
        # columns before it were this row's pairs with earlier rows: done), half the work
        cols = slice(start if pairs_once else 0, n)
        first = cols.start
        hd = bits.shape[1] - (hb[rows] @ hb[cols].T + (1 - hb[rows]) @ (1 - hb[cols]).T)
        best = torch.full(hd.shape, float("inf"))
        for w, sw in zip(windows, sq_w):
            d = sq_c[rows, None] + sw[None, cols] - 2 * centre[rows] @ w[cols].T
            best = torch.minimum(best, d)
        # symmetric: i's centre against j's windows, and j's centre against i's windows
        for w, sw in zip(windows, sq_w):
            d = sw[rows, None] + sq_c[None, cols] - 2 * w[rows] @ centre[cols].T
            best = torch.minimum(best, d)
        rmse = (best.clamp_min(0) / centre.shape[1]).sqrt()
        rel = rmse / (contrast[rows, None] * contrast[None, cols]).sqrt()
        ii, jj = torch.nonzero((hd <= max_hash_distance) & (rel <= max_relative_rmse), as_tuple=True)
        for a, b in zip((ii + start).tolist(), (jj + first).tolist()):
            if a < b:  # identical pixels have distance 0 and RMSE 0: always found here
                exact = digests[a] == digests[b]
                pairs.append(DuplicatePair(a, b, "exact" if exact else "near", int(hd[a - start, b - first]),
                                           0.0 if exact else float(rmse[a - start, b - first]),
                                           0.0 if exact else float(rel[a - start, b - first])))
    return sorted(pairs, key=lambda p: (p.i, p.j))


def _flat_centred(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), -1)
    return flat - flat.mean(1, keepdim=True)
