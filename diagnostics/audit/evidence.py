"""The typed evidence the verdict policies read: the audit's JSON contract
(:mod:`.contract`), each section parsed once, here, into frozen dataclasses.

The contract stays plain JSON on disk (``audit.json`` is read by ``diagnose audit``, the
drift report, sweeps and tests); its readers are tolerant — a missing key, ``None`` or a
non-finite number means "not measured". This module is the one place that reads those
keys: a policy (``*_policy.py``) asks ``stage.gap.mmd.p_value`` or
``stage.collapse.level``, never a string path. Levels a section leaves out are filled
in here by the one table each has (:data:`diagnostics.collapse.VERDICT_LEVELS` for the
collapse check, :func:`finding_level` for a spurious-region finding), so the policies and
the report read the same level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from diagnostics.audit.contract import Coverage, StageResult, number, section
from diagnostics.audit.verdict import LEVELS
from diagnostics.collapse import VERDICT_LEVELS


def _raw_number(x: Any) -> int | float | None:
    """A number as it was written (int stays int), else None."""
    return x if isinstance(x, (int, float)) else None


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _mix(d: Mapping) -> dict[str, float]:
    return {k: float(v or 0.0) for k, v in d.items()}


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class SplitMetrics:
    """One test split's figures (``metrics.source_test`` / ``metrics.target_test``);
    all None when the split was not measured (no labels, no source images)."""

    accuracy: float | None = None
    per_class_recall: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, d: Any) -> SplitMetrics:
        return cls(number(d, "accuracy"), section(d, "per_class_recall"))


@dataclass(frozen=True)
class PairedChange:
    """``metrics.target_change``: the paired accuracy change on the same held-out images
    (:class:`diagnostics.paired.AccuracyChange`)."""

    verdict: str
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    level: float
    mcnemar_p: float | None
    b: int
    c: int
    n: int

    @classmethod
    def parse(cls, d: Mapping) -> PairedChange | None:
        if not d:
            return None
        count = lambda key: int(number(d, key) or 0)  # noqa: E731
        return cls(verdict=str(d.get("verdict")), delta=number(d, "delta"), ci_low=number(d, "ci_low"),
                   ci_high=number(d, "ci_high"), level=number(d, "level") or 0.95,
                   mcnemar_p=number(d, "mcnemar_p"), b=count("b"), c=count("c"), n=count("n"))


# --------------------------------------------------------------------------- gap


@dataclass(frozen=True)
class TwoSampleTest:
    """A permutation test of the gap: MMD (``statistic`` = MMD²) or the classifier
    two-sample test (``statistic`` = AUC). ``decidable`` is False when its permutations
    cannot reach the significance level."""

    p_value: float | None = None
    statistic: float | None = None
    decidable: bool = True


@dataclass(frozen=True)
class Frechet:
    distance: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_centre: float | None = None
    extractor: str | None = None


@dataclass(frozen=True)
class Gap:
    """The ``gap`` section: the two tests, the domain classifier's AUC, the Fréchet distance."""

    mmd: TwoSampleTest = TwoSampleTest()
    classifier_test: TwoSampleTest = TwoSampleTest()
    domain_classifier_auc: float | None = None
    frechet: Frechet = Frechet()

    @classmethod
    def parse(cls, gap: Mapping) -> Gap:
        mmd, ct, fd = section(gap, "mmd"), section(gap, "classifier_test"), section(gap, "frechet")
        decidable = lambda d: d.get("decidable", True) is not False  # noqa: E731 (absent: it can decide)
        return cls(
            mmd=TwoSampleTest(number(mmd, "p_value"), number(mmd, "mmd2"), decidable(mmd)),
            classifier_test=TwoSampleTest(number(ct, "p_value"), number(ct, "auc"), decidable(ct)),
            domain_classifier_auc=number(gap, "domain_classifier", "auc"),
            frechet=Frechet(number(fd, "distance"), number(fd, "ci_low"), number(fd, "ci_high"),
                            number(fd, "ci_centre"), str(fd["extractor"]) if fd.get("extractor") else None),
        )


# --------------------------------------------------------------------------- collapse


@dataclass(frozen=True)
class PredictionSummary:
    """One domain's predictions (``collapse.target``): the predicted-class shares and
    their spread."""

    histogram: dict = field(default_factory=dict)
    largest_share: float | None = None
    marginal_entropy: float | None = None
    log_k: float | None = None
    im_score: float | None = None
    mean_confidence: float | None = None

    @classmethod
    def parse(cls, d: Mapping) -> PredictionSummary:
        return cls(_mix(section(d, "histogram")), number(d, "largest_share"), number(d, "marginal_entropy"),
                   number(d, "log_k"), number(d, "im_score"), number(d, "mean_confidence"))


@dataclass(frozen=True)
class Collapse:
    """The ``collapse`` section (:func:`diagnostics.gap.collapse_section`).

    ``verdict`` is None when the check was not run; a section written without one reads
    "collapsed" / "no_shift" from its ``collapsed`` flag. ``level`` is the section's own
    (the check raises a covariate shift with a pile-up to "fail"), else
    :data:`~diagnostics.collapse.VERDICT_LEVELS` of the verdict: the one level table."""

    verdict: str | None = None
    level: str = "ok"
    #: the verdict in words, as the report's pill shows it (None when the check did not run)
    label: str | None = None
    collapsed: bool | None = None
    over_predicted: tuple[str, ...] = ()
    reason: str = ""
    target: PredictionSummary = PredictionSummary()
    true_target_mix: dict = field(default_factory=dict)
    prediction_vs_truth: float | None = None

    @classmethod
    def parse(cls, c: Mapping) -> Collapse:
        if not c:
            return cls()
        collapsed = bool(c.get("collapsed")) if "collapsed" in c else None
        verdict = str(c["verdict"]) if c.get("verdict") else (
            None if collapsed is None else ("collapsed" if collapsed else "no_shift"))
        level = str(c["level"]) if c.get("level") in LEVELS else VERDICT_LEVELS.get(verdict or "", "ok")
        label = None if collapsed is None else (
            str(c["verdict"]) if c.get("verdict") else ("collapsed" if collapsed else "no collapse")).replace("_", " ")
        return cls(verdict=verdict, level=level, label=label, collapsed=collapsed,
                   over_predicted=tuple(str(x) for x in c.get("over_predicted") or ()),
                   reason=str(c.get("reason") or ""), target=PredictionSummary.parse(section(c, "target")),
                   true_target_mix=_mix(section(c, "true_target_mix")),
                   prediction_vs_truth=number(c, "prediction_vs_truth"))


# --------------------------------------------------------------------------- spurious


def finding_level(v: Mapping) -> str:
    """The level of one domain's finding ``{level, flagged, ...}``: its own level when
    valid, else "warn" when flagged and "ok" when not."""
    lvl = str(v.get("level") or "")
    if lvl in LEVELS:
        return lvl
    return "warn" if v.get("flagged") else "ok"


@dataclass(frozen=True)
class RegionFinding:
    """``spurious.<domain>.verdict`` (:func:`diagnostics.attribution.region_findings`):
    the flagged region, its share of the attribution and the share of predictions that
    change when it is occluded (``flips``)."""

    level: str
    flagged: bool
    region: Any = None
    share: float | None = None
    flips: int | float | None = None
    reason: str = ""

    @property
    def raised(self) -> bool:
        """Flagged, or judged above "ok"."""
        return self.level != "ok" or self.flagged

    @classmethod
    def parse(cls, v: Mapping) -> RegionFinding:
        return cls(finding_level(v), bool(v.get("flagged")), v.get("region"), number(v, "share"),
                   _raw_number(v.get("flips")), str(v.get("reason") or ""))


@dataclass(frozen=True)
class PairedMeanChange:
    """A bootstrap interval of a paired per-image change (:func:`diagnostics.paired.mean_change`)."""

    word: str | None = None
    ci_low: float | None = None
    ci_high: float | None = None

    @classmethod
    def parse(cls, d: Any) -> PairedMeanChange | None:
        if not isinstance(d, Mapping):
            return None
        return cls(d.get("word") or None, _opt_float(d.get("ci_low")), _opt_float(d.get("ci_high")))


@dataclass(frozen=True)
class RelianceChange:
    """The after-model measured on the region flagged before
    (:func:`diagnostics.attribution.compare_reliance`)."""

    region: Any = None
    share_before: float | None = None
    share_after: float | None = None
    flips_before: int | float | None = None
    flips_after: int | float | None = None
    share_change: PairedMeanChange | None = None
    flips_change: PairedMeanChange | None = None

    @classmethod
    def parse(cls, d: Any) -> RelianceChange | None:
        if not isinstance(d, Mapping):
            return None
        return cls(d.get("region"), _opt_float(d.get("share_before")), _opt_float(d.get("share_after")),
                   _raw_number(d.get("flips_before")), _raw_number(d.get("flips_after")),
                   PairedMeanChange.parse(d.get("share_change")), PairedMeanChange.parse(d.get("flips_change")))


@dataclass(frozen=True)
class SpuriousDomain:
    """One domain's spurious-feature check; ``finding`` None when it gave no verdict."""

    finding: RegionFinding | None = None
    reliance: RelianceChange | None = None
    #: share of predictions changed by occluding same-size patches elsewhere
    control_flipped_share: int | float | None = None

    @property
    def level(self) -> str:
        """The finding's level; "ok" when the check gave no verdict."""
        return "ok" if self.finding is None else self.finding.level

    @classmethod
    def parse(cls, sec: Any) -> SpuriousDomain:
        if not isinstance(sec, Mapping):
            return cls()
        v, occ = sec.get("verdict"), sec.get("occlusion")
        return cls(RegionFinding.parse(v) if isinstance(v, Mapping) else None,
                   RelianceChange.parse(sec.get("reliance_change")),
                   _raw_number(occ.get("control_flipped_share")) if isinstance(occ, Mapping) else None)


# --------------------------------------------------------------------------- label-free


@dataclass(frozen=True)
class AccuracyEstimate:
    """One estimator's target accuracy with its measured bands (fractions)."""

    accuracy: float
    band: float | None = None
    change_band: float | None = None


@dataclass(frozen=True)
class LabelFree:
    """The ``label_free`` section: IM and SND scores; without target labels, the
    estimated accuracies (:mod:`diagnostics.labelfree_estimates`)."""

    im_score: float | None = None
    snd: float | None = None
    estimates: dict = field(default_factory=dict)  # {estimator: AccuracyEstimate}
    default: str | None = None
    corroborating: str | None = None
    #: (low, high) of the change over the source model under a pure label shift
    #: (:func:`diagnostics.label_shift.change_bound_under_label_shift`); adapted stage only
    label_shift_bound: tuple[float, float] | None = None

    @classmethod
    def parse(cls, d: Mapping) -> LabelFree:
        acc = section(d, "accuracy")
        est = {str(n): AccuracyEstimate(float(e["accuracy"]), _opt_float(e.get("band")),
                                        _opt_float(e.get("change_band")))
               for n, e in section(acc, "estimates").items() if number(e, "accuracy") is not None}
        b = section(acc, "label_shift_bound")
        bound = (float(b["low"]), float(b["high"])) if number(b, "low") is not None and \
            number(b, "high") is not None else None
        return cls(number(d, "im_score"), number(d, "snd"), est, acc.get("default") or None,
                   acc.get("corroborating") or None, bound)


# --------------------------------------------------------------------------- a stage, the audit


@dataclass(frozen=True)
class StageEvidence:
    """Everything a policy reads of one model (:class:`~diagnostics.audit.StageResult`)."""

    name: str
    source_test: SplitMetrics = SplitMetrics()
    target_test: SplitMetrics = SplitMetrics()
    target_change: PairedChange | None = None
    label_free: LabelFree = LabelFree()
    gap: Gap = Gap()
    collapse: Collapse = Collapse()
    spurious: dict = field(default_factory=dict)  # {domain: SpuriousDomain}

    @classmethod
    def of(cls, stage: StageResult) -> StageEvidence:
        m = stage.metrics
        return cls(name=stage.name, source_test=SplitMetrics.parse(m.get("source_test")),
                   target_test=SplitMetrics.parse(m.get("target_test")),
                   target_change=PairedChange.parse(section(m, "target_change")),
                   label_free=LabelFree.parse(stage.label_free), gap=Gap.parse(stage.gap),
                   collapse=Collapse.parse(stage.collapse),
                   spurious={str(d): SpuriousDomain.parse(sec) for d, sec in stage.spurious.items()})

    def findings(self) -> dict[str, RegionFinding]:
        """{domain: finding} of the domains whose spurious check gave a verdict."""
        return {d: s.finding for d, s in self.spurious.items() if s.finding is not None}


@dataclass(frozen=True)
class LeaveOneOut:
    """Several sources, each left out once: its contribution to the label-free estimate."""

    contribution: dict = field(default_factory=dict)  # {source: estimate(all) - estimate(without it)}
    estimated_accuracy_all: float | None = None
    estimated_accuracy_without: dict = field(default_factory=dict)  # {source: float | None}
    change_p90: float | None = None  # the estimator's measured change error


@dataclass(frozen=True)
class Sources:
    """The audit's ``sources`` section (several labelled sources)."""

    names: tuple[str, ...] = ()
    mmd2: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    leave_one_out: LeaveOneOut = LeaveOneOut()

    @classmethod
    def parse(cls, d: Mapping | None) -> Sources:
        d = d or {}
        names = tuple(str(n) for n in d.get("names") or ())
        gaps, weights, loo = section(d, "mmd2"), section(d, "weights"), section(d, "leave_one_out")
        contrib = section(loo, "contribution")
        return cls(
            names=names,
            mmd2={n: number(gaps, n) for n in names if number(gaps, n) is not None},
            weights={n: number(weights, n) for n in names if number(weights, n) is not None},
            leave_one_out=LeaveOneOut(
                contribution={n: number(contrib, n) for n in names if number(contrib, n) is not None},
                estimated_accuracy_all=number(loo, "all", "estimated_accuracy"),
                estimated_accuracy_without={n: number(loo, "without", n, "estimated_accuracy") for n in names},
                change_p90=number(loo, "measured_error", "change_p90")),
        )


@dataclass(frozen=True)
class AuditEvidence:
    """What every policy is handed: the two stages, the sources, what the audit could see."""

    before: StageEvidence
    after: StageEvidence | None = None
    sources: Sources = Sources()
    coverage: Coverage = Coverage()
    #: the source model (before) is deployed although a run (after) is audited: the
    #: label-free ranking estimated no run better (``Audit.deployment``)
    deployed_before: bool = False

    @classmethod
    def of(cls, before: StageResult, after: StageResult | None = None, sources: Mapping | None = None,
           coverage: Coverage | None = None, deployed_before: bool = False) -> AuditEvidence:
        return cls(StageEvidence.of(before), None if after is None else StageEvidence.of(after),
                   Sources.parse(sources), coverage or Coverage(), deployed_before)

    @property
    def deployed(self) -> StageEvidence:
        """The model that would be deployed: after, else before (before also when the
        deployment decision kept the source model)."""
        return self.after if self.after is not None and not self.deployed_before else self.before
