"""The data audit's findings: each measured result as a sentence, its evidence and the
pictures that show it (the report renders them; nothing is computed there).

``data_findings(section, images)`` reads the section assembled by the orchestration
(balance, groups, duplicate pairs, label issues, each image named by its position in
``images``) and returns findings ``{level, title, summary, evidence, thumbs}`` with
thumbnails as base64 PNGs, so the JSON carries what the HTML shows.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Callable

import numpy as np
from PIL import Image

from diagnostics.audit.wording import percent

#: thumbnails per finding in the gallery
GALLERY = 12
#: below this agreement of the out-of-fold model with the given labels, flags are less reliable
WEAK_AGREEMENT = 0.9


def thumb_b64(image: np.ndarray) -> str:
    """A uint8 grey image [H, W] as a base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def data_findings(section: dict, image: Callable[[int], np.ndarray]) -> list[dict[str, Any]]:
    """Findings, worst first: leakage, label issues, other duplicates, imbalance, groups.
    ``image(k)`` returns the k-th audited image (uint8 [H, W])."""
    out = _duplicate_findings(section.get("duplicates") or {}, image)
    for dom, res in (section.get("label_issues") or {}).items():
        out.append(_label_finding(dom, res, image))
    for d in section.get("domains") or []:
        for split, bal in (d.get("splits") or {}).items():
            if bal.get("imbalanced"):
                ratio = bal["imbalance_ratio"]
                out.append(_finding("warn", f"Class imbalance in {d['name']} ({split})",
                                    f"The largest class has {ratio:.1f}x the images of the smallest"
                                    if np.isfinite(ratio) else "A class has no images in this split",
                                    {"counts": ", ".join(f"{c}: {k}" for c, k in bal["counts"].items())}))
    for col, g in (section.get("groups") or {}).items():
        for gap in g.get("gaps") or []:
            out.append(_finding("warn", f"Representation gap: {col} = {gap['value']}",
                                f"{percent(gap['low_share'])} of {gap['low_domain']} but "
                                f"{percent(gap['high_share'])} of {gap['high_domain']}: a model trained on the "
                                "first barely sees this group", {"column": col, "value": gap["value"]}))
    order = {"fail": 0, "warn": 1, "ok": 2}
    return sorted(out, key=lambda f: order[f["level"]])


def _finding(level: str, title: str, summary: str, evidence: dict, thumbs: list | None = None) -> dict:
    return {"level": level, "title": title, "summary": summary, "evidence": evidence, "thumbs": thumbs or []}


def pair_location(a: dict, b: dict) -> str:
    """Where a duplicate pair lies: across domains, across splits, or within a split."""
    if a["domain"] != b["domain"]:
        return "across domains"
    if a["split"] == b["split"]:
        return "within a split"
    return "across splits"


def _duplicate_findings(dup: dict, image: Callable[[int], np.ndarray]) -> list[dict]:
    pairs = dup.get("pairs") or []
    groups: dict[str, list[dict]] = {}
    for p in pairs:
        groups.setdefault(p["where"], []).append(p)
    out = []
    for where, ps in groups.items():
        leak = where == "across splits" and any("train" in (p["a"]["split"], p["b"]["split"]) for p in ps)
        exact = sum(p["kind"] == "exact" for p in ps)
        conflicts = sum(None not in (p["a"]["label"], p["b"]["label"]) and p["a"]["label"] != p["b"]["label"]
                        for p in ps)  # both labelled, differently
        thumbs = []
        for n, p in enumerate(ps[:GALLERY // 2], start=1):
            for side in ("a", "b"):
                s = p[side]
                thumbs.append({"image_png_b64": thumb_b64(image(s["k"])),
                               "caption": f"{n}{side}: {s['split']} · {s['label']}",
                               "title": f"{s['domain']}: {s['id']} ({p['kind']}, relative RMSE {p['relative_rmse']:.3f})"})
        what = "train/test leakage: " if leak else ""
        out.append(_finding(
            "fail" if leak else "warn", f"Duplicate images {where}",
            f"{what}{len(ps)} pair(s) ({exact} exact, {len(ps) - exact} near){'' if not conflicts else f'; {conflicts} with different labels'}",
            {"pairs": len(ps), "exact": exact, "near": len(ps) - exact, "label_conflicts": conflicts,
             "first": "; ".join(f"{p['a']['id']} = {p['b']['id']}" for p in ps[:3])}, thumbs))
    return out


def _label_finding(dom: str, res: dict, image: Callable[[int], np.ndarray]) -> dict:
    issues = res.get("issues") or []
    n = res.get("n_labelled") or 0
    thumbs = [{"image_png_b64": thumb_b64(image(it["k"])), "caption": f"{it['given']} → {it['suggested']}?",
               "title": f"{it['id']} ({it['split']}, label quality {it['quality']:.2f})"} for it in issues[:GALLERY]]
    share = len(issues) / n if n else 0.0
    agreement = res.get("oof_agreement")
    # evidence to look at, not proof: a warning at most; a weak out-of-fold model flags more
    weak = "" if agreement is None or agreement >= WEAK_AGREEMENT else (
        f"; the out-of-fold model agrees with only {percent(agreement)} of the labels, so expect false flags")
    return _finding("warn" if issues else "ok", f"Likely label errors in {dom}",
                    f"{len(issues)} of {n} labelled images ({percent(share)}) look mislabelled to confident "
                    f"learning on out-of-fold probabilities ({res.get('model')}){weak}",
                    {"flagged": len(issues), "labelled": n, "out_of_fold_agreement": res.get("oof_agreement"),
                     "folds": res.get("folds"), "filter": res.get("filter_by")}, thumbs)
