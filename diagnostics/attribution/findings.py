"""Reading the numbers of a spurious-feature analysis: :func:`region_findings` (the
fail / warn / ok finding of one model on one domain, with its sentence) and
:func:`compare_reliance` (the same region before and after adaptation).

The before/after *audit* verdict built from these findings is
:func:`diagnostics.audit.spurious_verdict`.
"""
from __future__ import annotations

import numpy as np

from diagnostics.attribution.regions import box_iou
from diagnostics.attribution.results import RegionScore, SpuriousResult, rounded
from diagnostics.attribution.shares import box_share, map_correlation
from diagnostics.paired import mean_change


def _where(c: RegionScore, loc: float) -> list[str]:
    out = []
    if c.in_border >= loc:
        out.append("in the image border")
    if c.outside_roi is not None and c.outside_roi >= loc:
        out.append("outside the region of interest")
    return out


def region_findings(r: SpuriousResult, th: dict[str, float]) -> dict:
    """The finding of :func:`~diagnostics.attribution.analysis.spurious_analysis` from
    its numbers (rules there): ``{level, flagged, region, share, flips, reason}``."""
    control = r.control_flips if np.isfinite(r.control_flips) else 0.0

    def relied(flips: float) -> bool:
        return flips >= th["flip_share"] and flips >= th["flip_over_control"] * control

    def entry(level: str, region, share: float, flips: float, reason: str) -> dict:
        return {"level": level, "flagged": level == "fail", "region": region,
                "share": rounded(share), "flips": rounded(flips), "reason": reason}

    def describe(c: RegionScore) -> str:
        return ("the hottest region{} (x0, y0, x1, y1) = ({}, {}, {}, {})"
                .format("" if c.source == "all" else f" for {c.source}", *c.box))

    suspects = [c for c in r.candidates
                if _where(c, th["location_fraction"]) and c.ratio >= th["share_ratio"]]
    for c in suspects:
        f = c.occlusion.flipped_share
        if relied(f):
            return entry("fail", list(c.box), c.share, f,
                         f"On {r.domain}, {describe(c)} lies {' and '.join(_where(c, th['location_fraction']))}, "
                         f"holds {c.share:.0%} of the attribution ({c.ratio:.1f}x its area share), and hiding "
                         f"it changes {f:.0%} of the predictions (same-size patches elsewhere: {control:.0%}): "
                         f"the model relies on it.")
    bf = r.border_occlusion.flipped_share
    if r.border_ratio >= th["border_ratio"] and relied(bf):
        return entry("fail", "border", r.border_share, bf,
                     f"On {r.domain}, the {r.border_px}-pixel border band holds {r.border_share:.0%} of the "
                     f"attribution ({r.border_ratio:.1f}x its area share) and hiding it changes {bf:.0%} "
                     f"of the predictions.")
    if suspects:
        c = suspects[0]
        f = c.occlusion.flipped_share
        return entry("warn", list(c.box), c.share, f,
                     f"On {r.domain}, {describe(c)} lies {' and '.join(_where(c, th['location_fraction']))} and "
                     f"holds {c.share:.0%} of the attribution ({c.ratio:.1f}x its area share), but hiding it "
                     f"changes only {f:.0%} of the predictions (same-size patches elsewhere: {control:.0%}).")
    if r.border_ratio >= th["border_ratio"]:
        return entry("warn", "border", r.border_share, bf,
                     f"On {r.domain}, the border band holds {r.border_share:.0%} of the attribution "
                     f"({r.border_ratio:.1f}x its area share), though hiding it changes only {bf:.0%} of "
                     f"the predictions.")
    c = r.hot
    place = " and ".join(_where(c, th["location_fraction"])) or "inside the image"
    f = c.occlusion.flipped_share
    return entry("ok", list(c.box), c.share, f,
                 f"On {r.domain}, no spurious region: {describe(c)} lies {place}, holds {c.share:.0%} of the "
                 f"attribution ({c.ratio:.1f}x its area share), and hiding it changes {f:.0%} of the "
                 f"predictions.")


def compare_reliance(before: SpuriousResult, after: SpuriousResult) -> dict:
    """Did reliance on the suspect region fall from ``before`` to ``after``?

    The region is the one ``before``'s verdict names (its hot box when nothing was
    flagged, or when the border was). The after-model's share and occlusion flips on
    it come from ``after.reference_*`` when ``after`` was run with ``reference_box`` set
    to that region (recommended); otherwise after's own hot region stands in. Also:
    the Pearson correlation of the two overall mean maps (1 = the model still looks at
    the same places) and the IoU of the two hot boxes.
    """
    region = before.verdict.get("region")
    box = tuple(region) if isinstance(region, list) else before.hot_box
    cand = next((c for c in before.candidates if c.box == box), before.hot)
    same_ref = after.reference_box is not None and tuple(after.reference_box) == box
    same_images = list(before.indices) == list(after.indices)
    # the after-model's flips on the images the before-model's were counted on (the held-out
    # half of the candidate's images — one class's, for a class candidate): otherwise the two
    # figures count different images, and one model against itself reads as a change
    on_rows = same_ref and same_images and cand.rows is not None
    f1_all = None
    if same_ref:
        f1_all = np.zeros(after.reference_occlusion.n)
        f1_all[after.reference_occlusion.flipped_indices] = 1.0
    if same_ref:
        a_share = after.reference_share
        a_flips = float(f1_all[cand.rows].mean()) if on_rows and len(cand.rows) else after.reference_occlusion.flipped_share
    else:
        a_share, a_flips = after.hot.share, after.hot.occlusion.flipped_share
    b_share = box_share(before.maps, box).mean_share
    corr = (map_correlation(before.mean_map, after.mean_map)
            if before.mean_map.shape == after.mean_map.shape else float("nan"))
    d = {
        "region": list(box),
        "after_measured_on_region": bool(same_ref),
        "share_before": b_share, "share_after": a_share,
        "flips_before": cand.occlusion.flipped_share, "flips_after": a_flips,
        "border_ratio_before": before.border_ratio, "border_ratio_after": after.border_ratio,
        "border_flips_before": before.border_occlusion.flipped_share,
        "border_flips_after": after.border_occlusion.flipped_share,
        "map_correlation": corr,
        "hot_box_iou": box_iou(before.hot_box, after.hot_box),
        "flagged_before": bool(before.verdict.get("flagged")),
        "flagged_after": bool(after.verdict.get("flagged")),
    }
    d["reliance_fell"] = bool(a_flips < d["flips_before"] and a_share < b_share)
    out = {k: rounded(v) if isinstance(v, float) else v for k, v in d.items()}
    if list(before.indices) == list(after.indices):
        # the same images under both models: paired bootstrap intervals of the per-image
        # changes, so a trend is "rose"/"fell" only outside its interval
        s0 = box_share(before.maps, box).share
        s1 = box_share(after.maps, box).share
        out["share_change"] = mean_change(s0, s1, seed=0).to_dict()
    if same_ref:
        # per-image "prediction changed when hidden" indicators; the before-region was scored
        # on the held-out half it was not chosen on, the after-model on every image — read
        # on the same rows (paired) when both analysed the same images
        f0 = np.zeros(cand.occlusion.n)
        f0[cand.occlusion.flipped_indices] = 1.0
        f1 = f1_all[cand.rows] if on_rows else f1_all
        paired = on_rows or (len(f0) == len(f1) == before.n and same_images)
        out["flips_change"] = mean_change(f0, f1, paired=paired, seed=0).to_dict()
    return out
