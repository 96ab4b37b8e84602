"""Before/after audit of an adaptation: the data contract, the verdicts, the overall banner.

The audit compares two models on the same source and target data: ``before`` (usually
the source-only model) and ``after`` (the adapted one). Every other part of domaingap
hands its results over as plain JSON-able dicts (each result dataclass has ``.to_dict()``);
this module reads them, decides what happened, and says it in plain sentences with the
numbers. It computes no statistics itself: it compares figures that were measured
elsewhere. The HTML report (:mod:`diagnostics.report`) renders an :class:`Audit`.

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
    label_free: {im_score, snd, ...}       # label-free selection scores (higher = better)
    gap: {"mmd": {mmd2, p_value, bandwidth, permutations, n_x, n_y},
          "frechet": {distance, ci_low, ci_high, n_source, n_target, dim, extractor},
          "domain_classifier": {auc, accuracy, proxy_a_distance},
          "transport": {distance, method, n_points}}
    collapse: {"source": C, "target": C,
               "source_prior": {class: share} (optional; the source label prior —
                                               falls back to source.histogram),
               "bbse_target_mix": {class: share},   # BBSE estimate of the target label mix
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

``Audit`` (alias ``AuditInput``)::

    before: StageResult, after: StageResult | None, classes: [str],
    run: RunInfo {name, recipe_text, seed, device, versions {package: version}, created},
    methods_table: [{method, seed, source_acc, target_acc, selected_epoch, selector, ...}],
    verdicts: [Verdict]

``Verdict(name, level in {"ok", "warn", "fail"}, title, summary, evidence)``: ``summary``
is one plain sentence with the numbers; ``evidence`` maps a figure's name to its value
(numbers, short strings) — the report formats keys containing ``accuracy``/``acc``/
``f1``/``share``/``recall`` as percentages and ``p_value`` keys as p-values.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

LEVELS = ("ok", "warn", "fail")
_RANK = {lvl: i for i, lvl in enumerate(LEVELS)}


# --------------------------------------------------------------------------- helpers


def to_plain(obj: Any) -> Any:
    """Recursively turn result objects into JSON-able Python.

    Objects with ``.to_dict()`` (every diagnostics result) and dataclasses become dicts,
    numpy/torch scalars and arrays become numbers and lists, non-finite floats ``None``.
    """
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_plain(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_plain(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if hasattr(obj, "detach"):  # torch tensor, without importing torch here
        obj = obj.detach().cpu().numpy()
    if hasattr(obj, "tolist"):  # numpy array or scalar
        return to_plain(obj.tolist())
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return str(obj)


def _num(d: Mapping | None, *keys: str) -> float | None:
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


def _sec(d: Mapping | None, *keys: str) -> dict:
    """Nested section as a dict ({} when missing or None)."""
    cur: Any = d
    for k in keys:
        if not isinstance(cur, Mapping):
            return {}
        cur = cur.get(k)
    return dict(cur) if isinstance(cur, Mapping) else {}


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _pts(delta: float) -> str:
    """A change of a fraction in percentage points, signed: +17.3 points."""
    p = 100.0 * delta
    if abs(p) < 0.05:
        p = 0.0
    return f"{p:+.1f} points"


def _g(x: float) -> str:
    """A statistic in 3 significant figures (no exponent for everyday magnitudes)."""
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:.2e}"


def fmt_p(p: float) -> str:
    """A p-value as 0.003 or <0.001."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(p: float) -> str:
    """'p = 0.003' or 'p < 0.001'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def worst_level(levels: Iterable[str]) -> str:
    """The most severe of ``levels`` ("ok" when empty)."""
    return max(levels, key=lambda lvl: _RANK.get(lvl, 0), default="ok")


# --------------------------------------------------------------------------- contract


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
            out[key] = to_plain(getattr(self, key)) or {}
        return out

    @classmethod
    def from_dict(cls, d: Mapping | StageResult | None) -> StageResult | None:
        """Build from a dict; tolerant: missing/None sections become {}."""
        if d is None:
            return None
        if isinstance(d, StageResult):
            return d
        d = to_plain(d)
        kwargs = {k: (d.get(k) if isinstance(d.get(k), Mapping) else {}) for k in cls._SECTIONS}
        return cls(name=str(d.get("name") or "model"), **kwargs)

    # convenient accessors (None when not measured)
    def accuracy(self, split: str) -> float | None:
        return _num(self.metrics, split, "accuracy")

    def macro_f1(self, split: str) -> float | None:
        return _num(self.metrics, split, "macro_f1")


@dataclass
class Verdict:
    """One finding: ``level`` in {"ok", "warn", "fail"}, a title, one plain sentence."""

    name: str
    level: str
    title: str
    summary: str
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in _RANK:
            raise ValueError(f"Verdict level must be one of {LEVELS}, got {self.level!r}")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "level": self.level,
            "title": self.title,
            "summary": self.summary,
            "evidence": to_plain(self.evidence) or {},
        }

    @classmethod
    def from_dict(cls, d: Mapping | Verdict) -> Verdict:
        if isinstance(d, Verdict):
            return d
        level = str(d.get("level", "warn"))
        return cls(
            name=str(d.get("name", "")),
            level=level if level in _RANK else "warn",
            title=str(d.get("title", "")),
            summary=str(d.get("summary", "")),
            evidence=dict(d.get("evidence") or {}),
        )


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
        return to_plain(dataclasses.asdict(self))

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


@dataclass
class Audit:
    """A complete audit: the two stages, the verdicts and the run's provenance."""

    before: StageResult
    after: StageResult | None = None
    classes: list = field(default_factory=list)
    run: RunInfo = field(default_factory=RunInfo)
    methods_table: list = field(default_factory=list)
    verdicts: list = field(default_factory=list)
    #: the AuditThresholds the verdicts were judged with (as a dict)
    thresholds: dict = field(default_factory=dict)

    @property
    def overall(self) -> Verdict:
        return overall_verdict(self.verdicts)

    def to_dict(self) -> dict:
        return {
            "classes": [str(c) for c in self.classes],
            "run": self.run.to_dict(),
            "overall": self.overall.to_dict(),
            "verdicts": [v.to_dict() for v in self.verdicts],
            "before": self.before.to_dict(),
            "after": None if self.after is None else self.after.to_dict(),
            "methods_table": to_plain(self.methods_table) or [],
            "thresholds": to_plain(self.thresholds) or {},
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping | Audit) -> Audit:
        """Rebuild from :meth:`to_dict` output (``overall`` is recomputed, not read)."""
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
        )


#: the input of :func:`build_audit` and the output share one shape
AuditInput = Audit


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
    #: significance level of the MMD permutation test (gap-only verdict)
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


# --------------------------------------------------------------------------- gap


def _gap_figures(stage: StageResult) -> dict[str, float]:
    """The comparable size of each gap statistic (smaller = closer domains).

    The domain-classifier AUC counts as its distance from chance, max(AUC, 1 − AUC),
    so a classifier that is wrong in a consistent way still shows a gap.
    """
    out: dict[str, float] = {}
    mmd2 = _num(stage.gap, "mmd", "mmd2")
    if mmd2 is not None:
        out["MMD²"] = mmd2
    fd = _num(stage.gap, "frechet", "distance")
    if fd is not None:
        out["Fréchet distance"] = fd
    auc = _num(stage.gap, "domain_classifier", "auc")
    if auc is not None:
        out["domain-classifier AUC"] = max(auc, 1.0 - auc)
    ot = _num(stage.gap, "transport", "distance")
    if ot is not None:
        out["transport distance"] = ot
    return out


def gap_verdict(before: StageResult, after: StageResult | None, th: AuditThresholds) -> Verdict | None:
    """Did the domain gap shrink? (before vs after; or, alone, is there one?)"""
    b = _gap_figures(before)
    if not b:
        return None
    if after is None or not _gap_figures(after):
        return _gap_only_verdict(before, th)
    a = _gap_figures(after)
    common = [k for k in b if k in a]
    if not common:
        return _gap_only_verdict(before, th)
    fell, rose = [], []
    parts = []
    evidence: dict[str, Any] = {}
    for k in common:
        x0, x1 = b[k], a[k]
        scale = max(abs(x0), 1e-12)
        rel = (x1 - x0) / scale
        if rel < -th.gap_rel_change:
            fell.append(k)
        elif rel > th.gap_rel_change:
            rose.append(k)
        parts.append(f"{k} {_g(x0)} → {_g(x1)}")
        slug = k.replace("²", "2").replace("é", "e").replace(" ", "_").replace("-", "_").lower()
        evidence[f"{slug}_before"] = x0
        evidence[f"{slug}_after"] = x1
    p_before, p_after = _num(before.gap, "mmd", "p_value"), _num(after.gap, "mmd", "p_value")
    if p_after is not None:
        evidence["mmd_p_value_after"] = p_after
    n = len(common)
    numbers = "; ".join(parts)
    if len(fell) * 2 > n:
        level, title = "ok", "Domain gap shrank"
        head = f"The domain gap shrank ({len(fell)} of {n} statistics fell)"
    elif len(rose) * 2 > n:
        level, title = "warn", "Domain gap grew"
        head = f"The domain gap grew after adaptation ({len(rose)} of {n} statistics rose)"
    else:
        level, title = "warn", "Domain gap unchanged"
        head = f"The domain gap did not clearly shrink ({len(fell)} of {n} statistics fell)"
    tail = ""
    if p_after is not None and level == "ok":
        tail = (
            f"; MMD test after adaptation {p_phrase(p_after)}"
            + (" (still significant)" if p_after < th.alpha
               else " (no longer significant)" if p_before is not None and p_before < th.alpha
               else " (not significant)")
        )
    return Verdict("gap", level, title, f"{head}: {numbers}{tail}.", evidence)


def _gap_only_verdict(stage: StageResult, th: AuditThresholds) -> Verdict:
    """One model only (``diagnose gap``): is the gap statistically and practically there?"""
    p = _num(stage.gap, "mmd", "p_value")
    mmd2 = _num(stage.gap, "mmd", "mmd2")
    auc = _num(stage.gap, "domain_classifier", "auc")
    fd = _num(stage.gap, "frechet", "distance")
    lo, hi = _num(stage.gap, "frechet", "ci_low"), _num(stage.gap, "frechet", "ci_high")
    parts, evidence = [], {}
    if mmd2 is not None:
        parts.append(f"MMD² {_g(mmd2)}" + (f" ({p_phrase(p)})" if p is not None else ""))
        evidence["mmd2"] = mmd2
        if p is not None:
            evidence["mmd_p_value"] = p
    if fd is not None:
        ci = f" [95% CI {_g(lo)}–{_g(hi)}]" if lo is not None and hi is not None else ""
        parts.append(f"Fréchet distance {_g(fd)}{ci}")
        evidence["frechet_distance"] = fd
    if auc is not None:
        parts.append(f"domain-classifier AUC {auc:.3f}")
        evidence["domain_classifier_auc"] = auc
    significant = p is not None and p < th.alpha
    large = auc is not None and max(auc, 1 - auc) >= th.auc_large
    if significant or large:
        level, title = "warn", "Domains differ"
        head = "Source and target differ measurably"
    elif p is not None or auc is not None:
        level, title = "ok", "No measurable gap"
        head = "No significant difference between source and target"
    else:
        level, title = "ok", "Domain gap measured"
        head = "Domain gap measured"
    return Verdict("gap", level, title, f"{head}: {'; '.join(parts)}.", evidence)


# --------------------------------------------------------------------------- transfer


def _collapsed(stage: StageResult | None) -> bool | None:
    if stage is None or not stage.collapse or "collapsed" not in stage.collapse:
        return None
    return bool(stage.collapse.get("collapsed"))


def transfer_verdict(before: StageResult, after: StageResult, th: AuditThresholds) -> Verdict | None:
    """Negative transfer: did adaptation make the model worse?

    With target labels: target accuracy after < before − tolerance fails. Without them the
    evidence is label-free: IM / SND scores that fell, class collapse that appeared, and
    source accuracy lost (forgetting; ``source_drop_warn`` / ``source_drop_fail``).
    """
    sb, sa = before.accuracy("source_test"), after.accuracy("source_test")
    tb, ta = before.accuracy("target_test"), after.accuracy("target_test")
    evidence: dict[str, Any] = {}
    levels: list[str] = []
    problems: list[str] = []

    src_text = ""
    if sb is not None and sa is not None:
        drop = sb - sa
        evidence.update(source_accuracy_before=sb, source_accuracy_after=sa)
        src_text = f"source accuracy {_pct(sb)} → {_pct(sa)}"
        if drop >= th.source_drop_fail:
            levels.append("fail")
            problems.append(f"source accuracy fell {100 * drop:.1f} points ({_pct(sb)} → {_pct(sa)})")
        elif drop >= th.source_drop_warn:
            levels.append("warn")
            problems.append(f"source accuracy fell {100 * drop:.1f} points ({_pct(sb)} → {_pct(sa)})")

    if tb is not None and ta is not None:
        delta = ta - tb
        evidence.update(target_accuracy_before=tb, target_accuracy_after=ta)
        tgt_text = f"target accuracy {_pct(tb)} → {_pct(ta)} ({_pts(delta)})"
        if delta < -th.target_tolerance:
            level = "fail"
            title = "Negative transfer"
            lead = "Adaptation hurt"
        elif delta <= th.target_tolerance:
            level = worst_level(["warn", *levels])
            title = "Adaptation did not help"
            lead = "Adaptation did not help"
        else:
            level = worst_level(["ok", *levels])
            title = "Adaptation helped" if level == "ok" else "Adaptation helped the target, cost the source"
            lead = "Adaptation helped"
        if _collapsed(after) and not _collapsed(before):
            level = "fail"
            problems.append("the adapted model collapsed onto few classes")
        summary = f"{lead}: {tgt_text}" + (f"; {src_text}" if src_text else "")
        if problems and lead != "Adaptation hurt":
            summary += " — but " + "; ".join(problems)
        return Verdict("negative_transfer", level, title, summary + ".", evidence)

    # ---- no target labels: label-free evidence only
    signals: list[str] = []
    for key, label in (("im_score", "IM score"), ("snd", "SND")):
        x0, x1 = _num(before.label_free, key), _num(after.label_free, key)
        if x0 is None or x1 is None:
            continue
        evidence[f"{key}_before"], evidence[f"{key}_after"] = x0, x1
        text = f"{label} {_g(x0)} → {_g(x1)}"
        if x1 < x0 - th.label_free_rel_drop * max(abs(x0), 1e-12):
            levels.append("warn")
            problems.append(f"{label} fell ({_g(x0)} → {_g(x1)})")
        else:
            signals.append(text)
    cb, ca = _collapsed(before), _collapsed(after)
    if ca:
        largest = _num(after.collapse, "target", "largest_share")
        if largest is not None:
            evidence["target_largest_share_after"] = largest
        if not cb:
            levels.append("fail")
            problems.append(
                "class collapse appeared after adaptation"
                + (f" ({_pct(largest)} of target predictions in one class)" if largest is not None else "")
            )
    if sb is None and not evidence:
        return None
    level = worst_level(levels)
    if level == "ok":
        title = "No sign of negative transfer"
        parts = signals + ([src_text] if src_text else [])
        summary = "No sign of negative transfer (target labels unknown)" + (
            f": {'; '.join(parts)}." if parts else "."
        )
    else:
        title = "Negative transfer likely" if level == "fail" else "Possible negative transfer"
        summary = f"{title} (target labels unknown): {'; '.join(problems)}"
        if src_text and not any(p.startswith("source accuracy") for p in problems):
            summary += f"; {src_text}"
        summary += "."
    return Verdict("negative_transfer", level, title, summary, evidence)


def accuracy_gap_verdict(stage: StageResult, th: AuditThresholds) -> Verdict | None:
    """One model only: how much accuracy does it lose from source to target?"""
    s, t = stage.accuracy("source_test"), stage.accuracy("target_test")
    if s is None or t is None:
        return None
    drop = s - t
    ev = {"source_accuracy": s, "target_accuracy": t}
    if drop > th.accuracy_gap_warn:
        return Verdict(
            "accuracy_gap", "warn", "Accuracy drops on the target",
            f"The model loses accuracy on the target: source {_pct(s)} → target {_pct(t)} ({_pts(-drop)}).",
            ev,
        )
    return Verdict(
        "accuracy_gap", "ok", "Accuracy holds on the target",
        f"Accuracy holds on the target: source {_pct(s)}, target {_pct(t)} ({_pts(-drop)}).",
        ev,
    )


# --------------------------------------------------------------------------- collapse


def _collapse_phrase(stage: StageResult) -> tuple[str, dict]:
    """"the largest class 'normal' holds 97.0% of target predictions; ..." plus its evidence."""
    hist = _sec(stage.collapse, "target", "histogram")
    ev: dict[str, Any] = {}
    phrase = ""
    if hist:
        cls, share = max(hist.items(), key=lambda kv: float(kv[1] or 0.0))
        phrase = f"the largest class '{cls}' holds {_pct(float(share))} of target predictions"
        ev["largest_class"] = str(cls)
        ev["largest_share"] = float(share)
    ent, logk = _num(stage.collapse, "target", "marginal_entropy"), _num(stage.collapse, "target", "log_k")
    if ent is not None and logk is not None:
        phrase += ("; " if phrase else "") + f"marginal entropy {ent:.2f} of log K = {logk:.2f}"
        ev["marginal_entropy"], ev["log_k"] = ent, logk
    return phrase, ev


def collapse_verdict(before: StageResult, after: StageResult | None) -> Verdict | None:
    """Class collapse: one class swallowing the target predictions (before and after)."""
    cb, ca = _collapsed(before), _collapsed(after)
    if cb is None and ca is None:
        return None
    if after is None or ca is None:
        phrase, ev = _collapse_phrase(before)
        reason = str(before.collapse.get("reason") or "")
        if cb:
            return Verdict(
                "collapse", "fail", "Class collapse on the target",
                f"The model collapsed on the target: {phrase or reason}.", {**ev, "reason": reason},
            )
        return Verdict(
            "collapse", "ok", "No class collapse",
            "No class collapse on the target" + (f": {phrase}." if phrase else "."), ev,
        )
    phrase_b, ev_b = _collapse_phrase(before)
    phrase_a, ev_a = _collapse_phrase(after)
    ev = {f"{k}_before": v for k, v in ev_b.items()} | {f"{k}_after": v for k, v in ev_a.items()}
    reason = str(after.collapse.get("reason") or "")
    if ca and not cb:
        ev["reason"] = reason
        return Verdict(
            "collapse", "fail", "Adaptation caused class collapse",
            f"Class collapse appeared after adaptation: {phrase_a or reason}.", ev,
        )
    if ca and cb:
        ev["reason"] = reason
        return Verdict(
            "collapse", "fail", "Class collapse persists",
            f"The model collapsed on the target before and after adaptation: {phrase_a or reason}.", ev,
        )
    if cb and not ca:
        return Verdict(
            "collapse", "ok", "Adaptation removed class collapse",
            f"Adaptation removed the class collapse: before, {phrase_b}; after, {phrase_a}.", ev,
        )
    return Verdict(
        "collapse", "ok", "No class collapse",
        "No class collapse before or after adaptation" + (f": after, {phrase_a}." if phrase_a else "."), ev,
    )


# --------------------------------------------------------------------------- spurious


def _spurious_rows(stage: StageResult | None) -> dict[str, dict]:
    """{domain: verdict dict} for the domains that have a spurious-feature verdict."""
    if stage is None:
        return {}
    out = {}
    for domain, sec in stage.spurious.items():
        if isinstance(sec, Mapping) and isinstance(sec.get("verdict"), Mapping):
            out[str(domain)] = dict(sec["verdict"])
    return out


def _spurious_level(v: Mapping) -> str:
    lvl = str(v.get("level") or "")
    if lvl in _RANK:
        return lvl
    return "warn" if v.get("flagged") else "ok"


def _spurious_desc(domain: str, v: Mapping) -> str:
    region = v.get("region") or "a region"
    share = _num(v, "share")
    flips = v.get("flips")
    bits = [f"{domain}: {region}"]
    if share is not None:
        bits.append(f"holds {_pct(share)} of the attribution")
    text = " ".join(bits)
    if isinstance(flips, (int, float)) and not isinstance(flips, bool):
        # ``flips`` is the share of predictions that change when the region is occluded
        text += f", occluding it changes {_pct(float(flips))} of the predictions"
    return text


def spurious_verdict(before: StageResult, after: StageResult | None,
                     th: AuditThresholds = AuditThresholds()) -> Verdict | None:
    """Spurious features (shortcuts): flagged regions, and whether reliance fell after adaptation."""
    vb, va = _spurious_rows(before), _spurious_rows(after)
    if not vb and not va:
        return None
    current = va or vb
    level = worst_level(_spurious_level(v) for v in current.values())
    flagged = {d: v for d, v in current.items() if _spurious_level(v) != "ok" or v.get("flagged")}
    evidence: dict[str, Any] = {}
    for d, v in vb.items():
        if _num(v, "share") is not None:
            evidence[f"{d}_share" + ("_before" if va else "")] = _num(v, "share")
    for d, v in va.items():
        if _num(v, "share") is not None:
            evidence[f"{d}_share_after"] = _num(v, "share")
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
            region, s0, s1 = vb[d].get("region"), _num(vb[d], "share"), _num(va[d], "share")
            f0, f1 = vb[d].get("flips"), va[d].get("flips")
        else:
            continue
        if s0 is None or s1 is None:
            continue
        has_flips = all(isinstance(f, (int, float)) for f in (f0, f1))
        if has_flips and (s1 - s0) * (f1 - f0) < 0:  # attribution and occlusion disagree: say so
            word = "changed"
        else:
            word = "fell" if s1 < s0 else ("rose" if s1 > s0 else "held")
        text = f"reliance on {region or 'the region'} {word} on {d} (attribution {_pct(s0)} → {_pct(s1)}"
        if has_flips:
            text += f"; occluding it changes {_pct(float(f0))} → {_pct(float(f1))} of the predictions"
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
    was = [d for d, v in vb.items() if _spurious_level(v) != "ok" or v.get("flagged")]
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
                still.append(f"{d}: hiding {rc.get('region')} still changes {_pct(float(f1))} of the predictions"
                             + (f" (same-size patches elsewhere: {_pct(float(ctrl))})"
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


# --------------------------------------------------------------------------- assembling


def compute_verdicts(
    before: StageResult | Mapping,
    after: StageResult | Mapping | None = None,
    *,
    thresholds: AuditThresholds = AuditThresholds(),
) -> list[Verdict]:
    """All verdicts the available results support, most important first.

    Order: negative transfer (or, with one model, the accuracy gap), class collapse,
    spurious features, domain gap. Sections that were not measured give no verdict.
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
    out.append(collapse_verdict(b, a))
    out.append(spurious_verdict(b, a, thresholds))
    out.append(gap_verdict(b, a, thresholds))
    return [v for v in out if v is not None]


def overall_verdict(verdicts: Iterable[Verdict | Mapping]) -> Verdict:
    """The banner: the worst level of all verdicts and a headline sentence naming them."""
    vs = [Verdict.from_dict(v) for v in verdicts]
    if not vs:
        return Verdict("overall", "ok", "Nothing to judge", "No results were available to audit.")
    level = worst_level(v.level for v in vs)
    bad = [v for v in vs if v.level == level and level != "ok"]
    if level == "fail":
        title = "Audit failed"
        summary = f"Audit failed: {_join_titles(bad)}."
    elif level == "warn":
        title = "Audit passed with warnings"
        summary = f"Check before use: {_join_titles(bad)}."
    else:
        title = "Audit passed"
        lead = next((v for v in vs if v.name == "negative_transfer"), vs[0])
        summary = f"All {len(vs)} checks passed. {lead.summary}"
    # the first failing/warning verdict's sentence carries the numbers into the banner
    if bad:
        summary += f" {bad[0].summary}"
    return Verdict("overall", level, title, summary, {v.name: v.level for v in vs})


def _join_titles(vs: list[Verdict]) -> str:
    titles = [v.title.lower() if i else v.title for i, v in enumerate(vs)]
    if len(titles) <= 1:
        return "".join(titles)
    return ", ".join(titles[:-1]) + " and " + titles[-1]


def package_versions(names: Iterable[str] = (
    "domaingap", "torch", "torchvision", "numpy", "scikit-learn", "pot", "captum",
    "umap-learn", "pytorch-adapt", "matplotlib", "jinja2",
)) -> dict[str, str]:
    """Installed versions of ``names`` (missing packages are left out)."""
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return out


def build_audit(
    before: StageResult | Mapping,
    after: StageResult | Mapping | None = None,
    *,
    classes: Iterable[str] = (),
    run: RunInfo | Mapping | None = None,
    methods_table: Iterable[Mapping] | None = None,
    thresholds: AuditThresholds = AuditThresholds(),
) -> Audit:
    """Assemble an :class:`Audit` and compute its verdicts.

    ``run`` without ``created`` gets the current UTC time; without ``versions`` the
    installed versions of the main packages.
    """
    b = StageResult.from_dict(before)
    if b is None:
        raise ValueError("build_audit needs a 'before' stage")
    a = StageResult.from_dict(after)
    info = RunInfo.from_dict(to_plain(run) if run is not None and not isinstance(run, RunInfo) else run)
    if info.created is None:
        info.created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if not info.versions:
        info.versions = package_versions()
    return Audit(
        before=b,
        after=a,
        classes=[str(c) for c in classes],
        run=info,
        methods_table=[dict(to_plain(r)) for r in (methods_table or [])],
        verdicts=compute_verdicts(b, a, thresholds=thresholds),
        thresholds=dataclasses.asdict(thresholds),
    )
