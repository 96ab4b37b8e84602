"""Before/after audit of an adaptation: the data contract, the verdicts, the overall banner.

* :mod:`.contract` — the JSON contract: :class:`StageResult` (everything measured for one
  model), :class:`RunInfo`, :class:`Audit`, and the readers :func:`number` / :func:`section`;
* :mod:`.verdict` — :class:`Verdict`, the levels, and :func:`overall_verdict` (the banner);
* :mod:`.thresholds` — :class:`AuditThresholds`, the tolerances of the verdicts;
* the verdict policies, each a pure function of contract objects:
  :mod:`.transfer_policy` (negative transfer; the accuracy gap of a single model),
  :mod:`.collapse_policy`, :mod:`.spurious_policy`, :mod:`.gap_policy`,
  :mod:`.usability_policy` (still near chance on the target);
* :mod:`.wording` — how numbers read in the sentences (the report uses it too);
* :mod:`.build` — :func:`compute_verdicts` and :func:`build_audit`;
* :mod:`.plain` (JSON-able conversion) and :mod:`.versions` (package versions).
"""

from __future__ import annotations

from diagnostics.audit.build import build_audit, compute_verdicts
from diagnostics.audit.collapse_policy import collapse_level, collapse_verdict
from diagnostics.audit.contract import Audit, AuditInput, RunInfo, StageResult, number, section
from diagnostics.audit.gap_policy import gap_verdict
from adapt.io import to_jsonable
from diagnostics.audit.spurious_policy import finding_level, spurious_verdict
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.transfer_policy import accuracy_gap_verdict, transfer_verdict
from diagnostics.audit.usability_policy import usability_verdict
from diagnostics.audit.verdict import LEVELS, Verdict, overall_verdict, worst_level
from adapt.environment import package_versions
from diagnostics.audit.wording import fmt_p, p_phrase, percent, points, signed_points, statistic

__all__ = [
    "LEVELS",
    "Audit",
    "AuditInput",
    "AuditThresholds",
    "RunInfo",
    "StageResult",
    "Verdict",
    "accuracy_gap_verdict",
    "build_audit",
    "collapse_level",
    "collapse_verdict",
    "compute_verdicts",
    "finding_level",
    "fmt_p",
    "gap_verdict",
    "number",
    "overall_verdict",
    "p_phrase",
    "package_versions",
    "percent",
    "points",
    "section",
    "signed_points",
    "spurious_verdict",
    "statistic",
    "to_jsonable",
    "transfer_verdict",
    "usability_verdict",
    "worst_level",
]
