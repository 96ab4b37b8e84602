"""``phantom-cxr``: deterministic synthetic chest radiographs from three "hospitals".

Every image is drawn in two stages, both vectorised over the whole batch:

1. **Anatomy** (a density map, bright = dense): air around a soft-tissue torso, two
   dark elliptical lung fields, curved ribs across the thorax, the mediastinum/spine
   band and the heart shadow overlapping the left lung. Class ``opacity`` adds one
   soft, blurry bright lesion (an anisotropic Gaussian of random size and strength)
   at a random position inside a lung field; class ``normal`` has none. Per-patient
   variation: positions/sizes of every organ, rib spacing/curvature/phase, a smooth
   low-frequency texture and the exposure (gain, offset).
2. **Acquisition** (the site): an intensity curve y = offset + contrast · x^gamma,
   blur, noise and, for site B, collimation (dark borders). Site A burns a
   laterality marker (a bright block-letter "L") into its top-right corner — always
   the same corner, give or take a pixel, as a site's radiographers do — and its
   presence correlates with the label (93% of opacity, 7% of normal images): the
   planted shortcut the diagnostics must find. Site B has no marker. Site C (a third
   acquisition, the second labelled hospital of the multi-source case, docs/multisource.md)
   has its own curve (gamma 1.3: darker mid-tones), a little blur, more noise, narrow
   collimation, and an "R" marker in the top-left corner that correlates only weakly
   with the label (30% of normal, 70% of opacity images).

The anatomy of site A, B and C images comes from different random streams (they
are different patients); the marker draws come from their own stream, so changing
the marker rates (e.g. to zero, to "paint the marker out") leaves every other pixel
of every image unchanged.

Site B's shift is tuned (``benchmarks/phantom_probe.py``) to be real but closable: a
small CNN trained on site A loses accuracy on site B, and histogram matching or
re-estimated BatchNorm statistics (AdaBN) recover much of it.

The marker is tuned so that the quickstart's source model takes the shortcut *in
part* — the case the audit exists for. The lesion alone is easy (a marker-free model
reaches ~98% on site A), so with a weak correlation (85%/15%, the marker anywhere in
either top corner) the model ignored the marker: hiding it changed ~6% of its
predictions and the audit rightly said "ok". With 95%/5% the marker explains the
labels so well that the lesion's gradient starves: in 2 of 4 seeds the model stopped
early as a pure marker detector (50% on site B, nothing to adapt). At 93%/7% with a
fixed corner the model learns the lesion *and* leans on the marker for the lesions
it is unsure of (painting the marker out costs it 10–30 points on site A).

**Planted group** (optional, ``minority`` > 0; docs/fairness.md): every image gains a
``scanner`` group, ``fixed`` or ``portable``. Portable films have their own appearance —
brighter, flatter and blurrier (PORTABLE_STYLE, applied after the site's curve) — and,
as in intensive care, are taken mostly of sick patients: an opacity image is portable
and a normal one fixed, except for a share ``minority`` of each class, drawn at random
(the Waterbirds construction of Sagawa et al., ICLR 2020). The scanner is then a
spurious cue for the label at both sites, and the two (scanner x class) groups that
contradict it — portable films of normal patients, fixed films with an opacity — are
the minority that plain training gets wrong. The draws come from their own random
stream: with ``minority`` = 0 (the default) nothing changes, and with it the fixed-scanner
images keep their pixels.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adapt.errors import UserError
from adapt.io import atomic_write_bytes, atomic_write_text

CLASSES = ["normal", "opacity"]

#: lesion peak density and Gaussian σ per axis (fraction of the image side), drawn uniformly
LESION_AMPLITUDE = (0.40, 0.55)
LESION_SIGMA = (0.055, 0.09)
#: a lesion centre must lie outside the heart ellipse scaled by √HEART_CLEARANCE (a lesion
#: against the heart shadow reads as cardiomegaly, not as a lung opacity)
HEART_CLEARANCE = 2.0
#: brightness of the burnt-in laterality marker, drawn uniformly per image
MARKER_LEVEL = (0.9, 1.0)
#: the marker's offset from its corner (side and top), glyph pixels, drawn from [lo, hi):
#: the 5×7 glyph with its jitter stays within 6×8 pixels at 64 px, so one 8×8 window
#: (the audit's hot-region size, side/8) can cover — and hide — it on every image
MARKER_OFFSET = (2, 4)
#: the portable scanner's look on top of the site's: y -> offset + contrast * y, blur (σ px at 64 px)
PORTABLE_STYLE = {"offset": 0.15, "contrast": 0.85, "blur": 0.5}


@dataclass(frozen=True)
class SiteStyle:
    """How one site acquires an image (applied to the density map x in [0, 1]).

    y = offset + contrast · x^gamma; then Gaussian blur (σ in pixels at 64 px, scaled
    with the image size), additive Gaussian noise (σ in intensity units) and
    collimation borders of a random width in ``collimation`` (fraction of the side).
    ``marker_rates`` = (P(marker | normal), P(marker | opacity)); ``marker_corner``
    ("left" or "right"): the top corner the site's radiographers put the laterality
    marker in — always the same one at a site, as in practice.
    """

    gamma: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    blur: float = 0.0
    noise: float = 0.015
    collimation: tuple[float, float] = (0.0, 0.0)
    marker_rates: tuple[float, float] = (0.0, 0.0)
    marker_corner: str = "right"


SITES: dict[str, SiteStyle] = {
    # marker rates and corner: see the module docstring (tuned with benchmarks/phantom_probe.py
    # and the quickstart's audit, seeds 0-3)
    "A": SiteStyle(gamma=1.0, contrast=1.0, offset=0.0, blur=0.0, noise=0.015, marker_rates=(0.07, 0.93),
                  marker_corner="right"),
    # tuned with benchmarks/phantom_probe.py: more noise than this (0.03) made histogram
    # matching unreliable (the inverse curve amplifies it 3× past what site A trains on)
    "B": SiteStyle(gamma=0.7, contrast=0.8, offset=0.1, blur=0.8, noise=0.02, collimation=(0.0, 0.03)),
    # a third acquisition for the multi-source case (docs/multisource.md); its own random
    # streams (seeded by the site letter), so sites A and B are unchanged by its existence
    "C": SiteStyle(gamma=1.3, contrast=0.9, offset=0.05, blur=0.5, noise=0.03, collimation=(0.0, 0.02),
                  marker_rates=(0.3, 0.7), marker_corner="left"),
}


@dataclass
class PhantomBatch:
    """A batch of phantom images with their ground truth.

    images: float32 [N, 1, S, S] in [0, 1]; labels: int64 [N] (index into CLASSES);
    marker_boxes / lesion_boxes: int64 [N, 4] = (x0, y0, x1, y1) pixel coordinates,
    ends exclusive (``img[y0:y1, x0:x1]``), all -1 when absent; lung_masks: float32
    [N, S, S] in {0, 1}, the visible lung fields; roi_masks: the patient's body (its
    silhouette, holding lungs, heart, mediastinum and upper abdomen) — the region of
    interest of the attribution checks. What lies outside it is air, where a laterality
    marker, text or the collimation border sits; a model looking just below the heart
    looks at anatomy, and is not called spurious for where it looks.
    """

    images: torch.Tensor
    labels: np.ndarray
    marker_boxes: np.ndarray
    lesion_boxes: np.ndarray
    lung_masks: torch.Tensor
    site: str = "A"
    roi_masks: torch.Tensor | None = None
    #: the planted ``scanner`` group per image ("fixed" / "portable"); None without ``minority``
    scanners: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


def make_phantom(
    site: str,
    n: int,
    seed: int = 0,
    image_size: int = 64,
    *,
    marker_rates: tuple[float, float] | None = None,
    style: SiteStyle | None = None,
    minority: float = 0.0,
) -> PhantomBatch:
    """Generate n phantom chest X-rays of ``site`` ("A", "B" or "C"), balanced classes.

    Deterministic: the same (site, n, seed, image_size) gives identical images.
    ``marker_rates`` overrides the site's (P(marker | normal), P(marker | opacity));
    (0, 0) gives the same images with the marker painted out. ``style`` replaces the
    whole site style (for experiments). ``minority`` > 0 plants the ``scanner`` group
    (see the module docstring).
    """
    site = str(site).upper()
    if site not in SITES:
        raise UserError(f"phantom-cxr: site must be one of {', '.join(SITES)}, got {site!r}")
    if n < 1:
        raise UserError(f"phantom-cxr: n must be positive, got {n}")
    if not 0.0 <= minority < 0.5:
        raise UserError(f"phantom-cxr: minority must be in [0, 0.5), got {minority}")
    if image_size < 16:
        raise UserError(f"phantom-cxr: image_size must be at least 16, got {image_size}")
    st = style if style is not None else SITES[site]
    if marker_rates is not None:
        st = replace(st, marker_rates=(float(marker_rates[0]), float(marker_rates[1])))

    root = np.random.SeedSequence([int(seed), ord(site)])
    rng_label, rng_anat, rng_lesion, rng_marker, rng_acq = (np.random.default_rng(s) for s in root.spawn(5))
    S = int(image_size)

    labels = rng_label.permutation(np.arange(n) % 2).astype(np.int64)
    u, v = _grid(S)
    anat = _sample_anatomy(rng_anat, n)
    density, lung_visible, heart, body = _draw_anatomy(anat, u, v, rng_anat, S)
    lesion, lesion_boxes = _draw_lesions(rng_lesion, anat, labels, u, v, S)
    x = np.clip((density + lesion) * anat["gain"] + anat["bias"], 0.0, 1.0)

    y = st.offset + st.contrast * np.power(x, st.gamma)
    # the collimator's shadow is part of the exposure: blurred and noisy like the rest
    _collimate(rng_acq, y, st.collimation, S)
    y = gaussian_blur(y, st.blur * S / 64.0)
    scanners = _portable_films(y, labels, minority, seed, site, S) if minority > 0 else None
    marker_boxes = _draw_markers(rng_marker, y, labels, st.marker_rates, st.marker_corner, S)
    y = y + st.noise * rng_acq.standard_normal(y.shape, dtype=np.float32)
    images = torch.from_numpy(np.clip(y, 0.0, 1.0).astype(np.float32)[:, None])
    lung_masks = torch.from_numpy((lung_visible > 0.5).astype(np.float32))
    roi_masks = torch.from_numpy(((body > 0.5) | (lung_visible > 0.5) | (heart > 0.5)).astype(np.float32))
    return PhantomBatch(images, labels, marker_boxes, lesion_boxes, lung_masks, site, roi_masks, scanners)


def _portable_films(y: np.ndarray, labels: np.ndarray, minority: float, seed: int, site: str,
                    S: int) -> list[str]:
    """Draw the planted scanner per image (portable for opacity, fixed for normal, except
    for a share ``minority`` of each class) and give portable films their look (in place)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), ord(site), 0x5CA]))
    portable = (labels == 1) ^ (rng.random(len(labels)) < minority)
    st = PORTABLE_STYLE
    y[portable] = gaussian_blur(st["offset"] + st["contrast"] * y[portable], st["blur"] * S / 64.0)
    return ["portable" if p else "fixed" for p in portable]


def write_phantom(root: str | Path, site: str, n: int, seed: int = 0, image_size: int = 64) -> Path:
    """Write a phantom site as 8-bit PNGs ``root/<class>/<site>_<i>.png`` + ``manifest.csv``.

    The folder is an ImageFolder domain and the manifest (``path,label,site``, paths
    relative to it) a CSV domain, so users can look at and reload what they train on.
    The manifest lists the images of this call. Returns ``root``.
    """
    root = Path(root)
    batch = make_phantom(site, n, seed=seed, image_size=image_size)
    pixels = (batch.images[:, 0].numpy() * 255.0 + 0.5).astype(np.uint8)
    rows = []
    for i, (img, label) in enumerate(zip(pixels, batch.labels)):
        rel = Path(CLASSES[label]) / f"{batch.site}_{i}.png"
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        atomic_write_bytes(root / rel, buf.getvalue())
        rows.append((rel.as_posix(), CLASSES[label], batch.site))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "site"])
    writer.writerows(rows)
    atomic_write_text(root / "manifest.csv", out.getvalue())
    return root


# ------------------------------------------------------------------------------ anatomy


def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates u (column) and v (row) in (0, 1), each [1, S, S]."""
    c = (np.arange(S, dtype=np.float32) + 0.5) / S
    v, u = np.meshgrid(c, c, indexing="ij")
    return u[None], v[None]


def _sample_anatomy(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-patient shape/density parameters, each [n, 1, 1] (normalised coordinates)."""

    def U(lo: float, hi: float) -> np.ndarray:
        return rng.uniform(lo, hi, size=(n, 1, 1)).astype(np.float32)

    scale = U(0.92, 1.06)
    lung_cy = U(0.43, 0.49)
    return {
        "body_cx": 0.5 + U(-0.02, 0.02),
        "body_cy": U(0.54, 0.60),
        "body_ax": U(0.40, 0.47),
        "body_ay": U(0.50, 0.58),
        "lung_dx": U(0.17, 0.20) * scale,
        "lung_cy": lung_cy,
        "lung_ax": U(0.12, 0.14) * scale,
        "lung_ay": U(0.25, 0.29) * scale,
        "heart_cx": 0.5 + U(0.03, 0.07),
        "heart_cy": lung_cy + U(0.17, 0.21),
        "heart_ax": U(0.13, 0.17),
        "heart_ay": U(0.10, 0.13),
        "rib_spacing": U(0.085, 0.105),
        "rib_phase": U(0.0, 1.0),
        "rib_curve": U(0.9, 1.8),
        "rib_amp": U(0.06, 0.10),
        "tissue": U(0.50, 0.60),
        "lung_drop": U(0.27, 0.35),
        "heart_add": U(0.18, 0.26),
        "medi_add": U(0.10, 0.16),
        "gain": U(0.93, 1.07),
        "bias": U(-0.03, 0.03),
    }


def _soft_ellipse(u, v, cx, cy, ax, ay, edge: float = 0.06) -> np.ndarray:
    """≈1 inside the ellipse, ≈0 outside, with a soft rim (width ∝ edge)."""
    r = np.sqrt(((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2)
    return _sigmoid((1.0 - r) / edge)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _draw_anatomy(a: dict[str, np.ndarray], u, v, rng: np.random.Generator, S: int):
    """Density map [n, S, S] (bright = dense); visible lung field, heart and body, each [n, S, S]."""
    n = a["tissue"].shape[0]
    body = _soft_ellipse(u, v, a["body_cx"], a["body_cy"], a["body_ax"], a["body_ay"], edge=0.04)
    lung_r = _soft_ellipse(u, v, 0.5 - a["lung_dx"], a["lung_cy"], a["lung_ax"], a["lung_ay"])
    lung_l = _soft_ellipse(u, v, 0.5 + a["lung_dx"], a["lung_cy"], a["lung_ax"], a["lung_ay"])
    heart = _soft_ellipse(u, v, a["heart_cx"], a["heart_cy"], a["heart_ax"], a["heart_ay"], edge=0.08)
    lungs = np.clip(lung_r + lung_l, 0.0, 1.0) * (1.0 - heart)
    # spine + mediastinum: a vertical band on the midline
    medi = _sigmoid((0.065 - np.abs(u - 0.5)) / 0.012) * body
    # posterior ribs: arcs that dip laterally, thin bright bands inside the thorax
    phase = (v - a["rib_curve"] * (u - 0.5) ** 2) / a["rib_spacing"] + a["rib_phase"]
    ribs = (0.5 + 0.5 * np.cos(2.0 * np.pi * phase)) ** 6
    thorax = _soft_ellipse(u, v, 0.5, a["lung_cy"], 0.40, 0.31, edge=0.08)
    texture = _smooth_noise(rng, n, S, cells=6) * 0.03

    air = 0.04
    density = (
        air
        + body * (a["tissue"] - air)
        - lungs * a["lung_drop"]
        # heart and mediastinum overlap; the denser one shows (no double brightness)
        + np.maximum(medi * a["medi_add"], heart * body * a["heart_add"])
        + ribs * thorax * a["rib_amp"]
        + texture * body
    )
    return density.astype(np.float32), lungs.astype(np.float32), heart, body


def _smooth_noise(rng: np.random.Generator, n: int, S: int, cells: int) -> np.ndarray:
    """Low-frequency noise [n, S, S], ~unit std: a cells×cells grid upsampled bicubically."""
    coarse = torch.from_numpy(rng.standard_normal((n, 1, cells, cells), dtype=np.float32))
    return F.interpolate(coarse, size=(S, S), mode="bicubic", align_corners=False)[:, 0].numpy()


def _draw_lesions(rng, a, labels, u, v, S):
    """Lesion density [n, S, S] (zero for normal) and boxes [n, 4] (-1 for normal).

    Centre: uniform in a random lung ellipse (shrunk to 70% so it stays in the field),
    redrawn when it falls in or next to the heart shadow; shape: anisotropic Gaussian, σ per axis
    in LESION_SIGMA·S, peak density in LESION_AMPLITUDE.
    """
    n = len(labels)
    tries = 8
    side = np.where(rng.random((n, tries)) < 0.5, -1.0, 1.0)
    r = 0.7 * np.sqrt(rng.random((n, tries)))
    theta = rng.uniform(0.0, 2.0 * np.pi, (n, tries))
    flat = {k: val.reshape(n, 1) for k, val in a.items()}
    cx = 0.5 + side * flat["lung_dx"] + flat["lung_ax"] * r * np.cos(theta)
    cy = flat["lung_cy"] + flat["lung_ay"] * r * np.sin(theta)
    heart_r2 = ((cx - flat["heart_cx"]) / flat["heart_ax"]) ** 2 + ((cy - flat["heart_cy"]) / flat["heart_ay"]) ** 2
    in_heart = heart_r2 < HEART_CLEARANCE
    pick = np.argmax(~in_heart, axis=1)  # first candidate outside the heart (0 if none)
    rows = np.arange(n)
    cx, cy = cx[rows, pick], cy[rows, pick]
    sx = rng.uniform(*LESION_SIGMA, n)
    sy = rng.uniform(*LESION_SIGMA, n)
    amp = rng.uniform(*LESION_AMPLITUDE, n) * (labels == 1)

    col = lambda z: z.reshape(n, 1, 1).astype(np.float32)  # noqa: E731
    lesion = col(amp) * np.exp(-0.5 * (((u - col(cx)) / col(sx)) ** 2 + ((v - col(cy)) / col(sy)) ** 2))
    boxes = np.stack(
        [
            np.floor((cx - 2 * sx) * S),
            np.floor((cy - 2 * sy) * S),
            np.ceil((cx + 2 * sx) * S),
            np.ceil((cy + 2 * sy) * S),
        ],
        axis=1,
    )
    boxes = np.clip(boxes, 0, S).astype(np.int64)
    boxes[labels != 1] = -1
    return lesion.astype(np.float32), boxes


# ------------------------------------------------------------------------------ acquisition

_GLYPHS = {
    "L": ["X....", "X....", "X....", "X....", "X....", "X....", "XXXXX"],
    "R": ["XXXX.", "X...X", "X...X", "XXXX.", "X.X..", "X..X.", "X...X"],
}
_GLYPH_ARRAYS = {k: np.array([[ch == "X" for ch in row] for row in g], dtype=bool) for k, g in _GLYPHS.items()}


def _draw_markers(rng, y: np.ndarray, labels: np.ndarray, rates: tuple[float, float], corner: str,
                  S: int) -> np.ndarray:
    """Burn the site's bright laterality glyph into its top corner of the chosen images (in place).

    Presence ~ Bernoulli(rates[label]); all random draws are made for every image so
    that the rates change only which images get a marker. The corner is the site's
    (``corner``): "L" on the viewer's right (the patient's left on a PA film), "R" on
    the left; only its offset from the corner (MARKER_OFFSET) and its brightness vary. Returns boxes [n, 4].
    """
    if corner not in ("left", "right"):
        raise UserError(f"phantom-cxr: marker_corner must be 'left' or 'right', got {corner!r}")
    n = len(labels)
    draw = rng.random(n)
    g = max(1, round(S / 64))  # glyph pixel scale
    # the radiographer puts it in about the same place every time: ±1 glyph pixel
    margin = rng.integers(*MARKER_OFFSET, n) * g
    top = rng.integers(*MARKER_OFFSET, n) * g
    level = rng.uniform(*MARKER_LEVEL, n)
    present = draw < np.asarray(rates, dtype=np.float64)[labels]
    right = corner == "right"
    glyph = np.kron(_GLYPH_ARRAYS["L" if right else "R"], np.ones((g, g), dtype=bool))
    h, w = glyph.shape
    boxes = np.full((n, 4), -1, dtype=np.int64)
    for i in np.flatnonzero(present):  # ≤ n small slice writes
        x0 = S - margin[i] - w if right else margin[i]
        y0 = top[i]
        patch = y[i, y0 : y0 + h, x0 : x0 + w]
        patch[glyph] = level[i]
        boxes[i] = (x0, y0, x0 + w, y0 + h)
    return boxes


def gaussian_blur(y: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of [n, S, S] with σ in pixels (reflect padding).

    A weighted sum of shifted views per axis: for these tiny kernels it is several
    times faster than a one-channel ``conv2d``.
    """
    if sigma <= 0:
        return y
    radius = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    S_h, S_w = y.shape[1], y.shape[2]
    p = np.pad(y, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(w * p[:, j : j + S_h, :] for j, w in enumerate(k))
    p = np.pad(rows, ((0, 0), (0, 0), (radius, radius)), mode="reflect")
    return sum(w * p[:, :, j : j + S_w] for j, w in enumerate(k)).astype(np.float32)


def _collimate(rng, y: np.ndarray, width: tuple[float, float], S: int) -> None:
    """Dark borders of random width per side (in place): the collimator's shadow."""
    lo, hi = width
    n = y.shape[0]
    w = np.round(rng.uniform(lo, hi, (n, 4)) * S).astype(np.int64)
    if hi <= 0:
        return
    level = rng.uniform(0.0, 0.05, (n, 1, 1)).astype(np.float32)
    idx = np.arange(S)
    rows_out = (idx[None, :] < w[:, 0:1]) | (idx[None, :] >= S - w[:, 1:2])  # [n, S] top/bottom
    cols_out = (idx[None, :] < w[:, 2:3]) | (idx[None, :] >= S - w[:, 3:4])  # [n, S] left/right
    outside = rows_out[:, :, None] | cols_out[:, None, :]
    np.copyto(y, np.broadcast_to(level, y.shape), where=outside)
