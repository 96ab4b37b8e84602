"""Before/after audit of an adaptation: the data contract, the verdicts, the overall banner.

* :mod:`.contract` — the JSON contract: :class:`StageResult` (everything measured for one
  model), :class:`RunInfo`, :class:`Coverage` (what the audit could see), :class:`Audit`,
  and the tolerant readers :func:`number` / :func:`section`;
* :mod:`.evidence` — the contract parsed once into typed objects (:class:`AuditEvidence`,
  :class:`StageEvidence`): what the policies read;
* :mod:`.verdict` — :class:`Verdict`, the levels, and :func:`overall_verdict` (the banner);
* :mod:`.thresholds` — :class:`AuditThresholds`, the tolerances of the verdicts;
* :mod:`.policies` — :data:`POLICIES`, the one register of verdicts, each a pure function
  of the evidence in its own module: :mod:`.coverage_policy` (partial target, source-free),
  :mod:`.transfer_policy` (negative transfer; the accuracy gap of a single model),
  :mod:`.usability_policy` (still near chance on the target), :mod:`.collapse_policy`,
  :mod:`.spurious_policy`, :mod:`.gap_policy`, :mod:`.sources_policy`;
* :mod:`.wording` — how numbers read in the sentences (the report uses it too);
* :mod:`.build` — :func:`compute_verdicts` and :func:`build_audit`.
"""

from __future__ import annotations

from diagnostics.audit.build import build_audit, compute_verdicts
from diagnostics.audit.collapse_policy import collapse_verdict
from diagnostics.audit.contract import Audit, Coverage, RunInfo, StageResult, number, section
from diagnostics.audit.evidence import AuditEvidence, StageEvidence
from diagnostics.audit.gap_policy import gap_verdict
from diagnostics.audit.policies import POLICIES, Policy
from diagnostics.audit.spurious_policy import spurious_verdict
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.transfer_policy import accuracy_gap_verdict, transfer_verdict
from diagnostics.audit.usability_policy import usability_verdict
from diagnostics.audit.verdict import LEVELS, Verdict, overall_verdict, worst_level
from diagnostics.audit.wording import fmt_p, p_phrase, percent, points, signed_points, statistic

__all__ = [
    "LEVELS",
    "POLICIES",
    "Audit",
    "AuditEvidence",
    "AuditThresholds",
    "Coverage",
    "Policy",
    "RunInfo",
    "StageEvidence",
    "StageResult",
    "Verdict",
    "accuracy_gap_verdict",
    "build_audit",
    "collapse_verdict",
    "compute_verdicts",
    "fmt_p",
    "gap_verdict",
    "number",
    "overall_verdict",
    "p_phrase",
    "percent",
    "points",
    "section",
    "signed_points",
    "spurious_verdict",
    "statistic",
    "transfer_verdict",
    "usability_verdict",
    "worst_level",
]
