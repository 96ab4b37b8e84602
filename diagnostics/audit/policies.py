"""The one register of verdicts: every verdict the audit can give is a :class:`Policy`
in :data:`POLICIES`, judged by :func:`diagnostics.audit.build.compute_verdicts` in this
order (the report lists them so). Nothing else makes a verdict: the orchestration hands
over what it measured (and the :class:`~diagnostics.audit.contract.Coverage`), the report
renders what was judged.

A policy is a pure function ``(AuditEvidence, AuditThresholds) -> Verdict | None`` that
returns None when its evidence was not measured (or does not apply: one model, or two);
the verdict it returns carries the policy's ``name``. Adding a verdict: docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from diagnostics.audit.collapse_policy import collapse_verdict
from diagnostics.audit.coverage_policy import partial_target_verdict, source_free_verdict
from diagnostics.audit.evidence import AuditEvidence
from diagnostics.audit.gap_policy import gap_verdict
from diagnostics.audit.sources_policy import sources_verdict
from diagnostics.audit.spurious_policy import spurious_verdict
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.transfer_policy import accuracy_gap_verdict, transfer_verdict
from diagnostics.audit.usability_policy import usability_verdict
from diagnostics.audit.verdict import Verdict


@dataclass(frozen=True)
class Policy:
    """A verdict: its name (``Verdict.name``), the function that judges it, what it asks."""

    name: str
    judge: Callable[[AuditEvidence, AuditThresholds], Verdict | None]
    question: str


POLICIES: tuple[Policy, ...] = (
    Policy("partial_target_classes", partial_target_verdict, "Do the target's labels cover every class?"),
    Policy("source_free", source_free_verdict, "Were source images measured at all?"),
    Policy("negative_transfer", transfer_verdict, "Did adaptation help, hurt, or can we not tell?"),
    Policy("accuracy_gap", accuracy_gap_verdict, "One model: how much accuracy is lost on the target?"),
    Policy("usability", usability_verdict, "Is the deployed model still near chance on the target?"),
    Policy("collapse", collapse_verdict, "Do the predictions pile onto few classes?"),
    Policy("spurious", spurious_verdict, "Does the model rely on a spurious region?"),
    Policy("gap", gap_verdict, "Is there a domain gap, and did adaptation close it?"),
    Policy("sources", sources_verdict, "Several sources: does each one help?"),
)
