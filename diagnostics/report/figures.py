"""Small figure functions for the audit report: plain data in, a ``data:`` URI out.

Each function takes lists/dicts (as found in the audit JSON), draws one matplotlib figure
with the Agg backend at a low dpi (the whole report must stay well under 5 MB), and
returns ``"data:image/png;base64,..."`` ready for an ``<img src>``. They compute nothing
beyond layout: every number drawn was measured elsewhere. Text drawn from user data
(class names, group values) is rendered literally — mathtext is switched off so a ``$``
in a class name cannot break or inject into the figure.
"""

from __future__ import annotations

import base64
import io
from contextlib import contextmanager
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402

DPI = 100
BEFORE_COLOUR = "#9aa5b1"
AFTER_COLOUR = "#2563eb"
DOMAIN_COLOURS = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2")
PALETTE = (
    "#2563eb", "#ea580c", "#16a34a", "#dc2626", "#9333ea",
    "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d",
)
_RC = {
    "text.parse_math": False,
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9ca3af",
    "axes.labelcolor": "#374151",
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@contextmanager
def _style():
    with plt.rc_context(_RC):
        yield


def _short(text: Any, n: int = 18) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def fig_to_data_uri(fig) -> str:
    """Encode a figure as a PNG data URI and close it."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def array_to_data_uri(img: np.ndarray) -> str:
    """A [H,W] or [H,W,3] float image in [0,1] as a PNG data URI (no resampling)."""
    arr = np.clip(np.nan_to_num(np.asarray(img, dtype=np.float64)), 0.0, 1.0)
    pil = Image.fromarray((arr * 255).round().astype(np.uint8))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- images


def image_array(item: Mapping) -> np.ndarray | None:
    """The picture of a gallery item as [H,W] or [H,W,3] floats in [0,1], or None.

    Accepts ``image_png_b64`` (a PNG, with or without a ``data:`` prefix; decoded, so
    nothing but real pixels reaches the report) or ``image`` / ``pixels`` as nested lists
    shaped [H,W], [C,H,W] or [H,W,C] (C in 1, 3) in [0,1] (or 0–255 when the max > 1).
    """
    b64 = item.get("image_png_b64")
    if b64:
        text = str(b64)
        if text.startswith("data:"):
            text = text.split(",", 1)[-1]
        try:
            pil = Image.open(io.BytesIO(base64.b64decode(text, validate=False)))
            pil.load()
        except Exception:
            return None
        pil = pil.convert("L") if pil.mode in ("L", "I", "I;16", "F", "1", "LA") else pil.convert("RGB")
        arr = np.asarray(pil, dtype=np.float64)
        return arr / (65535.0 if arr.max() > 255 else 255.0)
    raw = item.get("image", item.get("pixels"))
    if raw is None:
        return None
    arr = np.asarray(raw, dtype=np.float64)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.moveaxis(arr, 0, -1)  # [C,H,W] -> [H,W,C]
    elif arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] in (1, 3) and arr.shape[0] < arr.shape[1]:
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or arr.size == 0:
        return None
    if np.nanmax(arr) > 1.0:
        arr = arr / 255.0
    return np.clip(np.nan_to_num(arr), 0.0, 1.0)


def _norm_map(m: Any) -> np.ndarray | None:
    """|attribution| as [H,W] scaled to its maximum (channels summed for [C,H,W])."""
    arr = np.abs(np.nan_to_num(np.asarray(m, dtype=np.float64)))
    if arr.ndim == 3:
        arr = arr.sum(axis=0)
    if arr.ndim != 2 or arr.size == 0:
        return None
    top = arr.max()
    return arr / top if top > 0 else arr


def _resize(arr: np.ndarray, hw: tuple[int, int], *, smooth: bool) -> np.ndarray:
    """Resize a float [H,W] or [H,W,3] array in [0,1] (PIL; bilinear or nearest)."""
    if arr.shape[:2] == hw:
        return arr
    h, w = hw
    chans = [arr] if arr.ndim == 2 else [arr[..., c] for c in range(arr.shape[-1])]
    resample = Image.BILINEAR if smooth else Image.NEAREST
    out = [np.asarray(Image.fromarray(c.astype(np.float32), mode="F").resize((w, h), resample)) for c in chans]
    return out[0] if arr.ndim == 2 else np.stack(out, axis=-1)


def _upscale_factor(h: int, w: int, target: int) -> int:
    return max(1, target // max(h, w, 1))


def _outline(rgb: np.ndarray, box: Sequence[float] | None, scale: int, colour=(0.13, 0.77, 0.37)) -> None:
    """Draw the [x0, y0, x1, y1] hot box (pixel coords of the original image) in place."""
    if box is None or len(box) != 4:
        return
    try:
        x0, y0, x1, y1 = (int(round(float(v) * scale)) for v in box)
    except (TypeError, ValueError):
        return
    h, w = rgb.shape[:2]
    if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
        return
    x0, x1, y0, y1 = min(x0, w - 1), min(x1, w) - 1, min(y0, h - 1), min(y1, h) - 1
    t = max(1, scale // 2)  # line thickness, in upscaled pixels
    rgb[y0:y0 + t, x0:x1 + 1] = colour
    rgb[max(y1 - t + 1, 0):y1 + 1, x0:x1 + 1] = colour
    rgb[y0:y1 + 1, x0:x0 + t] = colour
    rgb[y0:y1 + 1, max(x1 - t + 1, 0):x1 + 1] = colour


def attribution_tile(
    image: np.ndarray | None,
    amap: Any = None,
    *,
    hot_box: Sequence[float] | None = None,
    alpha: float = 0.5,
    size: int = 128,
) -> str | None:
    """One picture with its |attribution| overlaid (inferno) and the hot box outlined.

    ``image``: [H,W] or [H,W,3] in [0,1] (see :func:`image_array`) or None (map alone);
    ``amap``: [H,W] attributions (a coarse Grad-CAM map is stretched to the image);
    ``hot_box``: [x0, y0, x1, y1] in image pixels. Upscaled by an integer factor to about
    ``size`` pixels with nearest-neighbour, so every original pixel stays visible.
    """
    m = _norm_map(amap) if amap is not None else None
    if image is None and m is None:
        return None
    cmap = matplotlib.colormaps["inferno"]
    if image is not None:
        base = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
        h, w = base.shape[:2]
        if m is not None:
            m = np.clip(_resize(m, (h, w), smooth=True), 0, 1)
            # the overlay's weight follows the attribution, so cold areas keep the image
            heat = cmap(m)[..., :3]
            weight = alpha * m[..., None] ** 0.7
            base = (1 - weight) * base + weight * heat
    else:
        base = cmap(m)[..., :3]
        h, w = base.shape[:2]
    k = _upscale_factor(h, w, size)
    rgb = np.repeat(np.repeat(base, k, axis=0), k, axis=1).copy()
    _outline(rgb, hot_box, k)
    return array_to_data_uri(rgb)


def map_tile(amap: Any, *, hot_box: Sequence[float] | None = None, size: int = 128) -> str | None:
    """A (mean) attribution map alone, inferno, scaled to its maximum, hot box outlined."""
    return attribution_tile(None, amap, hot_box=hot_box, size=size)


# --------------------------------------------------------------------------- metrics


def metric_bars(stages: Sequence[tuple[str, Mapping]]) -> str | None:
    """Grouped bars: (source, target) × (accuracy, macro-F1), one bar per stage.

    ``stages``: [(stage name, metrics section {"source_test": M, "target_test": M})].
    Missing values leave a gap in the group.
    """
    cats = [("source_test", "accuracy", "source\naccuracy"), ("source_test", "macro_f1", "source\nmacro-F1"),
            ("target_test", "accuracy", "target\naccuracy"), ("target_test", "macro_f1", "target\nmacro-F1")]

    def val(m, split, key):
        sec = (m or {}).get(split) or {}
        v = sec.get(key)
        return None if v is None else float(v)

    keep = [c for c in cats if any(val(m, c[0], c[1]) is not None for _, m in stages)]
    if not keep or not stages:
        return None
    colours = [BEFORE_COLOUR, AFTER_COLOUR] if len(stages) == 2 else list(PALETTE)
    width = 0.8 / len(stages)
    with _style():
        fig, ax = plt.subplots(figsize=(1.05 * len(keep) + 0.6, 2.5))
        x = np.arange(len(keep))
        for i, (name, m) in enumerate(stages):
            vals = [val(m, s, k) for s, k, _ in keep]
            xs = x - 0.4 + width * (i + 0.5)
            for xi, v in zip(xs, vals):
                if v is None:
                    continue
                ax.bar(xi, 100 * v, width * 0.92, color=colours[i % len(colours)])
                ax.text(xi, 100 * v + 1.2, f"{100 * v:.1f}", ha="center", va="bottom", fontsize=7.5, color="#374151")
        ax.set_xticks(x)
        ax.set_xticklabels([c[2] for c in keep])
        ax.set_ylim(0, 112)
        ax.set_yticks([0, 25, 50, 75, 100])
        ax.set_ylabel("%")
        ax.grid(axis="y", color="#e5e7eb", linewidth=0.8)
        ax.set_axisbelow(True)
        handles = [Patch(color=colours[i % len(colours)], label=_short(name, 32)) for i, (name, _) in enumerate(stages)]
        ax.legend(handles=handles, frameon=False, fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.0),
                  ncol=min(len(stages), 2), borderaxespad=0.2)
        return fig_to_data_uri(fig)


def confusion_matrix(confusion: Sequence[Sequence[float]], classes: Sequence[str], *, title: str = "") -> str | None:
    """Confusion matrix (rows = true class, columns = predicted), counts + row share."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.size == 0 or cm.shape[0] != cm.shape[1]:
        return None
    k = cm.shape[0]
    names = [str(c) for c in classes] if len(classes) == k else [str(i) for i in range(k)]
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = min(1.1 + 0.42 * k, 6.0)
    with _style():
        fig, ax = plt.subplots(figsize=(side + 0.6, side))
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8 if k <= 6 else 6.5,
                            color="white" if share[i, j] > 0.55 else "#111827")
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        tilt = k > 3 or max(len(n) for n in names) > 8
        ax.set_xticklabels([_short(n, 12) for n in names], rotation=35 if tilt else 0, ha="right" if tilt else "center")
        ax.set_yticklabels([_short(n, 14) for n in names])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for s in ax.spines.values():
            s.set_visible(False)
        if title:
            ax.set_title(_short(title, 40), loc="left", fontsize=9)
        return fig_to_data_uri(fig)


def class_histogram(series: Sequence[tuple[str, Mapping[str, float]]], classes: Sequence[str] = (),
                    *, title: str = "") -> str | None:
    """Grouped bars of class shares: e.g. source prior vs target predictions (vs BBSE mix).

    ``series``: [(label, {class: share in [0,1]})], drawn in order.
    """
    series = [(n, s) for n, s in series if s]
    if not series:
        return None
    order = [str(c) for c in classes] or []
    for _, s in series:
        for c in s:
            if str(c) not in order:
                order.append(str(c))
    k = len(order)
    colours = ["#9ca3af", "#2563eb", "#f59e0b", "#16a34a", "#dc2626"]
    width = 0.8 / len(series)
    with _style():
        fig, ax = plt.subplots(figsize=(min(1.2 + 0.75 * k * max(1, len(series) / 2), 9.0), 2.5))
        x = np.arange(k)
        for i, (name, s) in enumerate(series):
            vals = [100 * float(s.get(c, s.get(str(c), 0.0)) or 0.0) for c in order]
            ax.bar(x - 0.4 + width * (i + 0.5), vals, width * 0.92, color=colours[i % len(colours)], label=_short(name, 30))
        ax.set_xticks(x)
        ax.set_xticklabels([_short(c, 12) for c in order], rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center")
        ax.set_ylim(0, 105)
        ax.set_ylabel("% of images")
        ax.grid(axis="y", color="#e5e7eb", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.legend(frameon=False, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        if title:
            ax.set_title(_short(title, 50), loc="left", fontsize=9)
        return fig_to_data_uri(fig)


def embedding_scatter(coords: Sequence[Sequence[float]], colour_by: Sequence[Any], *, title: str = "",
                      max_legend: int = 10) -> str | None:
    """2-D embedding (UMAP) coloured by a categorical column (domain or class)."""
    xy = np.asarray(coords, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[0] == 0 or xy.shape[1] < 2:
        return None
    keys = [str(c) for c in colour_by] if len(colour_by) == len(xy) else ["all"] * len(xy)
    cats = list(dict.fromkeys(keys))
    size = max(2.0, min(14.0, 3000.0 / len(xy)))
    with _style():
        fig, ax = plt.subplots(figsize=(3.4, 3.0))
        keys_arr = np.asarray(keys, dtype=object)
        for i, c in enumerate(cats):
            sel = keys_arr == c
            ax.scatter(xy[sel, 0], xy[sel, 1], s=size, alpha=0.7, linewidths=0,
                       color=PALETTE[i % len(PALETTE)], label=_short(c, 20) if i < max_legend else None, rasterized=True)
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ("left", "bottom"):
            ax.spines[s].set_color("#d1d5db")
        ax.legend(frameon=False, fontsize=7, markerscale=2.0 if size < 6 else 1.0, loc="upper left",
                  bbox_to_anchor=(1.0, 1.0))
        if title:
            ax.set_title(_short(title, 44), loc="left", fontsize=9)
        return fig_to_data_uri(fig)


def group_bars(rows: Iterable[tuple[str, float | None, float | None]], *, stage_names: tuple[str, str] = ("before", "after"),
               title: str = "") -> str | None:
    """Horizontal bars of accuracy per group value: [(value, acc_before, acc_after)]."""
    rows = list(rows)
    if not rows:
        return None
    with _style():
        fig, ax = plt.subplots(figsize=(4.6, 0.5 + 0.32 * len(rows) * (2 if rows[0][2] is not None else 1)))
        y = np.arange(len(rows))
        has_after = any(r[2] is not None for r in rows)
        h = 0.38 if has_after else 0.7
        vb = [100 * (r[1] or 0.0) for r in rows]
        ax.barh(y - (h / 2 if has_after else 0), vb, h, color=BEFORE_COLOUR, label=_short(stage_names[0], 28))
        if has_after:
            va = [100 * (r[2] or 0.0) for r in rows]
            ax.barh(y + h / 2, va, h, color=AFTER_COLOUR, label=_short(stage_names[1], 28))
        ax.set_yticks(y)
        ax.set_yticklabels([_short(r[0], 16) for r in rows])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("accuracy %")
        ax.grid(axis="x", color="#e5e7eb", linewidth=0.8)
        ax.set_axisbelow(True)
        ax.legend(frameon=False, fontsize=7.5, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        if title:
            ax.set_title(_short(title, 40), loc="left", fontsize=9)
        return fig_to_data_uri(fig)


def drift_timeline(labels: Sequence[str], p_adjusted: Mapping[str, Sequence[float | None]],
                   alphas: Sequence[float | None], verdicts: Sequence[str],
                   frechet: Sequence[float | None], conf_drop: Sequence[float | None]) -> str | None:
    """The drift checks over time: each test's Holm-adjusted p-value (log scale) against the
    level alpha it was held to, the verdict of each check; below, the Fréchet distance and
    the confidence drop. ``labels``: one short x label per check, oldest first."""
    n = len(labels)
    if n == 0:
        return None
    x = np.arange(n)
    colour = {"drift": "#b91c1c", "inconclusive": "#b45309", "no drift": "#15803d"}
    with _style():
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(min(11.0, 6.5 + 0.3 * n), 5.2), sharex=True,
                                          gridspec_kw={"height_ratios": [3, 2]})
        for i, (name, values) in enumerate(p_adjusted.items()):
            ys = np.array([np.nan if v is None else max(float(v), 1e-6) for v in values])
            top.plot(x, ys, marker="o", ms=4, lw=1.4, color=PALETTE[i % len(PALETTE)], label=_short(name, 24))
        if any(a is not None for a in alphas):
            top.step(x, [np.nan if a is None else a for a in alphas], where="mid", color="#111827", lw=1, ls="--",
                     label="alpha (after Holm)")
        top.set_yscale("log")
        top.set_ylim(5e-7, 1.5)
        # plain tick labels: mathtext is off (user text is drawn literally), so no 10^k
        top.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        top.set_ylabel("adjusted p-value")
        top.set_title("Drift tests per check (below the dashed line: the test fires)")
        for xi, v in zip(x, verdicts):
            top.axvspan(xi - 0.45, xi + 0.45, color=colour.get(v, "#9ca3af"), alpha=0.08, lw=0)
        top.legend(fontsize=7.5, loc="lower left", ncol=3, frameon=False)
        fr = np.array([np.nan if v is None else float(v) for v in frechet])
        bottom.plot(x, fr, marker="s", ms=4, color=PALETTE[0], label="Fréchet distance")
        bottom.set_ylabel("Fréchet distance")
        twin = bottom.twinx()
        cd = np.array([np.nan if v is None else float(v) for v in conf_drop])
        twin.plot(x, cd, marker="^", ms=4, color=PALETTE[1], label="confidence drop")
        twin.axhline(0, color="#9ca3af", lw=0.6)
        twin.set_ylabel("confidence drop")
        twin.spines["right"].set_visible(True)
        handles = bottom.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        bottom.legend(handles, [h.get_label() for h in handles], fontsize=7.5, loc="upper left", frameon=False)
        bottom.set_xticks(x)
        bottom.set_xticklabels([_short(s, 16) for s in labels], rotation=30, ha="right", fontsize=7.5)
        fig.tight_layout()
    return fig_to_data_uri(fig)
