"""The domain gap between two feature sets, in four statistics, plus the collapse check.

``measure_gap(source, target)`` only calls the pure statistics:

* MMD²_u with a Gaussian kernel (median-heuristic bandwidth) and its permutation test
  (Gretton et al., JMLR 2012) — :mod:`diagnostics.mmd`;
* the Fréchet distance ‖μ1−μ2‖² + Tr Σ1 + Tr Σ2 − 2 Tr (Σ1Σ2)^½ from the streaming
  moments, with a bootstrap interval (Heusel et al. 2017; biased at small n) —
  :mod:`diagnostics.frechet`;
* a cross-validated logistic-regression domain classifier: ROC AUC and the proxy
  A-distance 2(1 − 2ε) (Ben-David et al. 2010) — :mod:`diagnostics.domain_classifier`;
* the classifier two-sample test: out-of-fold ridge AUC with an exact refit-permutation
  p-value (Lopez-Paz & Oquab 2017) — :mod:`diagnostics.two_sample`. Next to MMD it is the
  second test of "the domains differ": the gap is "not significant" only when both agree;
* the Wasserstein-2 distance (POT, exact EMD on ≤ ``max_points`` points) —
  :mod:`diagnostics.transport`.

``GapResult.to_dict()`` is exactly the ``gap`` section of the audit data contract
(:mod:`diagnostics.audit`); ``GapResult.details()`` keeps every figure (null quantiles,
the mean/covariance split of the Fréchet distance, the bootstrap bias, ...).

``collapse_section(source, target)`` turns the classifier's softmax outputs into the
``collapse`` section (predicted-class histograms per domain, marginal entropy, IM score,
BBSE target label mix, collapsed or not) via :mod:`diagnostics.collapse`.

The CI gate of ``diagnose gap --fail-on`` lives in :mod:`diagnostics.gate` (re-exported here).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from adapt.errors import UserError
from adapt.evaluate import classification_metrics
from diagnostics.collapse import CollapseResult, collapse_report, im_score, marginal_entropy, prediction_histogram
from diagnostics.domain_classifier import DomainClassifierResult, domain_classifier
from diagnostics.features import FeatureSet
from diagnostics.frechet import FrechetInterval, FrechetSampleSizeWarning, frechet_bootstrap, frechet_from_moments
from diagnostics.gate import GATE_METRICS, FailCondition, fired_conditions, parse_fail_on
from diagnostics.threads import single_threaded
from diagnostics.mmd import MMDResult, mmd_permutation_test
from diagnostics.transport import TransportResult, wasserstein_distance
from diagnostics.two_sample import C2STResult, classifier_two_sample_test, min_permutations

__all__ = [
    "GapResult",
    "measure_gap",
    "collapse_section",
    "classification_section",
    "gap_table",
    "FailCondition",
    "parse_fail_on",
    "fired_conditions",
    "GATE_METRICS",
]


# ----------------------------------------------------------------------------- gap


@dataclass
class GapResult:
    """The four gap statistics of one source/target pair (see module docstring)."""

    mmd: MMDResult
    frechet_distance: float
    frechet_mean_term: float
    frechet_interval: FrechetInterval | None
    domain: DomainClassifierResult
    transport: TransportResult
    extractor: str
    classifier_test: C2STResult | None = None
    n_source: int = 0
    n_target: int = 0
    dim: int = 0
    small_sample: bool = False
    notes: list[str] = field(default_factory=list)
    alpha: float = 0.05

    def to_dict(self) -> dict:
        """Exactly the report's ``gap`` shape (plain floats/ints/strings)."""
        iv = self.frechet_interval
        return {
            "mmd": {
                "mmd2": float(self.mmd.mmd2),
                "p_value": float(self.mmd.p_value),
                "bandwidth": self.mmd.to_dict()["bandwidth"],
                "permutations": int(self.mmd.permutations),
                "method": self.mmd.method,
                "test": self.mmd.describe(),
                "decidable": bool(self.mmd.decidable(self.alpha)),
                "n_x": int(self.mmd.n_x),
                "n_y": int(self.mmd.n_y),
            },
            "frechet": {
                "distance": float(self.frechet_distance),
                "ci_low": None if iv is None else float(iv.low),
                "ci_high": None if iv is None else float(iv.high),
                "ci_centre": None if iv is None else float(iv.centre),
                "ci_kind": None if iv is None else f"{iv.kind} bootstrap of the "
                + ("bias-corrected estimate" if iv.kind == "basic" else "distance"),
                "n_source": int(self.n_source),
                "n_target": int(self.n_target),
                "dim": int(self.dim),
                "extractor": self.extractor,
            },
            "domain_classifier": {
                "auc": float(self.domain.auc),
                "accuracy": float(self.domain.accuracy),
                "proxy_a_distance": float(self.domain.proxy_a_distance),
            },
            "classifier_test": None if self.classifier_test is None else {
                "auc": float(self.classifier_test.auc),
                "p_value": float(self.classifier_test.p_value),
                "permutations": int(self.classifier_test.permutations),
                "decidable": bool(self.classifier_test.decidable),
            },
            "transport": {
                "distance": float(self.transport.distance),
                "method": self.transport.method,
                "n_points": int(self.transport.n_used_x + self.transport.n_used_y),
            },
        }

    def details(self) -> dict:
        """Every figure behind :meth:`to_dict` (for the JSON written next to a report)."""
        return {
            "mmd": self.mmd.to_dict(),
            "frechet": {
                "distance": float(self.frechet_distance),
                "mean_term": float(self.frechet_mean_term),
                "covariance_term": float(self.frechet_distance - self.frechet_mean_term),
                "interval": None if self.frechet_interval is None else self.frechet_interval.to_dict(),
                "small_sample": bool(self.small_sample),
                "n_source": int(self.n_source),
                "n_target": int(self.n_target),
                "dim": int(self.dim),
            },
            "domain_classifier": self.domain.to_dict(),
            "classifier_test": None if self.classifier_test is None else self.classifier_test.to_dict(),
            "transport": self.transport.to_dict(),
            "extractor": self.extractor,
            "notes": list(self.notes),
        }


def _subsample_rows(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= k else x[np.sort(rng.choice(len(x), size=k, replace=False))]


def measure_gap(
    source: FeatureSet,
    target: FeatureSet,
    *,
    permutations: int = 500,
    seed: int = 0,
    max_points: int = 2000,
    bootstrap: int = 100,
    alpha: float = 0.05,
) -> GapResult:
    """All four gap statistics between ``source`` and ``target`` features.

    The Fréchet distance uses the streaming moments (all points); its interval resamples
    the feature rows ``bootstrap`` times (0 skips it). MMD, the domain classifier and
    transport run on at most ``max_points`` points per domain (seeded subsample), since
    they cost O(N²)–O(N³). The classifier two-sample test uses the same points and
    ``permutations``. With fewer than ``min_permutations(alpha)`` permutations (19 for
    α = 0.05) neither test can reject at ``alpha``: the table says so instead of
    "not distinguishable".
    """
    if source.dim != target.dim:
        raise UserError(f"features: source has {source.dim} dimensions, target {target.dim}")
    if source.extractor != target.extractor:
        raise UserError("features: source and target were extracted differently "
                        f"({source.extractor!r} vs {target.extractor!r})")
    for fs, which in ((source, "source"), (target, "target")):
        if len(fs) < 5:
            label = f"{which} {fs.name}" if fs.name else which
            raise UserError(f"{label}: {len(fs)} images; the gap needs at least 5 per domain")
    if max_points < 5:
        raise UserError(f"max_points: must be at least 5, got {max_points}")
    with single_threaded():  # small linear algebra: see diagnostics.threads
        return _measure_gap(source, target, permutations, seed, max_points, bootstrap, alpha)


def _measure_gap(source: FeatureSet, target: FeatureSet, permutations: int, seed: int, max_points: int,
                 bootstrap: int, alpha: float) -> GapResult:
    rng = np.random.default_rng(int(seed))
    xs = _subsample_rows(source.features, max_points, rng)
    xt = _subsample_rows(target.features, max_points, rng)
    # float32 features keep the MMD kernel and permutation GEMM in float32 (sums in
    # float64: see diagnostics.mmd); the other statistics take float64.
    mmd = mmd_permutation_test(xs, xt, permutations=permutations, seed=seed)
    xs, xt = xs.astype(np.float64), xt.astype(np.float64)

    notes: list[str] = []
    d = source.dim
    small = min(source.moments.n, target.moments.n) < d
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrechetSampleSizeWarning)  # said once, in notes
        distance = frechet_from_moments(source.moments, target.moments)
        interval = (frechet_bootstrap(source.features, target.features, n_boot=bootstrap, seed=seed)
                    if bootstrap > 0 else None)
    if small:
        notes.append(f"Fréchet distance from fewer images than feature dimensions (n < {d}): "
                     "strongly biased, compare only at equal n")
    diff = (source.moments.mean - target.moments.mean).numpy()
    mean_term = float(diff @ diff)

    domain = domain_classifier(xs, xt, seed=seed, max_points=max_points)
    c2st = classifier_two_sample_test(xs, xt, permutations=permutations, seed=seed, alpha=alpha,
                                      folds=min(5, len(xs), len(xt)), max_points=max_points)
    transport = wasserstein_distance(xs, xt, max_points=max_points, seed=seed)
    if permutations < min_permutations(alpha):
        notes.append(f"only {permutations} permutations: the smallest reachable p-value is "
                     f"{1 / (1 + permutations):.3f} > α = {alpha:g}, so the tests cannot decide; "
                     f"use at least {min_permutations(alpha)}")
    elif permutations < 100:
        notes.append(f"only {permutations} permutations: the smallest reachable p-value is "
                     f"{1 / (1 + permutations):.3f}")
    return GapResult(
        mmd=mmd, frechet_distance=float(distance), frechet_mean_term=mean_term, frechet_interval=interval,
        domain=domain, transport=transport, extractor=source.extractor, classifier_test=c2st,
        n_source=int(source.moments.n), n_target=int(target.moments.n), dim=int(d),
        small_sample=bool(small), notes=notes, alpha=float(alpha),
    )


# ----------------------------------------------------------------------------- collapse


def _named(values, classes: list[str]) -> dict[str, float]:
    return {c: float(v) for c, v in zip(classes, values)}


def _domain_summary(probs: np.ndarray, classes: list[str]) -> dict:
    """C = {histogram, marginal_entropy, log_k, largest_share, im_score, mean_confidence}."""
    hist = prediction_histogram(probs)
    return {
        "histogram": _named(hist, classes),
        "marginal_entropy": marginal_entropy(probs),
        "log_k": math.log(probs.shape[1]),
        "largest_share": float(hist.max()),
        "im_score": im_score(probs),
        "mean_confidence": float(np.asarray(probs).max(1).mean()),
        "n": int(len(probs)),
    }


def _labelled(fs: FeatureSet | None, k: int) -> bool:
    return fs is not None and len(fs.labels) > 0 and bool((fs.labels >= 0).all()) and int(fs.labels.max()) < k


def collapse_section(source: FeatureSet | None, target: FeatureSet, classes: list[str] | None = None,
                     *, seed: int = 0, permutations: int = 200) -> dict:
    """The audit's ``collapse`` section from the classifier outputs of both domains.

    BBSE needs labelled *held-out* source data: the source domain's labels are used when
    known (if the model was trained on these very images its source confusion is
    optimistic, which makes BBSE read a collapse as milder than it is). Without source
    labels only the pile-up test (largest share, marginal entropy) decides. When the
    target's labels are known, the true target mix decides (and is shown); otherwise a
    label-shift reading of BBSE is checked by re-weighting the source features to BBSE's
    mix and testing them against the target features (:mod:`diagnostics.label_shift`). Without
    source images at all (``source`` None: a source-free run) ``source`` is None too.
    """
    if (source is not None and source.probs is None) or target.probs is None:
        raise UserError("collapse: needs a classifier model (--model CKPT)")
    k = target.probs.shape[1]
    names = list(classes) if classes is not None and len(classes) == k else [str(i) for i in range(k)]
    labelled = _labelled(source, k)
    target_labels = target.labels if _labelled(target, k) else None
    if labelled:
        result: CollapseResult = collapse_report(
            target.probs, source_probs=source.probs, source_labels=source.labels, class_names=names,
            target_labels=target_labels, source_features=source.features, target_features=target.features,
            seed=seed, check_permutations=permutations)
    else:
        result = collapse_report(target.probs, class_names=names, target_labels=target_labels)
    out: dict[str, Any] = {
        "source": None if source is None else _domain_summary(source.probs, names),
        "target": _domain_summary(target.probs, names),
        "collapsed": bool(result.collapsed),
        "label_shift": bool(result.label_shift),
        "verdict": result.verdict,
        "level": result.level,
        "reason": "; ".join(result.reasons),
        "over_predicted": list(result.over_predicted),
        "bbse_source": ("labels of the source domain (held out only if the model was not trained on them)"
                        if labelled else None),
        "details": result.to_dict(),
    }
    if result.source_prior is not None:
        out["source_prior"] = _named(result.source_prior, names)
    if result.true_target_mix is not None:
        out["true_target_mix"] = _named(result.true_target_mix, names)
        out["prediction_vs_truth"] = result.prediction_vs_truth
    if result.bbse is not None:
        out["bbse_target_mix"] = _named(result.bbse.target_prior, names)
    if result.label_shift_check is not None:
        out["label_shift_check"] = result.label_shift_check.to_dict()
    return out


def classification_section(fs: FeatureSet, classes: list[str]) -> dict | None:
    """Accuracy / macro-F1 / confusion of the classifier on a labelled domain, else None."""
    if fs.probs is None or len(fs.labels) == 0 or not bool((fs.labels >= 0).all()):
        return None
    k = fs.probs.shape[1]
    names = list(classes) if len(classes) == k else [str(i) for i in range(k)]
    return classification_metrics(fs.labels, fs.probs.argmax(1), names)


# ----------------------------------------------------------------------------- table


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.3e}"


def _p_text(p: float, b: int) -> str:
    # at the smallest reachable p-value the permutation test cannot say more
    return f"p≤{p:.2g}" if p <= 1 / (1 + b) + 1e-12 else f"p={p:.3g}"


def mmd_meaning(p: float, decidable: bool = True, alpha: float = 0.05) -> str:
    """What a p-value says, in words (``decidable`` False: the test could never reject)."""
    if not decidable:
        return (f"cannot decide: too few permutations to reach p<{alpha:g} "
                f"(use at least {min_permutations(alpha)})")
    if p < 0.01:
        return "different (p<0.01)"
    if p < 0.05:
        return "different (p<0.05)"
    return f"not distinguishable (p={p:.2f})"


def auc_meaning(auc: float) -> str:
    """How well a classifier tells the domains apart, in words. A cross-validated AUC
    below ½ is no evidence of separation (it is what identical domains produce)."""
    if auc >= 0.9:
        return "easily told apart"
    if auc >= 0.75:
        return "clearly separable"
    if auc >= 0.6:
        return "weakly separable"
    if auc < 0.45:
        return "no evidence of a difference (AUC below chance: noise or duplicated images)"
    return "indistinguishable (≈ chance)"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def gap_table(result: GapResult | Mapping, collapse: Mapping | None = None) -> str:
    """A readable aligned terminal table: statistic, value, p-value / interval, meaning."""
    g = result.to_dict() if isinstance(result, GapResult) else dict(result)
    mmd, fr, dc, tr = g["mmd"], g["frechet"], g["domain_classifier"], g["transport"]
    ct = g.get("classifier_test")
    if fr.get("ci_low") is not None and fr.get("ci_high") is not None:
        if fr.get("ci_centre") is not None:
            # the interval belongs to the bias-corrected estimate, which it contains
            ci = f"bias-corrected {_fmt(fr['ci_centre'])}, 95% CI {_fmt(fr['ci_low'])}–{_fmt(fr['ci_high'])}"
        else:
            ci = f"95% CI {_fmt(fr['ci_low'])}–{_fmt(fr['ci_high'])}"
    else:
        ci = "–"
    if mmd.get("method") == "block":
        mmd_p = f"p={mmd['p_value']:.3g} ({mmd.get('test') or 'block test, normal approximation'})"
        mmd_ok = True
    else:
        mmd_p = f"{_p_text(mmd['p_value'], mmd['permutations'])} ({mmd['permutations']} permutations)"
        mmd_ok = mmd.get("decidable", 1 / (1 + mmd["permutations"]) <= 0.05 + 1e-12)
    rows = [
        ("statistic", "value", "p-value / interval", "meaning"),
        ("MMD² (Gaussian kernel)", _fmt(mmd["mmd2"]), mmd_p, mmd_meaning(mmd["p_value"], mmd_ok)),
    ]
    if ct:
        rows.append(("classifier two-sample test (AUC)", f"{ct['auc']:.3f}",
                     f"{_p_text(ct['p_value'], ct['permutations'])} ({ct['permutations']} permutations)",
                     mmd_meaning(ct["p_value"], bool(ct.get("decidable", True)))))
    rows += [
        ("Fréchet distance (plug-in)", _fmt(fr["distance"]), ci,
         "0 = same mean and covariance; biased upwards at small n, compare at equal n"),
        ("domain-classifier AUC", f"{dc['auc']:.3f}", f"accuracy {100 * dc['accuracy']:.1f}%",
         auc_meaning(dc["auc"])),
        ("proxy A-distance", f"{dc['proxy_a_distance']:.3f}", "–", "0 = indistinguishable, 2 = disjoint"),
        (f"Wasserstein-2 ({tr['method']})", _fmt(tr["distance"]), f"{tr['n_points']} points",
         "cost of moving one sample onto the other, in feature units"),
    ]
    head = (f"features: {fr['extractor']}\n"
            f"images: {fr['n_source']} source, {fr['n_target']} target "
            f"(MMD on {mmd['n_x']} + {mmd['n_y']})")
    out = head + "\n\n" + _table(rows)
    if collapse:
        out += "\n\n" + _collapse_lines(collapse)
    return out


def _collapse_lines(c: Mapping) -> str:
    def hist(sec: Mapping) -> str:
        h = sec.get("histogram") or {}
        return ", ".join(f"{k} {100 * float(v):.0f}%" for k, v in h.items())

    lines = []
    for dom in ("source", "target"):
        sec = c.get(dom) or {}
        if sec:
            lines.append(f"{dom} predictions: {hist(sec)} (entropy {sec['marginal_entropy']:.2f} of "
                         f"log K = {sec['log_k']:.2f}, IM {sec['im_score']:.2f})")
    if c.get("true_target_mix"):
        lines.append("true target label mix: " + ", ".join(
            f"{k} {100 * float(v):.0f}%" for k, v in c["true_target_mix"].items()))
    if c.get("bbse_target_mix"):
        chk = c.get("label_shift_check") or {}
        tail = ""
        if c.get("true_target_mix"):
            tail = " (assumes the images of each class did not change; the true mix above decides)"
        elif chk:
            tail = (" (label-shift assumption " + ("holds" if chk.get("passed") else "REJECTED")
                    + f": MMD p={float(chk['mmd_p']):.3g}, classifier p={float(chk['classifier_p']):.3g})")
        lines.append("BBSE target label mix: " + ", ".join(
            f"{k} {100 * float(v):.0f}%" for k, v in c["bbse_target_mix"].items()) + tail)
    verdict = c.get("verdict") or ("collapsed" if c.get("collapsed") else "no collapse")
    piles = ", ".join(c.get("over_predicted") or [])
    text = {"collapsed": "COLLAPSED — predictions pile onto " + (piles or "one class")
                         + (" (far from the true label mix)" if c.get("true_target_mix") else ""),
            "biased": "BIASED — predictions lean towards " + piles + ", away from the true label mix",
            "label_shift": "label shift — the target has another class mix; the model did not collapse",
            "covariate_shift": "covariate shift: the label mix cannot be estimated; predictions pile onto "
                               + (piles or "a few classes"),
            "inconclusive": "inconclusive — a label shift cannot be told from a collapse without its check",
            "no_shift": "no collapse, no label shift"}.get(verdict, verdict)
    lines.append(f"collapse check: {text}")
    return "\n".join(lines)
