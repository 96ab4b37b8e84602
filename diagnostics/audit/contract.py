"""The audit's data contract: what each stage hands over, and the audit it becomes.

The audit compares two models on the same source and target data: ``before`` (usually
the source-only model) and ``after`` (the adapted one). Every other part of domaingap
hands its results over as plain JSON-able dicts (each result dataclass has ``.to_dict()``),
the shape ``audit.json`` keeps on disk. :mod:`.evidence` parses them once into typed,
frozen objects; the verdict policies (``*_policy.py``, registered in :mod:`.policies`) read
those, decide what happened, and say it in plain sentences with the numbers. The audit
computes no statistics itself: it compares figures that were measured elsewhere. The HTML
report (:mod:`diagnostics.report`) renders an :class:`Audit` — its verdicts and banner as
judged — and decides nothing. :func:`number` and :func:`section` read the tolerant dicts.

Data contract
-------------
Every section is optional: a missing key or ``None`` means "not measured" and both the
verdicts and the report simply leave it out. Unknown extra keys are kept and ignored.
Fractions (accuracy, F1, recall, shares) are in [0, 1], never percent.

``StageResult`` — one model (e.g. ``"source-only"``, ``"adapted (dann+histogram)"``)::

    name: str
    metrics: {"source_test": M, "target_test": M | None}
        M = {accuracy, macro_f1, per_class_recall {class: r}, confusion [[int]] (rows =
             true class, columns = predicted, in ``classes`` order), n}
        target_test is None when target labels are unknown.
        after-stage only: "target_change" / "source_change" = P, a paired comparison with
        the before-model on the same held-out images (diagnostics.paired.AccuracyChange):
        P = {before, after, delta, ci_low, ci_high, level, mcnemar_p, b, c, n, alpha,
             verdict in {"helped", "hurt", "inconclusive"}}
    label_free: {im_score, snd, ...}       # label-free selection scores (higher = better)
        "accuracy" (target labels unknown only): diagnostics.labelfree_estimates output
        {estimates {name: {accuracy, band, change_band, mean_error, n_models}}, default,
         corroborating, calibration {cases, date, command}}; bands = measured p90 |error|
    gap: {"mmd": {mmd2, p_value, bandwidth, permutations, method ("permutation" | "block"),
                  test (in words), decidable, n_x, n_y},
          "classifier_test": {auc, p_value, permutations, decidable},   # C2ST
          "frechet": {distance (plug-in), ci_low, ci_high, ci_centre (the bias-corrected
                      estimate the interval contains), ci_kind, n_source, n_target, dim,
                      extractor},
          "domain_classifier": {auc, accuracy, proxy_a_distance},
          "transport": {distance, method, n_points}}
        (the before-model's space is the fixed extractor of the data gap; the after-stage's
        gap is in the adapted model's own features)
    collapse: {"source": C, "target": C,
               "source_prior": {class: share} (optional; the source label prior —
                                               falls back to source.histogram),
               "bbse_target_mix": {class: share},   # BBSE estimate of the target label mix
               "true_target_mix": {class: share},   # when target labels are known
               "label_shift_check": {passed, mmd_p, classifier_p, ...},   # BBSE's assumption
               "verdict": "collapsed" | "biased" | "label_shift" | "covariate_shift" |
                          "inconclusive" | "no_shift",
               "level": "ok" | "warn" | "fail", "over_predicted": [str],
               "collapsed": bool, "reason": str}
        C = {histogram {class: share of predictions}, marginal_entropy, log_k,
             largest_share, im_score, mean_confidence}
    spurious: {"<domain>": {verdict {level, flagged, region, share, flips, reason},
                            hot_box [x0, y0, x1, y1] (image pixels, x1/y1 exclusive),
                            border_share,
                            border_area_share, occlusion {scalar figures},
                            mean_maps {class: [[float]]},
                            gallery [{image_png_b64 | image ([H,W] / [C,H,W] / [H,W,C]
                                      floats in [0,1]), map [[float]], label, pred}]}}
    embedding: {coords [[x, y]], domain [str], label [str]}
    groups: {group_column: {group_value: {accuracy, macro_f1, n}}}

``Audit``::

    before: StageResult, after: StageResult | None, classes: [str],
    run: RunInfo {name, recipe_text, seed, device, versions {package: version}, created},
    methods_table: [{method, seed, source_acc, target_acc, selected_epoch, selector,
                     label_free_rank, oracle_rank, audit ("★ recommended, audited"),
                     target_acc_estimated ("estimated 46 % ± 8 (agreement)", labels unknown), ...}],
    verdicts: [Verdict], overall: Verdict (the banner, judged with the verdicts)
    coverage: what the audit could see, written only when it is not everything:
              {source_images: bool (False: a source-free run), target_missing_classes: [str]}
    sources: several labelled sources only (else None): {names, statistic, images, mmd2,
             weights, leave_one_out} — see diagnostics/audit/sources_policy.py

``Verdict(name, level in {"ok", "warn", "fail"}, title, summary, evidence)``: ``summary``
is one plain sentence with the numbers; ``evidence`` maps a figure's name to its value
(numbers, short strings) — the report formats keys containing ``accuracy``/``acc``/
``f1``/``share``/``recall`` as percentages and ``p_value`` keys as p-values.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from adapt.io import to_jsonable
from diagnostics.audit.verdict import Verdict, overall_verdict


def number(d: Mapping | None, *keys: str) -> float | None:
    """``d[k1][k2]...`` as a finite float, or None when any level is missing."""
    cur: Any = d
    for k in keys:
        if not isinstance(cur, Mapping) or cur.get(k) is None:
            return None
        cur = cur[k]
    if isinstance(cur, bool):
        return float(cur)
    try:
        val = float(cur)
    except (TypeError, ValueError):
        return None
    return val if math.isfinite(val) else None


def section(d: Mapping | None, *keys: str) -> dict:
    """Nested section as a dict ({} when missing or None)."""
    cur: Any = d
    for k in keys:
        if not isinstance(cur, Mapping):
            return {}
        cur = cur.get(k)
    return dict(cur) if isinstance(cur, Mapping) else {}


@dataclass
class StageResult:
    """Everything measured for one model; see the module docstring for each section."""

    name: str
    metrics: dict = field(default_factory=dict)
    label_free: dict = field(default_factory=dict)
    gap: dict = field(default_factory=dict)
    collapse: dict = field(default_factory=dict)
    spurious: dict = field(default_factory=dict)
    embedding: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)

    _SECTIONS = ("metrics", "label_free", "gap", "collapse", "spurious", "embedding", "groups")

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name}
        for key in self._SECTIONS:
            out[key] = to_jsonable(getattr(self, key)) or {}
        return out

    @classmethod
    def from_dict(cls, d: Mapping | StageResult | None) -> StageResult | None:
        """Build from a dict; tolerant: missing/None sections become {}."""
        if d is None:
            return None
        if isinstance(d, StageResult):
            return d
        d = to_jsonable(d)
        kwargs = {k: (d.get(k) if isinstance(d.get(k), Mapping) else {}) for k in cls._SECTIONS}
        return cls(name=str(d.get("name") or "model"), **kwargs)


@dataclass
class RunInfo:
    """Provenance shown at the foot of the report."""

    name: str = "domaingap run"
    recipe_text: str | None = None
    seed: int | None = None
    device: str | None = None
    versions: dict = field(default_factory=dict)
    created: str | None = None

    def to_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping | RunInfo | None) -> RunInfo:
        if isinstance(d, RunInfo):
            return d
        d = dict(d or {})
        seed = d.get("seed")
        return cls(
            name=str(d.get("name") or "domaingap run"),
            recipe_text=None if d.get("recipe_text") is None else str(d["recipe_text"]),
            seed=seed,
            device=None if d.get("device") is None else str(d["device"]),
            versions={str(k): str(v) for k, v in dict(d.get("versions") or {}).items()},
            created=None if d.get("created") is None else str(d["created"]),
        )


@dataclass(frozen=True)
class Coverage:
    """What the audit could see: source images (none in a source-free run) and the
    classes the target's labels leave out (``data.target_classes: subset``)."""

    source_images: bool = True
    target_missing_classes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"source_images": self.source_images, "target_missing_classes": list(self.target_missing_classes)}

    @classmethod
    def from_dict(cls, d: Mapping | Coverage | None) -> Coverage:
        if isinstance(d, Coverage):
            return d
        d = d or {}
        return cls(source_images=d.get("source_images", True) is not False,
                   target_missing_classes=tuple(str(c) for c in d.get("target_missing_classes") or ()))


@dataclass
class Audit:
    """A complete audit: the two stages, the verdicts, the banner and the run's provenance.

    ``overall`` is the banner as judged with the verdicts (:func:`build_audit`); an
    audit made by hand without one gets :func:`overall_verdict` of its verdicts."""

    before: StageResult
    after: StageResult | None = None
    classes: list = field(default_factory=list)
    run: RunInfo = field(default_factory=RunInfo)
    methods_table: list = field(default_factory=list)
    verdicts: list = field(default_factory=list)
    #: the AuditThresholds the verdicts were judged with (as a dict)
    thresholds: dict = field(default_factory=dict)
    #: the data audit (diagnostics.data_audit; recipe diagnostics.data_audit), {} when not run
    data: dict = field(default_factory=dict)
    #: several labelled sources: each one's gap, weight and contribution (sources_policy.py)
    sources: dict | None = None
    #: what the audit could see (source images, the target's labelled classes)
    coverage: Coverage = field(default_factory=Coverage)
    overall: Verdict | None = None
    #: which model is deployed and why: {"model", "rule", "audited", "estimator",
    #: "corroborating", "images", "ranking": [{model, rank, <estimator>: accuracy}]}; None
    #: for an audit of a pair of models (``diagnose audit-models``) or an older audit.json
    deployment: dict | None = None

    def __post_init__(self) -> None:
        if self.overall is None:
            self.overall = overall_verdict(self.verdicts)

    def to_dict(self) -> dict:
        return {
            "classes": [str(c) for c in self.classes],
            "run": self.run.to_dict(),
            "overall": self.overall.to_dict(),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "before": self.before.to_dict(),
            "after": None if self.after is None else self.after.to_dict(),
            "methods_table": to_jsonable(self.methods_table) or [],
            "thresholds": to_jsonable(self.thresholds) or {},
            **({"data": to_jsonable(self.data)} if self.data else {}),
            "sources": to_jsonable(self.sources),
            **({"coverage": self.coverage.to_dict()} if self.coverage != Coverage() else {}),
            **({"deployment": to_jsonable(self.deployment)} if self.deployment else {}),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping | Audit) -> Audit:
        """Rebuild from :meth:`to_dict` output (the banner as written; recomputed from the
        verdicts only for a dict that has none)."""
        if isinstance(d, Audit):
            return d
        before = StageResult.from_dict(d.get("before")) or StageResult(name="model")
        return cls(
            before=before,
            after=StageResult.from_dict(d.get("after")),
            classes=[str(c) for c in (d.get("classes") or [])],
            run=RunInfo.from_dict(d.get("run")),
            methods_table=[dict(r) for r in (d.get("methods_table") or [])],
            verdicts=[Verdict.from_dict(v) for v in (d.get("verdicts") or [])],
            thresholds=dict(d.get("thresholds") or {}),
            data=dict(d.get("data") or {}),
            sources=dict(d["sources"]) if d.get("sources") else None,
            coverage=Coverage.from_dict(d.get("coverage")),
            overall=Verdict.from_dict(d["overall"]) if isinstance(d.get("overall"), Mapping) else None,
            deployment=dict(d["deployment"]) if isinstance(d.get("deployment"), Mapping) else None,
        )
