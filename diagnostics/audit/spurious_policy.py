"""Spurious-feature verdict: the regions the attribution checks flagged
(:func:`diagnostics.attribution.region_findings`, one per domain), and whether the
reliance on them fell after adaptation."""

from __future__ import annotations

from typing import Any, Mapping

from diagnostics.audit.contract import StageResult, number
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import LEVELS, Verdict, worst_level
from diagnostics.audit.wording import percent


def _spurious_rows(stage: StageResult | None) -> dict[str, dict]:
    """{domain: verdict dict} for the domains that have a spurious-feature verdict."""
    if stage is None:
        return {}
    out = {}
    for domain, sec in stage.spurious.items():
        if isinstance(sec, Mapping) and isinstance(sec.get("verdict"), Mapping):
            out[str(domain)] = dict(sec["verdict"])
    return out


def finding_level(v: Mapping) -> str:
    """The level of one domain's finding ``{level, flagged, ...}``: its own level when
    valid, else "warn" when flagged and "ok" when not."""
    lvl = str(v.get("level") or "")
    if lvl in LEVELS:
        return lvl
    return "warn" if v.get("flagged") else "ok"


def _spurious_desc(domain: str, v: Mapping) -> str:
    region = v.get("region") or "a region"
    share = number(v, "share")
    flips = v.get("flips")
    bits = [f"{domain}: {region}"]
    if share is not None:
        bits.append(f"holds {percent(share)} of the attribution")
    text = " ".join(bits)
    if isinstance(flips, (int, float)) and not isinstance(flips, bool):
        # ``flips`` is the share of predictions that change when the region is occluded
        text += f", occluding it changes {percent(float(flips))} of the predictions"
    return text


def spurious_verdict(before: StageResult, after: StageResult | None,
                     th: AuditThresholds = AuditThresholds()) -> Verdict | None:
    """Spurious features (shortcuts): flagged regions, and whether reliance fell after adaptation."""
    vb, va = _spurious_rows(before), _spurious_rows(after)
    if not vb and not va:
        return None
    current = va or vb
    level = worst_level(finding_level(v) for v in current.values())
    flagged = {d: v for d, v in current.items() if finding_level(v) != "ok" or v.get("flagged")}
    evidence: dict[str, Any] = {}
    for d, v in vb.items():
        if number(v, "share") is not None:
            evidence[f"{d}_share" + ("_before" if va else "")] = number(v, "share")
    for d, v in va.items():
        if number(v, "share") is not None:
            evidence[f"{d}_share_after"] = number(v, "share")
    for d, v in current.items():
        if isinstance(v.get("flips"), (int, float)):
            evidence[f"{d}_flips"] = v["flips"]

    # reliance before vs after, per domain measured in both — on ONE region: the one the
    # before-verdict names, which the after-model is measured on too (reliance_change);
    # two different hot boxes' shares are not a trend.
    trend = []
    for d in vb:
        if d not in va:
            continue
        sec = after.spurious.get(d) if after is not None else None
        rc = sec.get("reliance_change") if isinstance(sec, Mapping) else None
        if isinstance(rc, Mapping) and rc.get("share_before") is not None and rc.get("share_after") is not None:
            region, s0, s1 = rc.get("region"), float(rc["share_before"]), float(rc["share_after"])
            f0, f1 = rc.get("flips_before"), rc.get("flips_after")
        elif vb[d].get("region") == va[d].get("region"):
            region, s0, s1 = vb[d].get("region"), number(vb[d], "share"), number(va[d], "share")
            f0, f1 = vb[d].get("flips"), va[d].get("flips")
        else:
            continue
        if s0 is None or s1 is None:
            continue
        has_flips = all(isinstance(f, (int, float)) for f in (f0, f1))
        sc = rc.get("share_change") if isinstance(rc, Mapping) else None
        if isinstance(sc, Mapping) and sc.get("word"):
            # bootstrap intervals of the paired per-image changes decide: "rose"/"fell" only
            # outside the interval (diagnostics.paired.mean_change)
            fc = rc.get("flips_change") if isinstance(rc.get("flips_change"), Mapping) else {}
            words = {w for w in (sc.get("word"), fc.get("word")) if w in ("rose", "fell")}
            word = ("did not clearly change" if not words else words.pop() if len(words) == 1
                    else "changed (attribution and occlusion disagree)")
            ci = (f", 95% CI of the change {100 * float(sc['ci_low']):+.1f} to {100 * float(sc['ci_high']):+.1f} "
                  "points" if sc.get("ci_low") is not None else "")
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
    was = [d for d, v in vb.items() if finding_level(v) != "ok" or v.get("flagged")]
    if va and was and not flagged:
        # Not flagged after — but the after-model may still *rely* on the region while
        # attending to it less: occlusion of the before-region decides "removed".
        still = []
        for d in was:
            sec = after.spurious.get(d) if after is not None else None
            rc = sec.get("reliance_change") if isinstance(sec, Mapping) else None
            occ = sec.get("occlusion") if isinstance(sec, Mapping) else None
            f1 = rc.get("flips_after") if isinstance(rc, Mapping) else None
            ctrl = occ.get("control_flipped_share") if isinstance(occ, Mapping) else None
            if isinstance(f1, (int, float)) and f1 >= th.reliance_flips and (
                    not isinstance(ctrl, (int, float)) or f1 >= th.reliance_over_control * ctrl):
                still.append(f"{d}: hiding {rc.get('region')} still changes {percent(float(f1))} of the predictions"
                             + (f" (same-size patches elsewhere: {percent(float(ctrl))})"
                                if isinstance(ctrl, (int, float)) else ""))
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
