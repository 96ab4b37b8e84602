"""Assemble an audit: every verdict the results support, and the provenance."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Iterable, Mapping

from diagnostics.audit.collapse_policy import collapse_verdict
from diagnostics.audit.contract import Audit, RunInfo, StageResult
from diagnostics.audit.gap_policy import gap_verdict
from adapt.io import to_jsonable
from diagnostics.audit.sources_policy import sources_verdict
from diagnostics.audit.spurious_policy import spurious_verdict
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.transfer_policy import accuracy_gap_verdict, transfer_verdict
from diagnostics.audit.usability_policy import usability_verdict
from diagnostics.audit.verdict import Verdict
from adapt.environment import package_versions


def compute_verdicts(
    before: StageResult | Mapping,
    after: StageResult | Mapping | None = None,
    *,
    thresholds: AuditThresholds = AuditThresholds(),
    sources: Mapping | None = None,
) -> list[Verdict]:
    """All verdicts the available results support, most important first.

    Order: negative transfer (or, with one model, the accuracy gap), usability (only when
    the model is still near chance), class collapse, spurious features, domain gap, and
    with several sources (``sources``, the contract's section) whether each one helps.
    Sections that were not measured give no verdict.
    """
    b = StageResult.from_dict(before)
    a = StageResult.from_dict(after)
    if b is None:
        raise ValueError("compute_verdicts needs a 'before' stage")
    out: list[Verdict | None] = []
    if a is not None:
        out.append(transfer_verdict(b, a, thresholds))
    else:
        out.append(accuracy_gap_verdict(b, thresholds))
    out.append(usability_verdict(b, a, thresholds))
    out.append(collapse_verdict(b, a))
    out.append(spurious_verdict(b, a, thresholds))
    out.append(gap_verdict(b, a, thresholds))
    out.append(sources_verdict(sources, thresholds))
    return [v for v in out if v is not None]


def build_audit(
    before: StageResult | Mapping,
    after: StageResult | Mapping | None = None,
    *,
    classes: Iterable[str] = (),
    run: RunInfo | Mapping | None = None,
    methods_table: Iterable[Mapping] | None = None,
    thresholds: AuditThresholds = AuditThresholds(),
    sources: Mapping | None = None,
) -> Audit:
    """Assemble an :class:`Audit` and compute its verdicts.

    ``run`` without ``created`` gets the current UTC time; without ``versions`` the
    installed versions of the main packages.
    """
    b = StageResult.from_dict(before)
    if b is None:
        raise ValueError("build_audit needs a 'before' stage")
    a = StageResult.from_dict(after)
    info = RunInfo.from_dict(to_jsonable(run) if run is not None and not isinstance(run, RunInfo) else run)
    if info.created is None:
        info.created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not info.versions:
        info.versions = package_versions()
    return Audit(
        before=b,
        after=a,
        classes=[str(c) for c in classes],
        run=info,
        methods_table=[dict(to_jsonable(r)) for r in (methods_table or [])],
        verdicts=compute_verdicts(b, a, thresholds=thresholds, sources=sources),
        thresholds=dataclasses.asdict(thresholds),
        sources=dict(to_jsonable(sources)) if sources else None,
    )
