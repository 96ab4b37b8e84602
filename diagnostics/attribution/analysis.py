"""The spurious-feature analysis of one model on one domain: :func:`spurious_analysis`.

Attribute (:mod:`~diagnostics.attribution.maps`), score where the attribution mass
sits (:mod:`~diagnostics.attribution.shares`), confirm by occlusion
(:mod:`~diagnostics.attribution.occlusion`), and read the numbers
(:func:`~diagnostics.attribution.findings.region_findings`).
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from adapt.data.splits import stratified_subsample
from adapt.errors import UserError
from diagnostics.attribution.findings import region_findings
from diagnostics.attribution.maps import attribute
from diagnostics.attribution.occlusion import control_boxes, occlusion_flips
from diagnostics.attribution.predictions import check_images, predict
from diagnostics.attribution.regions import (Box, band_width, border_mask, box_iou, box_mask, boxes_np,
                                             hottest_region, masks_np, roi_hull, valid_box)
from diagnostics.attribution.results import RegionScore, SpuriousResult
from diagnostics.attribution.shares import (border_share, box_share, mean_maps, roi_outside_share,
                                            top_attributed)

#: Verdict thresholds of :func:`spurious_analysis` (override any key via ``thresholds=``).
DEFAULT_THRESHOLDS = {
    # The candidate window must hold at least this multiple of its area's fair share of
    # the attribution (an 8x8 window on 64x64 is 1.6% of the area: 2.5x means ≥ 3.9%).
    # A shortcut present in only part of the images is diluted in the mean, hence modest.
    "share_ratio": 2.5,
    # Occluding it must flip at least this fraction of all predictions ...
    "flip_share": 0.05,
    # ... and at least this multiple of the flips that same-size patches elsewhere cause
    # (hiding any patch changes some borderline predictions).
    "flip_over_control": 2.0,
    # A window counts as "in the border" / "outside the ROI" when at least this
    # fraction of its pixels is there.
    "location_fraction": 0.5,
    # The whole border band: attention ratio that earns a warning (and, with
    # flip_over_control x the patch base rate of flips, a fail).
    "border_ratio": 2.0,
}


def split_halves(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions 0..N−1 split into two halves, alternating within each class (stratified,
    deterministic): (pick, judge). With fewer than 4 images both halves are all of them."""
    lab = np.asarray(labels).reshape(-1)
    n = len(lab)
    if n < 4:
        everyone = np.arange(n)
        return everyone, everyone
    first = np.zeros(n, dtype=bool)
    for c in np.unique(lab):
        pos = np.flatnonzero(lab == c)
        first[pos[::2]] = True
    return np.flatnonzero(first), np.flatnonzero(~first)


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
    baseline: str | float | Tensor = "mean",
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
    subsample of ≤ ``max_samples``, the per-class maps and accuracy under occlusion —
    the attributed class is always the *predicted* one: we explain the decision made).
    masks: optional ROI masks ([H, W] or [N, H, W], 1 = anatomy). known_boxes: optional
    [N, 4] boxes of a known artefact (the phantom's marker; −1 rows = none), scored and
    occluded on the images that have one. reference_box: a box to score and occlude too,
    e.g. the hot box of the model *before* adaptation, so the after-model is tested on it.
    hot_size: window side (default ⌈side/8⌉). baseline: IG reference, default "mean"
    (each image's flat mean): a black baseline credits IG ∝ x·∂F/∂x to bright pixels,
    so dense anatomy (heart, spine) would dominate every map whether used or not.

    Candidates: the hottest window of the mean map, and the hottest window inside the
    suspect zone (border band ∪ outside the ROI hull) of the overall and of each class's
    mean map — chosen on one half of the images (:func:`split_halves`) and scored (share,
    occlusion, same-size control patches) on the other, so that the hottest of many
    windows is not judged on the very images that made it hottest.
    Verdict (thresholds: :data:`DEFAULT_THRESHOLDS`):
      * **fail** (flagged) when a candidate lies in the border band or outside the ROI,
        holds ≥ ``share_ratio``× its area's share of the attribution, and occluding it
        flips ≥ ``flip_share`` of the predictions and ≥ ``flip_over_control``× the flips
        of same-size windows elsewhere; or when the whole border band is over-attended
        (≥ ``border_ratio``) and occluding it flips that many.
      * **warn** when the attention criteria hold but occlusion barely changes the
        predictions (attention without reliance), or the border is over-attended.
      * **ok** otherwise.
    """
    t0 = time.perf_counter()
    images = check_images(images, "spurious_analysis")
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

    idx = stratified_subsample(lab_all, max_samples, seed, what="spurious_analysis: max_samples")
    sel = torch.from_numpy(idx)
    x = images[sel]
    lab = lab_all[idx]
    m_sel = None
    if masks is not None:
        mk = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
        m_sel = mk if mk.ndim == 2 else mk[idx]

    preds = predict(model, x, batch_size=256)
    att = attribute(model, x, preds, method=method, baseline=baseline, n_steps=n_steps,
                    internal_batch_size=internal_batch_size, batch_size=batch_size)
    maps = att.maps
    mm = mean_maps(maps, lab, domain_name)
    mean_map = mm[(domain_name, -1)]
    class_maps = {c: v for (d, c), v in mm.items() if c != -1}

    side = hot_size if hot_size is not None else max(1, math.ceil(min(h, w) / 8))
    size = (side, side) if isinstance(side, (int, np.integer)) else (int(side[0]), int(side[1]))
    b_px = band_width(h, w, band_frac)
    band = border_mask(h, w, band_px=b_px)
    mean_roi = None if m_sel is None else roi_hull(masks_np(m_sel, tuple(maps.shape)).mean(0) > 0.5)

    # The hottest of many windows is hot partly by chance (selection bias): candidates are
    # chosen on one half of the images and scored — share and occlusion — on the other.
    pick, judge = split_halves(lab)
    mm_pick = mean_maps(maps[torch.from_numpy(pick)], lab[pick], domain_name)
    pick_map = mm_pick[(domain_name, -1)]
    pick_class_maps = {c: v for (d, c), v in mm_pick.items() if c != -1}

    def score(box: Box, source: str, rows: np.ndarray) -> RegionScore:
        k = box_mask(h, w, box)
        rows = np.intersect1d(rows, judge)
        sel_rows = torch.from_numpy(rows)
        rs = box_share(maps[sel_rows], box)
        return RegionScore(
            box=box, source=source, share=rs.mean_share, area_share=float(rs.area_share),
            in_border=float(band[k].mean()),
            outside_roi=None if mean_roi is None else float((~mean_roi)[k].mean()),
            occlusion=occlusion_flips(model, x[sel_rows], box, labels=lab[rows], predictions=preds[sel_rows]),
            rows=[int(r) for r in rows])

    # Candidates: the hottest window overall, and the hottest window in the suspect
    # zone (border band, or outside the anatomy) of the overall and per-class mean
    # maps — a marker in a corner is rarely the hottest spot of the whole image, and a
    # shortcut tied to one class shows most clearly in that class's map.
    suspect_zone = band if mean_roi is None else band | ~mean_roi
    everyone = np.arange(len(idx))
    hot = score(hottest_region(pick_map, size), "all", everyone)
    candidates = [hot]
    for c, cmap in [("all", pick_map), *pick_class_maps.items()]:
        box = hottest_region(cmap, size, within=suspect_zone, min_fraction=th["location_fraction"])
        source = "all" if c == "all" else f"class {c}"
        # The same window scored on one class's images is a different candidate: a
        # shortcut tied to that class concentrates there (the marker on site A holds
        # 2x its area share over all images but 3x over the opacity images).
        if box is not None and all((box, source) != (other.box, other.source) for other in candidates):
            rows = everyone if c == "all" else np.flatnonzero(lab == c)
            candidates.append(score(box, source, rows))

    bs = border_share(maps, band_px=b_px)
    occ_border = occlusion_flips(model, x, band, labels=lab, predictions=preds)
    rng = np.random.default_rng(seed + 1)
    controls = control_boxes(h, w, size, [c.box for c in candidates], band, n_control, rng)
    held = torch.from_numpy(judge)
    control = float(np.mean([occlusion_flips(model, x[held], b, predictions=preds[held]).flipped_share
                             for b in controls])) if controls else float("nan")

    roi_share = roi_area = None
    if m_sel is not None:
        ro = roi_outside_share(maps, m_sel)
        roi_share, roi_area = ro.mean_share, float(np.mean(ro.area_share))

    kb_share = kb_area = kb_occ = kb_iou = None
    if known_boxes is not None:
        kb = boxes_np(known_boxes, n_all)[idx]
        has = np.array([valid_box(b) for b in kb])
        if has.any():
            hs = torch.from_numpy(has)
            ks = box_share(maps[hs], kb[has])
            kb_share, kb_area = ks.mean_share, float(np.nanmean(np.asarray(ks.area_share, dtype=float)))
            kb_occ = occlusion_flips(model, x[hs], kb[has], labels=lab[has], predictions=preds[hs])
            distinct = {tuple(int(v) for v in b) for b in kb[has]}
            kb_iou = max(box_iou(c.box, b) for c in candidates for b in distinct)

    ref = None if reference_box is None else tuple(int(v) for v in reference_box)
    ref_share = ref_occ = None
    if ref is not None:
        ref_share = box_share(maps, ref).mean_share
        ref_occ = occlusion_flips(model, x, ref, labels=lab, predictions=preds)

    result = SpuriousResult(
        domain=domain_name, method=method, n=len(idx), image_size=(h, w),
        indices=[int(i) for i in idx], labels=[int(v) for v in lab], predictions=preds.tolist(),
        maps=maps, mean_map=mean_map, class_maps=class_maps,
        hot=hot, candidates=candidates, control_flips=control,
        border_px=b_px, border_share=bs.mean_share, border_area_share=float(bs.area_share),
        border_occlusion=occ_border, roi_outside_share=roi_share, roi_outside_area_share=roi_area,
        known_box_share=kb_share, known_box_area_share=kb_area, known_box_occlusion=kb_occ,
        hot_known_iou=kb_iou, reference_box=ref, reference_share=ref_share, reference_occlusion=ref_occ,
        convergence_delta=att.mean_abs_delta, thresholds=th,
    )
    result.verdict = region_findings(result, th)
    flagged_box = result.verdict["region"] if isinstance(result.verdict["region"], list) else hot.box
    result.gallery = top_attributed(maps, lab, flagged_box if result.verdict["region"] != "border" else band,
                                    k=gallery_k, indices=idx)
    result.seconds = time.perf_counter() - t0
    return result

