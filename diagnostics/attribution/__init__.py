"""Spurious-feature analysis: attributions, region scores, occlusion counterfactuals.

A classifier that moved from hospital A to hospital B may have learned a shortcut —
a laterality marker, burnt-in text, the collimation edge — instead of the anatomy.
This package finds such a shortcut in three steps:

1. **Attribute** (:func:`attribute`, in :mod:`.maps`): a per-pixel map ``|a(x)|`` of
   how much each pixel drove the predicted logit, by Integrated Gradients
   (Sundararajan et al., ICML 2017) or Grad-CAM (Selvaraju et al., ICCV 2017).
2. **Score** where the attribution mass sits (:mod:`.shares`, on the geometry of
   :mod:`.regions`), as shares of the per-image total mass: in the image border band,
   outside a region-of-interest mask, inside given boxes; the mean map per (domain,
   class) and its hottest window.
3. **Confirm** with a counterfactual (:mod:`.occlusion`; Zech et al., PLoS Med 2018
   used the same idea for hospital tokens): occlude the hot window with each image's
   mean intensity and count the predictions that change. Attention alone is not
   reliance; a region is called spurious only when it sits where the anatomy is not,
   carries a disproportionate share of the attribution, AND hiding it changes decisions.

:func:`spurious_analysis` (:mod:`.analysis`) runs the three steps; :mod:`.findings`
reads its numbers (:func:`region_findings`, :func:`compare_reliance`); :mod:`.results`
holds the result dataclasses and their JSON form.

Images are float32 in [0, 1], ``[N, C, H, W]``; normalisation lives inside the model,
so occlusion and attribution work in plain pixel space. Maps are ``[N, H, W]``
float32, non-negative. Boxes are ``(x0, y0, x1, y1)`` pixel coordinates with
exclusive ends (``map[y0:y1, x0:x1]``), the convention of the phantom's marker boxes;
a row of ``-1`` means "no box".
"""
from __future__ import annotations

from diagnostics.attribution.analysis import DEFAULT_THRESHOLDS, spurious_analysis
from diagnostics.attribution.findings import compare_reliance, region_findings
from diagnostics.attribution.maps import METHODS, AttributionResult, attribute
from diagnostics.attribution.occlusion import control_boxes, occlude, occlusion_flips
from diagnostics.attribution.predictions import frozen_eval, predict
from diagnostics.attribution.regions import (Box, band_width, border_mask, box_iou, box_mask, hottest_region,
                                             roi_hull)
from diagnostics.attribution.results import OcclusionResult, RegionScore, SpuriousResult
from diagnostics.attribution.shares import (RegionShare, border_share, box_share, map_correlation, mean_maps,
                                            roi_outside_share, top_attributed)

__all__ = [
    "AttributionResult",
    "Box",
    "OcclusionResult",
    "RegionShare",
    "RegionScore",
    "SpuriousResult",
    "DEFAULT_THRESHOLDS",
    "METHODS",
    "attribute",
    "band_width",
    "border_mask",
    "border_share",
    "box_iou",
    "box_mask",
    "box_share",
    "compare_reliance",
    "control_boxes",
    "hottest_region",
    "map_correlation",
    "mean_maps",
    "occlusion_flips",
    "roi_hull",
    "roi_outside_share",
    "spurious_analysis",
    "region_findings",
    "predict",
    "occlude",
    "frozen_eval",
    "top_attributed",
]
