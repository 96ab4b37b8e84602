"""The results of the attribution checks as plain dataclasses, and their JSON form
(``to_dict``: rounded numbers, NaN/inf as None, maps downsampled for the report)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diagnostics.attribution.regions import Box


def rounded(x, nd: int = 4):
    """Round for JSON; NaN/inf/None -> None."""
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


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



@dataclass
class RegionScore:
    """One candidate region of :func:`spurious_analysis`.

    source: which mean map it is the hottest window of ("all" or "class <c>").
    share / area_share: mean share of |attribution| in the box over the images of that
        source (all images, or that class's), and the box's share of the image area.
    in_border / outside_roi: fraction of the box's pixels in the border band / outside
        the convex hull of the mean ROI mask (:func:`roi_hull`; None without masks).
    occlusion: predictions with the box occluded, on ``rows``.
    rows: the analysed images (positions) it was scored on — the half it was *not* chosen
        on, of that source's images (all, or one class's).
    """

    box: Box
    source: str
    share: float
    area_share: float
    in_border: float
    outside_roi: float | None
    occlusion: OcclusionResult
    rows: list[int] | None = None

    @property
    def ratio(self) -> float:
        return self.share / self.area_share if self.area_share > 0 else float("nan")

    def to_dict(self) -> dict:
        return {"box": list(self.box), "source": self.source, "share": rounded(self.share),
                "area_share": rounded(self.area_share), "ratio": rounded(self.ratio, 3),
                "in_border": rounded(self.in_border, 3), "outside_roi": rounded(self.outside_roi, 3),
                "occlusion": self.occlusion.to_dict()}



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
            "control_flipped_share": rounded(self.control_flips),
            "border": {"band_px": self.border_px, "share": rounded(self.border_share),
                       "area_share": rounded(self.border_area_share), "ratio": rounded(self.border_ratio, 3),
                       "occlusion": self.border_occlusion.to_dict()},
            "roi_outside": None if self.roi_outside_share is None else {
                "share": rounded(self.roi_outside_share), "area_share": rounded(self.roi_outside_area_share),
                "ratio": rounded(self.roi_outside_share / self.roi_outside_area_share
                            if self.roi_outside_area_share else None, 3)},
            "known_boxes": None if self.known_box_share is None else {
                "share": rounded(self.known_box_share), "area_share": rounded(self.known_box_area_share),
                "ratio": rounded(self.known_box_share / self.known_box_area_share
                            if self.known_box_area_share else None, 3),
                "best_candidate_iou": rounded(self.hot_known_iou, 3),
                "occlusion": None if self.known_box_occlusion is None else self.known_box_occlusion.to_dict()},
            "reference": None if self.reference_box is None else {
                "box": list(self.reference_box), "share": rounded(self.reference_share),
                "occlusion": None if self.reference_occlusion is None else self.reference_occlusion.to_dict()},
            "convergence_delta": rounded(self.convergence_delta, 6),
            "mean_map": small(self.mean_map),
            "class_maps": {str(c): small(m) for c, m in self.class_maps.items()},
            "gallery": {str(c): v for c, v in self.gallery.items()},
            "thresholds": self.thresholds,
            "verdict": self.verdict,
            "seconds": rounded(self.seconds, 2),
        }
        if include_maps:
            d["maps"] = np.round(self.maps.numpy().astype(np.float64), 5).tolist()
        return d

