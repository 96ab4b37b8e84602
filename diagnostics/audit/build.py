"""Assemble an audit: every verdict the results support, the banner, and the provenance."""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Iterable, Mapping

from adapt.environment import package_versions
from adapt.io import to_jsonable
from diagnostics.audit.contract import Audit, Coverage, RunInfo, StageResult
from diagnostics.audit.evidence import AuditEvidence
from diagnostics.audit.policies import POLICIES
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.audit.verdict import Verdict, overall_verdict


def compute_verdicts(
    before: StageResult | Mapping,
    after: StageResult | Mapping | None = None,
    *,
    thresholds: AuditThresholds = AuditThresholds(),
    sources: Mapping | None = None,
    coverage: Coverage | Mapping | None = None,
    deployed_before: bool = False,
) -> list[Verdict]:
    """All verdicts the available results support, in the order of
    :data:`diagnostics.audit.policies.POLICIES` (most important first): what the audit
    could not see (``coverage``), negative transfer (or, with one model, the accuracy
    gap), usability (only when the model is still near chance), class collapse, spurious
    features, domain gap, and with several sources (``sources``, the contract's section)
    whether each one helps. Sections that were not measured give no verdict.
    """
    b = StageResult.from_dict(before)
    if b is None:
        raise ValueError("compute_verdicts needs a 'before' stage")
    evidence = AuditEvidence.of(b, StageResult.from_dict(after), sources, Coverage.from_dict(coverage),
                                deployed_before)
    out = []
    for policy in POLICIES:
        verdict = policy.judge(evidence, thresholds)
        if verdict is not None:
            if verdict.name != policy.name:
                raise ValueError(f"policy {policy.name!r} returned a verdict named {verdict.name!r}")
            out.append(verdict)
    return out


def build_audit(
    before: StageResult | Mapping,
    after: StageResult | Mapping | None = None,
    *,
    classes: Iterable[str] = (),
    run: RunInfo | Mapping | None = None,
    methods_table: Iterable[Mapping] | None = None,
    thresholds: AuditThresholds = AuditThresholds(),
    sources: Mapping | None = None,
    coverage: Coverage | Mapping | None = None,
    data: Mapping | None = None,
    deployment: Mapping | None = None,
) -> Audit:
    """Assemble an :class:`Audit`: its verdicts and its banner, judged here once.

    ``run`` without ``created`` gets the current UTC time; without ``versions`` the
    installed versions of the main packages. ``coverage``: what the audit could see
    (source images, the target's labelled classes); ``data``: the data audit's section.
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
    cov = Coverage.from_dict(coverage)
    dep = dict(to_jsonable(deployment)) if deployment else None
    kept_source = bool(dep and a is not None and dep.get("model") == "source-only")
    verdicts = compute_verdicts(b, a, thresholds=thresholds, sources=sources, coverage=cov,
                                deployed_before=kept_source)
    return Audit(
        before=b,
        after=a,
        classes=[str(c) for c in classes],
        run=info,
        methods_table=[dict(to_jsonable(r)) for r in (methods_table or [])],
        verdicts=verdicts,
        thresholds=dataclasses.asdict(thresholds),
        data=dict(data or {}),
        sources=dict(to_jsonable(sources)) if sources else None,
        coverage=cov,
        overall=overall_verdict(verdicts),
        deployment=dep,
    )
