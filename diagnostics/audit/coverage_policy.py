"""Coverage verdicts: what this audit could not see, said before anything it did.

* ``partial_target_classes`` — the target's labels cover only some classes
  (``data.target_classes: subset``): its accuracies and mixes are over those;
* ``source_free`` — no source images were read (``data.source: none``): everything that
  needs them was not measured (:data:`NOT_MEASURED_WITHOUT_SOURCE`).

Both read the audit's :class:`~diagnostics.audit.contract.Coverage`, which the run's
orchestration fills in (``domaingap/run_audit.py``).
"""

from __future__ import annotations

from diagnostics.audit.evidence import AuditEvidence
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict

#: what an audit cannot measure without source images (a source-free run)
NOT_MEASURED_WITHOUT_SOURCE = (
    "the domain gap (MMD, Fréchet distance, domain classifier, transport)",
    "source accuracy, and so forgetting and negative transfer on the source",
    "the BBSE estimate of the target label mix (needs labelled source images)",
    "attribution and group metrics on source images",
    "the joint source/target embedding",
)


def source_free_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    """What a source-free run's audit could not measure."""
    if audit.coverage.source_images:
        return None
    return Verdict(
        name="source_free", level="warn", title="Source-free run: measured on the target only",
        summary="No source images were read (data.source is none), so this audit measured the target "
                "predictions, collapse, label-free scores, attributions and group metrics only; not measured: "
                + "; ".join(NOT_MEASURED_WITHOUT_SOURCE) + ".",
        evidence={"source_images": 0})


def partial_target_verdict(audit: AuditEvidence, th: AuditThresholds) -> Verdict | None:
    """The target's labels cover only some classes (the recipe said so:
    ``data.target_classes: subset``): its accuracies and mixes are over those."""
    missing = audit.coverage.target_missing_classes
    if not missing:
        return None
    names = ", ".join(repr(c) for c in missing)
    return Verdict(
        name="partial_target_classes", level="warn", title="Target labels cover only some classes",
        summary=f"The target has no labelled images of {names} (data.target_classes: subset): target "
                "accuracy, recall and the true target mix are measured over the classes it has; predictions "
                "of a missing class on the target are necessarily wrong.",
        evidence={"missing_classes": list(missing)})
