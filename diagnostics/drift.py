"""Drift monitor: has a new batch of production images moved away from the deployed target?

At the end of a run the deployed model's view of the (held-out) target is summarised
in a compact :class:`DriftReference`: the streaming feature moments (n, Σx, ΣxxT), a
stratified subsample of the features (strata: predicted class), the predicted-class
counts and every image's confidence (max softmax). A new batch goes through the same
model and :func:`compare_to_reference` runs four tests of "same distribution" — each a
p-value, none a hand-set threshold:

* features, kernel test: MMD²_u permutation test (Gretton et al., JMLR 2012) between
  the reference subsample and the batch — :func:`diagnostics.mmd.mmd_permutation_test`;
* features, classifier test (C2ST, Lopez-Paz & Oquab, ICLR 2017): cross-validated
  logistic regression reference-vs-batch (:func:`diagnostics.domain_classifier.domain_classifier`,
  balanced); under H0 each out-of-fold decision is right with probability ½, so
  p = P(Binomial(n, ½) ≥ #correct) — :func:`c2st_p_value`;
* predictions: χ² test of homogeneity of the 2 × K table (reference counts, batch
  counts) — a permutation version when an expected count is below 5, where the χ²
  approximation is not valid (Cochran 1954) — :func:`prediction_shift_test`;
* confidence drop: one-sided Mann–Whitney U test, batch confidence stochastically
  smaller than the reference's — :func:`confidence_drop_test`.

The four p-values are adjusted with Holm's step-down method (Holm, Scand. J. Stat.
1979; :func:`holm_adjust`) so the chance of any false alarm on a batch from the
reference distribution is at most ``alpha``. Alongside: the Fréchet distance from the
moments (:func:`diagnostics.frechet.frechet_from_moments`; no p-value, no absolute
scale — for trends and ``--fail-on fid>X``) and the class-collapse check of the batch
(:func:`diagnostics.collapse.collapse_report`, reference histogram as the prior).

A batch too small for the tests (fewer than ``MIN_BATCH`` images) is "inconclusive".
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from adapt.data.splits import stratified_subsample
from adapt.errors import UserError, exception_line
from adapt.io import atomic_write_bytes, sniff_format
from adapt.models import load_checkpoint
from diagnostics.collapse import CollapseResult, collapse_report, prediction_histogram
from diagnostics.domain_classifier import DomainClassifierResult, domain_classifier
from diagnostics.features import FeatureSet, extract_features
from diagnostics.frechet import FrechetSampleSizeWarning, frechet_from_moments
from diagnostics.gap import FailCondition, fired_conditions, parse_fail_on
from diagnostics.mmd import MMDResult, mmd_permutation_test
from diagnostics.moments import Moments
from diagnostics.predictions import prediction_shift_test

__all__ = [
    "REFERENCE_FILE",
    "DriftReference",
    "DriftResult",
    "build_reference",
    "save_reference",
    "load_reference",
    "compare_to_reference",
    "holm_adjust",
    "c2st_p_value",
    "prediction_shift_test",
    "confidence_drop_test",
    "DRIFT_GATE_METRICS",
    "parse_drift_fail_on",
    "drift_fired",
    "reference_summary",
    "save_run_reference",
    "monitor_batch",
]

#: the reference's file name inside a run folder
REFERENCE_FILE = "drift_reference.npz"
REFERENCE_FORMAT = "domaingap-drift-reference"
#: smallest batch the monitor judges (the C2ST needs 5 folds of both, MMD a spread)
MIN_BATCH = 20


# ----------------------------------------------------------------------------- reference


@dataclass
class DriftReference:
    """What the deployed model saw on its target, compactly.

    features: float32 [n_sub, D] stratified subsample (strata = predicted class);
    moments: float64 sums over all n reference images; counts: int64 [K] predicted-class
    counts; confidences: float32 [n] max softmax per image; classes: K names;
    extractor: the sentence naming the features; meta: image_size, channels, model
    (path relative to the run folder), domain, batchnorm_statistics, seed, ...
    """

    features: np.ndarray
    moments: Moments
    counts: np.ndarray
    confidences: np.ndarray
    classes: list[str]
    extractor: str
    meta: dict[str, Any] = field(default_factory=dict)
    #: the reference's own predictions pile onto one class (then a piled-up batch is no news)
    piled_up: bool = False

    @property
    def n(self) -> int:
        return int(self.moments.n)

    @property
    def histogram(self) -> np.ndarray:
        return self.counts / max(1, int(self.counts.sum()))


def build_reference(fs: FeatureSet, classes: list[str], *, max_points: int = 1000, seed: int = 0,
                    meta: Mapping[str, Any] | None = None) -> DriftReference:
    """The reference from a model's :class:`FeatureSet` (features + probs) of target images.

    ``max_points``: size of the stored feature subsample (stratified by predicted class,
    seeded); the moments, counts and confidences cover every image.
    """
    if fs.probs is None:
        raise UserError("drift reference: needs the classifier's outputs (features of a model)")
    if len(fs) < MIN_BATCH:
        raise UserError(f"drift reference: {len(fs)} images; needs at least {MIN_BATCH}")
    k = fs.probs.shape[1]
    if len(classes) != k:
        raise UserError(f"drift reference: {len(classes)} class names for a {k}-class model")
    predicted = fs.probs.argmax(1)
    idx = stratified_subsample(predicted, max_points, seed=seed, keep_every_group=True, what="max_points")
    return DriftReference(
        features=np.ascontiguousarray(fs.features[idx], dtype=np.float32),
        moments=fs.moments,
        counts=np.bincount(predicted, minlength=k).astype(np.int64),
        confidences=fs.probs.max(1).astype(np.float32),
        classes=list(classes),
        extractor=fs.extractor,
        meta=dict(meta or {}),
        piled_up=bool(collapse_report(fs.probs, class_names=list(classes)).pile_up),
    )


def save_reference(ref: DriftReference, path: str | os.PathLike) -> Path:
    """Write ``ref`` as one compressed ``.npz`` (arrays + a JSON header), atomically."""
    header = {"format": REFERENCE_FORMAT, "version": 1, "classes": ref.classes, "extractor": ref.extractor,
              "n": ref.n, "meta": ref.meta,
              "piled_up": ref.piled_up}
    buf = io.BytesIO()
    np.savez_compressed(
        buf, header=np.array(json.dumps(header)), features=ref.features,
        moments_sum=ref.moments.sum.numpy(), moments_outer=ref.moments.outer.numpy(),
        counts=ref.counts, confidences=ref.confidences,
    )
    return atomic_write_bytes(path, buf.getvalue())


def load_reference(path: str | os.PathLike) -> DriftReference:
    """Read a reference written by :func:`save_reference` (no pickles are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no drift reference (runs of this version write {REFERENCE_FILE})")
    other = sniff_format(path)
    if other is not None and other != "a NumPy .npz archive":
        raise UserError(f"{path}: not a readable drift reference: it is {other}, not the .npz adapt-run writes")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            arrays = {k: z[k] for k in ("features", "moments_sum", "moments_outer", "counts", "confidences")}
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad JSON, a missing array, a pickle: all damage
        raise UserError(f"{path}: not a readable drift reference ({exception_line(exc)[:160]})") from None
    if not isinstance(header, dict) or header.get("format") != REFERENCE_FORMAT:
        raise UserError(f"{path}: not a domaingap drift reference")
    _check_reference(path, header, arrays)
    moments = Moments(n=int(header["n"]), sum=torch.from_numpy(arrays["moments_sum"]),
                      outer=torch.from_numpy(arrays["moments_outer"]))
    return DriftReference(features=arrays["features"], moments=moments, counts=arrays["counts"],
                          confidences=arrays["confidences"], classes=list(header["classes"]),
                          extractor=str(header["extractor"]), meta=dict(header.get("meta") or {}),
                          piled_up=bool(header.get("piled_up", False)))


def _check_reference(path: Path, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Every field a drift test reads, checked like a checkpoint's: types, shapes that fit
    each other, finite values. A damaged file is one error line, never a wrong verdict."""
    damaged = f"{path}: damaged drift reference,"
    classes, n = header.get("classes"), header.get("n")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{damaged} its classes are not a list of names")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"{damaged} n is {n!r}")
    if not isinstance(header.get("extractor"), str) or not isinstance(header.get("meta", {}), (dict, type(None))):
        raise UserError(f"{damaged} its extractor or meta is missing")
    feats = arrays["features"]
    shapes = {"features": (feats.ndim == 2 and len(feats) > 0, "[N, D]"),
              "moments_sum": (arrays["moments_sum"].shape == feats.shape[1:], f"[{feats.shape[-1]}]"),
              "moments_outer": (arrays["moments_outer"].shape == feats.shape[1:] * 2, "[D, D]"),
              "counts": (arrays["counts"].shape == (len(classes),), f"[{len(classes)}] (one per class)"),
              "confidences": (arrays["confidences"].ndim == 1, "[N]")}
    for key, (ok, want) in shapes.items():
        if not ok:
            raise UserError(f"{damaged} '{key}' has shape {list(arrays[key].shape)}, expected {want}")
    for key, arr in arrays.items():
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise UserError(f"{damaged} '{key}' holds non-numbers or NaN/inf")
    conf, counts = arrays["confidences"], arrays["counts"]
    if conf.size and not (conf.min() >= 0 and conf.max() <= 1) or (counts < 0).any():
        raise UserError(f"{damaged} confidences outside [0, 1] or negative class counts")


# ----------------------------------------------------------------------------- tests


def holm_adjust(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Statist. 1979).

    With p₍₁₎ ≤ … ≤ p₍ₘ₎: p̃₍ᵢ₎ = max_{j ≤ i} min(1, (m − j + 1) p₍ⱼ₎). Rejecting every
    hypothesis with p̃ ≤ α keeps the family-wise error rate ≤ α under any dependence.
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def c2st_p_value(accuracy: float, n: int) -> float:
    """p-value of a classifier two-sample test (Lopez-Paz & Oquab, ICLR 2017).

    Under H0 (same distribution, balanced classes) each of the ``n`` held-out decisions
    is right with probability ½: p = P(Binomial(n, ½) ≥ round(accuracy · n)).
    """
    from scipy.stats import binom  # late: scipy.stats takes seconds to import

    correct = int(round(float(accuracy) * n))
    return float(binom.sf(correct - 1, n, 0.5))


def confidence_drop_test(ref_conf, batch_conf) -> dict[str, Any]:
    """One-sided Mann–Whitney U test: is the batch's confidence (max softmax) lower?

    H1: a batch confidence is stochastically smaller than a reference one. Returns the
    means, their difference (reference − batch, > 0 = a drop) and the p-value.
    """
    from scipy.stats import mannwhitneyu  # late: scipy.stats takes seconds to import

    ref = np.asarray(ref_conf, np.float64)
    batch = np.asarray(batch_conf, np.float64)
    res = mannwhitneyu(batch, ref, alternative="less")
    return {"reference_mean": float(ref.mean()), "batch_mean": float(batch.mean()),
            "drop": float(ref.mean() - batch.mean()), "u": float(res.statistic), "p_value": float(res.pvalue)}


# ----------------------------------------------------------------------------- comparison


@dataclass
class DriftResult:
    """The four tests, the Holm-adjusted family, the Fréchet distance and the verdict."""

    mmd: MMDResult
    classifier: DomainClassifierResult
    classifier_p: float
    predictions: dict[str, Any]
    confidence: dict[str, Any]
    frechet_distance: float
    collapse: CollapseResult
    #: the batch collapsed and the reference's predictions had not piled up already
    new_collapse: bool
    adjusted: dict[str, float]
    alpha: float
    n_reference: int
    n_batch: int
    drift: bool
    inconclusive: bool
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": {"drift": bool(self.drift), "inconclusive": bool(self.inconclusive),
                        "text": self.verdict, "alpha": self.alpha, "correction": "holm"},
            "n_reference": self.n_reference,
            "n_batch": self.n_batch,
            "mmd": {**self.mmd.to_dict(), "p_adjusted": self.adjusted.get("mmd")},
            "classifier": {**self.classifier.to_dict(), "p_value": self.classifier_p,
                           "p_adjusted": self.adjusted.get("classifier")},
            "predictions": {**self.predictions, "p_adjusted": self.adjusted.get("predictions")},
            "confidence": {**self.confidence, "p_adjusted": self.adjusted.get("confidence")},
            "frechet": {"distance": self.frechet_distance, "n_reference": self.n_reference, "n_batch": self.n_batch},
            "collapse": {"collapsed": self.new_collapse, "batch_verdict": self.collapse.verdict,
                         "largest_share": self.collapse.largest_class_share, "reasons": self.collapse.reasons},
            "notes": list(self.notes),
        }


def _p(p: float) -> str:
    return f"p={p:.2g}" if p >= 1e-4 else "p<1e-4"


def compare_to_reference(ref: DriftReference, batch: FeatureSet, *, alpha: float = 0.01,
                         permutations: int = 500, max_points: int = 1000, seed: int = 0) -> DriftResult:
    """Test whether ``batch`` (the same model's features + probs) comes from the reference.

    ``max_points`` caps the batch rows used by MMD and the classifier (seeded
    subsample; the moments, counts and confidences use every image).
    """
    if batch.probs is None:
        raise UserError("drift: the batch needs the classifier's outputs (features of the run's model)")
    if batch.dim != ref.features.shape[1] or batch.probs.shape[1] != len(ref.classes):
        raise UserError(f"drift: batch features [{batch.dim}-d, {batch.probs.shape[1]} classes] do not match "
                        f"the reference's [{ref.features.shape[1]}-d, {len(ref.classes)} classes]")
    if not 0 < alpha < 1:
        raise UserError(f"alpha {alpha}: must lie in (0, 1)")
    n = len(batch)
    notes: list[str] = []
    if n < MIN_BATCH:
        raise UserError(f"drift: the batch has {n} images; the tests need at least {MIN_BATCH}")
    rng = np.random.default_rng(seed)
    xb = batch.features if n <= max_points else batch.features[np.sort(rng.choice(n, max_points, replace=False))]
    xr = ref.features

    mmd = mmd_permutation_test(xr, xb, permutations=permutations, seed=seed)
    clf = domain_classifier(xr, xb, seed=seed, balance=True, max_points=max_points)
    clf_p = c2st_p_value(clf.accuracy, clf.n_source + clf.n_target)
    batch_counts = np.bincount(batch.probs.argmax(1), minlength=len(ref.classes))
    preds = prediction_shift_test(ref.counts, batch_counts, seed=seed)
    preds.update(reference_histogram=dict(zip(ref.classes, ref.histogram.tolist())),
                 batch_histogram=dict(zip(ref.classes, prediction_histogram(batch.probs).tolist())))
    conf = confidence_drop_test(ref.confidences, batch.probs.max(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrechetSampleSizeWarning)  # said once, in notes
        frechet = float(frechet_from_moments(ref.moments, batch.moments))
    if min(ref.n, n) < batch.dim:
        notes.append(f"Fréchet distance from fewer images than feature dimensions (n < {batch.dim}): "
                     "strongly biased, compare only batches of equal size")
    collapse = collapse_report(batch.probs, source_prior=ref.histogram, class_names=ref.classes)

    raw = {"mmd": mmd.p_value, "classifier": clf_p, "predictions": preds["p_value"], "confidence": conf["p_value"]}
    adjusted = dict(zip(raw, holm_adjust(list(raw.values())).tolist()))
    reachable = 1 / (1 + permutations)
    if reachable * len(raw) > alpha:
        notes.append(f"{permutations} permutations: the MMD test alone cannot reach alpha={alpha:g} "
                     f"after the Holm correction (smallest p {reachable:.3g} × {len(raw)})")
    fired = [k for k, v in adjusted.items() if v <= alpha]
    # a collapse is news only when the reference's predictions did not pile up already
    new_collapse = bool(collapse.collapsed and not ref.piled_up)
    drift = bool(fired) or new_collapse
    inconclusive = False
    evidence = (f"MMD {_p(mmd.p_value)}, classifier AUC {clf.auc:.2f} {_p(clf_p)}, predictions {_p(preds['p_value'])}, "
                f"confidence {conf['reference_mean']:.2f}→{conf['batch_mean']:.2f} {_p(conf['p_value'])}; "
                f"Fréchet {frechet:.3g}")
    if n < 5 * MIN_BATCH and not drift:
        inconclusive = True
        notes.append(f"a batch of {n} images detects only large shifts")
    if drift:
        what = {"mmd": "features (MMD)", "classifier": "features (classifier)",
                "predictions": "predicted classes", "confidence": "confidence drop"}
        parts = [what[k] for k in fired] + (["predictions collapsed"] if new_collapse else [])
        verdict = f"DRIFT in {', '.join(parts)} — {evidence} (Holm-adjusted, alpha={alpha:g}; {n} images vs {ref.n})"
    elif inconclusive:
        verdict = (f"inconclusive: no test fires on a small batch ({n} images; the tests have little power) — "
                   f"{evidence}")
    else:
        verdict = (f"no drift: none of 4 tests fires at alpha={alpha:g} after Holm — {evidence} "
                   f"({n} images vs {ref.n})")
    return DriftResult(mmd=mmd, classifier=clf, classifier_p=clf_p, predictions=preds, confidence=conf,
                       frechet_distance=frechet, collapse=collapse, new_collapse=new_collapse, adjusted=adjusted, alpha=alpha,
                       n_reference=ref.n, n_batch=n, drift=drift, inconclusive=inconclusive, verdict=verdict,
                       notes=notes)


# ----------------------------------------------------------------------------- gate

#: ``diagnose drift --fail-on`` metric → (section, field) of :meth:`DriftResult.to_dict`
DRIFT_GATE_METRICS: dict[str, tuple[str, str]] = {
    "drift": ("verdict", "drift"),
    "mmd_p": ("mmd", "p_value"),
    "mmd2": ("mmd", "mmd2"),
    "c2st_p": ("classifier", "p_value"),
    "auc": ("classifier", "auc"),
    "pred_p": ("predictions", "p_value"),
    "conf_p": ("confidence", "p_value"),
    "conf_drop": ("confidence", "drop"),
    "fid": ("frechet", "distance"),
    "collapsed": ("collapse", "collapsed"),
}
_BARE = re.compile(r"^\s*(drift|collapsed)\s*$", re.IGNORECASE)


def parse_drift_fail_on(text: str) -> list[FailCondition]:
    """``'drift'``, ``'collapsed'``, ``'mmd_p<0.001, conf_drop>0.1'``, ... (any true → exit 1).

    A bare ``drift`` is the Holm-corrected verdict, ``collapsed`` the collapse check;
    other terms are ``metric op number`` over :data:`DRIFT_GATE_METRICS`.
    """
    terms = re.split(r"(\s*,\s*|\s+or\s+)", text or "", flags=re.IGNORECASE)
    text = "".join(f"{t.strip().lower()}>0" if _BARE.match(t) else t for t in terms)
    return parse_fail_on(text, DRIFT_GATE_METRICS)


def drift_fired(conditions: list[FailCondition], result: DriftResult) -> list[tuple[FailCondition, float]]:
    """The ``--fail-on`` conditions that hold, with their values (booleans as 0/1)."""
    d = result.to_dict()
    d = {k: ({kk: (float(vv) if isinstance(vv, bool) else vv) for kk, vv in v.items()} if isinstance(v, dict) else v)
         for k, v in d.items()}
    return fired_conditions(conditions, d)


def reference_summary(ref: DriftReference) -> dict[str, Any]:
    """Plain facts about a reference (for JSON and messages)."""
    return {"n": ref.n, "subsample": int(len(ref.features)), "dim": int(ref.features.shape[1]),
            "classes": ref.classes, "histogram": dict(zip(ref.classes, ref.histogram.tolist())),
            "mean_confidence": float(np.mean(ref.confidences)) if len(ref.confidences) else math.nan,
            "extractor": ref.extractor, "meta": ref.meta}


# ----------------------------------------------------------------------------- run folders


def save_run_reference(run_dir: str | os.PathLike, model: torch.nn.Module, dataset, classes: list[str], *,
                       model_path: str, device: str | torch.device = "cpu", max_points: int = 1000, seed: int = 0,
                       meta: Mapping[str, Any] | None = None, features: FeatureSet | None = None) -> Path:
    """Extract the deployed model's features on ``dataset`` (held-out target images) and
    write ``RUN_DIR/drift_reference.npz``. ``model_path``: the checkpoint, relative to
    ``run_dir``, that :func:`monitor_batch` will load. ``features``: those features when
    the caller has already extracted them (``extract_features(dataset, model, "model")``)."""
    fs = features if features is not None else \
        extract_features(dataset, model, "model", device=device, progress=False, shard=False)  # main rank only
    info = {"model": model_path, "image_size": int(getattr(dataset, "image_size", 0) or 0),
            "channels": int(getattr(dataset, "channels", 0) or 0), "domain": getattr(dataset, "name", ""),
            "seed": int(seed), **dict(meta or {})}
    ref = build_reference(fs, classes, max_points=max_points, seed=seed, meta=info)
    return save_reference(ref, Path(run_dir) / REFERENCE_FILE)


def monitor_batch(run_dir: str | os.PathLike, batch, *, alpha: float = 0.01, permutations: int = 500,
                  max_points: int = 1000, seed: int = 0, batch_size: int = 128, num_workers: int = 0,
                  device: str | torch.device = "cpu", progress: bool = False,
                  reference: DriftReference | None = None) -> DriftResult:
    """``diagnose drift``: the run's deployed model on ``batch`` (a dataset of images at
    the reference's size and channels), compared with the run's reference."""
    ref = reference if reference is not None else load_reference(Path(run_dir) / REFERENCE_FILE)
    model, _ = load_checkpoint(Path(run_dir) / str(ref.meta.get("model", "")), map_location="cpu")
    fs = extract_features(batch, model, "model", batch_size=batch_size, num_workers=num_workers, device=device,
                          progress=progress)
    return compare_to_reference(ref, fs, alpha=alpha, permutations=permutations, max_points=max_points, seed=seed)
