"""The tolerances the audit's verdicts are judged with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AuditThresholds:
    """Tolerances of the verdicts (fractions: 0.01 = one percentage point)."""

    #: target accuracy may fall this much before it counts as negative transfer
    target_tolerance: float = 0.01
    #: source accuracy lost beyond these is forgetting worth a warning / a failure
    source_drop_warn: float = 0.03
    source_drop_fail: float = 0.10
    #: a label-free score (IM, SND) "fell" when it lost more than this fraction of |before|
    label_free_rel_drop: float = 0.05
    #: a gap statistic "moved" only when it changed by more than this fraction of before
    gap_rel_change: float = 0.02
    #: significance level of the gap's two-sample tests (MMD and classifier test)
    alpha: float = 0.05
    #: domain-classifier AUC at or above this is a large gap (gap-only verdict)
    auc_large: float = 0.75
    #: source-only model: target accuracy this far below source is a large accuracy gap
    accuracy_gap_warn: float = 0.05
    #: a region flagged before is still relied on after adaptation when hiding it changes
    #: at least this share of the predictions and this multiple of same-size patches
    #: elsewhere (the attribution checks' own flip thresholds)
    reliance_flips: float = 0.05
    reliance_over_control: float = 2.0
    #: a model whose chance-corrected target accuracy (accuracy − chance)/(1 − chance) is
    #: below this is "still unusable on the target" (see diagnostics.chance)
    chance_margin: float = 0.25
    #: several sources: one whose removal raises the label-free target estimate by more
    #: than this seems to hurt (diagnostics/audit/sources_policy.py)
    source_hurts: float = 0.02
