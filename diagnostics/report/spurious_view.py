"""The report's spurious-feature card data: a :class:`~diagnostics.attribution.SpuriousResult`
in the shape ``audit.json`` stores it (the verdict, the hot box, border and occlusion figures,
per-class mean maps and a gallery of images with their attribution maps, PNGs inline so the
report stays self-contained). Shapes what the attribution measured; computes no statistic."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["spurious_section", "png_base64", "small_map"]


def png_base64(image: torch.Tensor) -> str:
    """An image [C, H, W] in [0, 1] as a base64 8-bit PNG (compact, for the report JSON)."""
    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    pil = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(np.moveaxis(arr, 0, -1))
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def small_map(m: torch.Tensor, side: int = 32) -> list:
    """An attribution map scaled to max 1, average-pooled to at most side x side."""
    t = m[None, None].float()
    if t.shape[-1] > side:
        t = torch.nn.functional.adaptive_avg_pool2d(t, side)
    t = t[0, 0]
    t = t / t.max() if float(t.max()) > 0 else t
    return np.round(t.numpy().astype(np.float64), 2).tolist()


def spurious_section(result, images: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """A :class:`~diagnostics.attribution.SpuriousResult` in the report's shape: the
    verdict, the hot box, border figures, occlusion results, per-class mean maps and a
    gallery of the most-attributed images with their maps."""
    d = result.to_dict()
    gallery = []
    pos = {idx: j for j, idx in enumerate(result.indices)}
    for cls, idxs in result.gallery.items():
        for idx in idxs:
            j = pos.get(idx)
            if j is None:
                continue
            gallery.append({
                "image_png_b64": png_base64(images[idx]),
                "map": small_map(result.maps[j]),
                "label": classes[result.labels[j]] if result.labels[j] >= 0 else None,
                "pred": classes[result.predictions[j]],
            })
    occlusion = {
        "hot_region_flipped_share": d["hot_region"].get("occlusion", {}).get("flipped_share")
        if isinstance(d["hot_region"].get("occlusion"), dict) else None,
        "border_flipped_share": d["border"]["occlusion"].get("flipped_share"),
        "control_flipped_share": d["control_flipped_share"],
    }
    if d.get("known_boxes"):
        occlusion["known_artifact_flipped_share"] = (d["known_boxes"].get("occlusion") or {}).get("flipped_share")
        occlusion["known_artifact_share"] = d["known_boxes"].get("share")
        occlusion["hot_known_iou"] = d["known_boxes"].get("best_candidate_iou")
    if d.get("reference"):
        occlusion["before_region_share"] = d["reference"].get("share")
        occlusion["before_region_flipped_share"] = (d["reference"].get("occlusion") or {}).get("flipped_share")
    return {
        "verdict": d["verdict"],
        "hot_box": list(result.hot_box),
        "border_share": d["border"]["share"],
        "border_area_share": d["border"]["area_share"],
        "roi_outside": d.get("roi_outside"),
        "occlusion": occlusion,
        "convergence_delta": d.get("convergence_delta"),
        "method": d["method"],
        "n": d["n"],
        "mean_maps": {classes[int(c)]: m for c, m in d["class_maps"].items()},
        "gallery": gallery,
        "seconds": d["seconds"],
    }
