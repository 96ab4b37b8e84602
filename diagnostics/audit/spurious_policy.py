"""Spurious-feature verdict: the regions the attribution checks flagged
(:func:`diagnostics.attribution.region_findings`, one per domain), and whether the
reliance on them fell after adaptation."""

from __future__ import annotations

from typing import Any

from diagnostics.audit.evidence import AuditEvidence, RegionFinding
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict, worst_level
from diagnostics.audit.wording import percent


def _spurious_desc(domain: str, v: RegionFinding) -> str:
    bits = [f"{domain}: {v.region or 'a region'}"]
    if v.share is not None:
        bits.append(f"holds {percent(v.share)} of the attribution")
    text = " ".join(bits)
    if v.flips is not None and not isinstance(v.flips, bool):
        # ``flips`` is the share of predictions that change when the region is occluded
        text += f", occluding it changes {percent(float(v.flips))} of the predictions"
    return text


def spurious_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    """Spurious features (shortcuts): flagged regions, and whether reliance fell after adaptation."""
    before, after = audit.before, audit.after
    vb, va = before.findings(), ({} if after is None else after.findings())
    if not vb and not va:
        return None
    current = va or vb
    level = worst_level(v.level for v in current.values())
    flagged = {d: v for d, v in current.items() if v.raised}
    evidence: dict[str, Any] = {}
    for d, v in vb.items():
        if v.share is not None:
            evidence[f"{d}_share" + ("_before" if va else "")] = v.share
    for d, v in va.items():
        if v.share is not None:
            evidence[f"{d}_share_after"] = v.share
    for d, v in current.items():
        if v.flips is not None:
            evidence[f"{d}_flips"] = v.flips

    # reliance before vs after, per domain measured in both — on ONE region: the one the
    # before-verdict names, which the after-model is measured on too (reliance_change);
    # two different hot boxes' shares are not a trend.
    trend = []
    for d in vb:
        if d not in va:
            continue
        rc = after.spurious[d].reliance
        if rc is not None and rc.share_before is not None and rc.share_after is not None:
            region, s0, s1 = rc.region, rc.share_before, rc.share_after
            f0, f1 = rc.flips_before, rc.flips_after
        elif vb[d].region == va[d].region:
            region, s0, s1 = vb[d].region, vb[d].share, va[d].share
            f0, f1 = vb[d].flips, va[d].flips
        else:
            continue
        if s0 is None or s1 is None:
            continue
        has_flips = f0 is not None and f1 is not None
        sc = rc.share_change if rc is not None else None
        if sc is not None and sc.word:
            # bootstrap intervals of the paired per-image changes decide: "rose"/"fell" only
            # outside the interval (diagnostics.paired.mean_change)
            fc_word = rc.flips_change.word if rc.flips_change is not None else None
            words = {w for w in (sc.word, fc_word) if w in ("rose", "fell")}
            word = ("did not clearly change" if not words else words.pop() if len(words) == 1
                    else "changed (attribution and occlusion disagree)")
            ci = (f", 95% CI of the change {100 * sc.ci_low:+.1f} to {100 * sc.ci_high:+.1f} "
                  "points" if sc.ci_low is not None else "")
        else:
            ci = ""
            if has_flips and (s1 - s0) * (f1 - f0) < 0:  # attribution and occlusion disagree: say so
                word = "changed"
            else:
                word = "fell" if s1 < s0 else ("rose" if s1 > s0 else "held")
        text = f"reliance on {region or 'the region'} {word} on {d} (attribution {percent(s0)} → {percent(s1)}{ci}"
        if has_flips:
            text += f"; occluding it changes {percent(float(f0))} → {percent(float(f1))} of the predictions"
        trend.append(text + ")")
    if flagged:
        descs = "; ".join(_spurious_desc(d, v) for d, v in flagged.items())
        lead = "The adapted model relies on a spurious region" if va else "The model relies on a spurious region"
        summary = f"{lead} — {descs}"
        title = "Spurious feature"
    else:
        summary = "No spurious region flagged" + (" after adaptation" if va else "")
        title = "No spurious feature"
    if trend:
        summary += "; " + "; ".join(trend)
    # a shortcut present before and gone after is worth saying plainly
    was = [d for d, v in vb.items() if v.raised]
    if va and was and not flagged:
        # Not flagged after — but the after-model may still *rely* on the region while
        # attending to it less: occlusion of the before-region decides "removed".
        still = []
        for d in was:
            sec = after.spurious.get(d)
            rc = None if sec is None else sec.reliance
            f1 = None if rc is None else rc.flips_after
            ctrl = None if sec is None else sec.control_flipped_share
            if f1 is not None and f1 >= th.reliance_flips and (ctrl is None or f1 >= th.reliance_over_control * ctrl):
                still.append(f"{d}: hiding {rc.region} still changes {percent(float(f1))} of the predictions"
                             + (f" (same-size patches elsewhere: {percent(float(ctrl))})" if ctrl is not None else ""))
                evidence[f"{d}_flips_on_before_region_after"] = float(f1)
        tail = "; " + "; ".join(trend) if trend else ""
        if still:
            level = worst_level([level, "warn"])
            title = "Spurious feature reduced, still relied on"
            summary = ("After adaptation no region is flagged, but the model still relies on the one "
                       f"flagged before — {'; '.join(still)}" + tail)
        else:
            title = "Spurious feature removed"
            summary = f"Adaptation removed the reliance on a spurious region flagged before ({', '.join(was)})" + tail
    return Verdict("spurious", level, title, summary + ".", evidence)
