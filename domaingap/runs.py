"""What an ``adapt-run`` is made of: its data, its trained stages, and how a model
is deployed on each domain — the run's one :class:`Deployment`.

The orchestration layer's shared vocabulary: :mod:`domaingap.pipeline` produces these
objects and :mod:`domaingap.run_audit` and :mod:`domaingap.sweep` read them, so they live
below all three.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from adapt.data import (
    DomainDataset,
    check_same_classes,
    check_trainable_classes,
    load_domain,
    stratified_split,
)
from adapt.data.few_labels import split_few_labels
from adapt.data.splits import stratified_subsample
from adapt.data.sources import load_sources
from adapt.errors import UserError
from adapt.methods.adabn import adabn
from adapt.models import build_model, load_checkpoint
from adapt.progress import progress_bar
from adapt.recipe import AdaptRunConfig, Recipe, TrainConfig
from adapt.reverse_validation import reverse_validation_images
from adapt.train import precise_bn_covers
from diagnostics.features import FeatureSet, extract_features
from diagnostics.gap import collapse_section
from diagnostics.ranking import EstimateRanking, by_reverse_validation, rank_by_estimate, recommended_run
from diagnostics.run_spread import copy_groups, run_spread


@dataclass
class Domains:
    """Both domains and their splits (index arrays into the full datasets).

    A source-free recipe (``data.source`` none: SHOT, TENT) has ``source`` None and
    an empty ``source_split``; the classes then come from the source checkpoint.
    """

    source: DomainDataset | None
    target: DomainDataset
    source_split: dict[str, DomainDataset]
    target_split: dict[str, DomainDataset]
    target_labeled: DomainDataset | None
    #: validation + test images of each domain (never trained on): what the audit measures
    source_eval: DomainDataset | None = None
    target_eval: DomainDataset | None = None
    #: classes a labelled target has no images of (only with data.target_classes: subset)
    target_missing: list[str] = field(default_factory=list)
    #: the named sources of a multi-source recipe (``source`` is their union), else empty
    source_names: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.source.classes if self.source is not None else self.target.classes

    @property
    def has_source(self) -> bool:
        return self.source is not None

    def summary(self) -> dict[str, Any]:
        def info(ds: DomainDataset) -> dict[str, Any]:
            counts = ds.class_counts() if ds.has_labels else None
            return {"n": len(ds), "class_counts": None if counts is None else dict(zip(ds.classes, counts.tolist()))}

        return {
            "classes": self.classes,
            "source": None if self.source is None else {
                "name": self.source.name, "sources": self.source_names,
                **{k: info(v) for k, v in self.source_split.items()},
                "skipped": self.source.skipped},
            "target": {"name": self.target.name, "labels_known": self.target.has_labels,
                       "missing_classes": self.target_missing,
                       **{k: info(v) for k, v in self.target_split.items()},
                       "skipped": self.target.skipped},
            "target_labeled": None if self.target_labeled is None else len(self.target_labeled),
        }


@dataclass
class StageOutcome:
    """One trained model and how it scores."""

    name: str
    model: nn.Module
    metrics: dict[str, Any]
    fit: dict[str, Any] | None = None
    selection: dict[str, Any] | None = None
    seconds: float = 0.0
    #: a per-domain-BN model's copy with source BatchNorm statistics (deployed_on_source),
    #: made once when the stage is evaluated and reused by the audit; None otherwise
    on_source: nn.Module | None = None

    @property
    def source_model(self) -> nn.Module:
        """The model as it meets the source images: the kept source-statistics copy of a
        per-domain-BN model, else the model itself."""
        return self.on_source if self.on_source is not None else self.model


@dataclass
class RunSummary:
    """Every stage of one ``adapt-run`` and the comparison table."""

    run_dir: Path
    source: StageOutcome
    runs: dict[str, StageOutcome] = field(default_factory=dict)
    baselines: dict[str, StageOutcome] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    #: what the run deploys, decided once when every stage is done (:func:`decide_deployment`)
    deployment: Deployment | None = None
    audit_path: Path | None = None
    #: several sources: gaps, weights, contributions (domaingap/source_weights.py, source_contribution.py)
    sources: dict[str, Any] | None = None


@dataclass(frozen=True)
class Deployment:
    """The run's one deployment decision, computed once (:func:`decide_deployment`) and read
    by the drift reference and ONNX export (:func:`domaingap.pipeline.deployment_outputs`),
    the audit (:func:`domaingap.run_audit.audit_run`) and the sweep's score.

    ``stage`` is the deployed model: the recipe's ``method.audit_run``; else, by
    ``method.deploy``, the model with the highest estimated target accuracy — the source
    model too (``ranking``: :class:`diagnostics.ranking.EstimateRanking`, made with
    ``deploy: estimate`` even when ``audit_run`` decides, for the methods table; with
    ``deploy: reverse_validation``, re-ordered by reverse validation) — or the
    run the checkpoint selector scores highest; the source model when there are no runs.
    ``audited``: the run the audit compares with the source model — the deployed run, or,
    when the source model is deployed, the best-ranked run (the audit then shows what
    adaptation would have done). ``batchnorm``: how it is deployed
    (:func:`batchnorm_statistics`). ``on_source``: the model as it meets the source images
    — the stage's kept source-statistics copy for a per-domain-BN run — None without
    source images. ``target_features``: its features and predictions on the held-out
    target images (``Domains.target_eval``), extracted once; None when there are none.
    ``ranked_features``: {stage name: FeatureSet} every model's features on the images the
    ranking read (the audit's target images, ``ranked_on``), reused by the audit;
    ``source_features``: the source model's features on the audit's held-out source images
    (``source_on``), which the ranking's label-shift reading read, and ``source_reading``
    that reading (the audit's ``before`` collapse section, reused by it).
    """

    stage: StageOutcome
    run_cfg: AdaptRunConfig | None
    batchnorm: str
    on_source: nn.Module | None
    target_features: FeatureSet | None
    audited: str | None = None
    ranking: EstimateRanking | None = None
    ranked_on: DomainDataset | None = None
    ranked_features: dict[str, FeatureSet] = field(default_factory=dict)
    #: how the deployed model was chosen: ``audit_run``, ``estimate`` or ``selection``
    rule: str = "selection"
    #: run-to-run spread of each group of copies (``method.runs[].copies``) on the ranked
    #: target images (:func:`diagnostics.run_spread.run_spread`)
    copies: list[dict[str, Any]] = field(default_factory=list)
    source_on: DomainDataset | None = None
    source_features: FeatureSet | None = None
    source_reading: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """The deployed stage's name (``source-only`` when no run is deployed)."""
        return self.stage.name

    @property
    def run(self) -> str | None:
        """The deployed ``method.runs`` entry's name; None when the source model is deployed."""
        return None if self.run_cfg is None else self.run_cfg.name

    def to_dict(self) -> dict[str, Any]:
        """What the audit and ``metrics.json`` record of the decision: the deployed model,
        the rule, the audited run and, for ``estimate``, the ranking with each estimate."""
        out: dict[str, Any] = {"model": self.name, "rule": self.rule, "audited": self.audited,
                               "batchnorm_statistics": self.batchnorm}
        if self.ranking is not None:
            out.update({k: v for k, v in self.ranking.to_dict().items() if k != "rule"})
        if self.copies:
            out["copies"] = self.copies
        return out

    def stage_dir(self, run_dir: Path) -> Path:
        """The deployed stage's folder in ``run_dir``."""
        return run_dir / "methods" / self.run if self.run is not None else run_dir / "source"


def load_domains(recipe: Recipe) -> Domains:
    """Both domains with one class mapping, split train/val/test (stratified, seeded)."""
    d = recipe.data
    common = dict(image_size=d.image_size, channels=d.channels, skip_unreadable=d.skip_unreadable)
    fractions = {"train": d.split.train, "val": d.split.val, "test": d.split.test}
    fractions = {k: v for k, v in fractions.items() if v > 0}
    if d.source is None and not d.sources:  # source-free: not one source image is read
        return _load_target_only(recipe, fractions, common)
    if d.sources:  # two or more labelled sources: their union, tagged (adapt/data/sources.py)
        source = load_sources(d.sources, seed=recipe.seed, **common)
    else:
        source = load_domain(d.source, seed=recipe.seed, **common)
        if not source.has_labels:
            raise UserError(f"data.source ({d.source.describe()}): the source domain needs labels")
    target = load_domain(d.target, seed=recipe.seed, classes=source.classes, **common)
    if target.has_labels:
        check_same_classes(source, target)
    target_missing = check_trainable_classes(source, target, target_subset=d.target_classes == "subset")
    s_idx = stratified_split(source.labels, fractions, seed=recipe.seed)
    # An unlabelled target (labels −1) is one stratum: a plain seeded split.
    t_idx = stratified_split(target.labels, fractions, seed=recipe.seed + 1)
    source_split = {k: source.subset(v) for k, v in s_idx.items()}
    target_split = {k: target.subset(v) for k, v in t_idx.items()}
    labeled = _few_labels(recipe, target_split)
    held_out = lambda ds, idx: ds.subset(np.concatenate([idx[k] for k in ("val", "test") if k in idx]))  # noqa: E731
    return Domains(source, target, source_split, target_split, labeled,
                   source_eval=held_out(source, s_idx), target_eval=held_out(target, t_idx),
                   target_missing=target_missing, source_names=[s.name for s in d.sources or []])


def _load_target_only(recipe: Recipe, fractions: dict[str, float], common: dict[str, Any]) -> Domains:
    """The target domain alone, its classes fixed by the source checkpoint's."""
    path = recipe.model.source_checkpoint
    _, meta = load_checkpoint(path)
    classes = meta.get("classes")
    if not classes:
        raise UserError(f"{path}: the checkpoint records no class names; a source-free run needs them "
                        "(a checkpoint written by adapt-run has them)")
    target = load_domain(recipe.data.target, seed=recipe.seed, classes=list(classes), **common)
    t_idx = stratified_split(target.labels, fractions, seed=recipe.seed + 1)
    target_split = {k: target.subset(v) for k, v in t_idx.items()}
    labeled = _few_labels(recipe, target_split)
    held_out = target.subset(np.concatenate([t_idx[k] for k in ("val", "test") if k in t_idx]))
    return Domains(None, target, {}, target_split, labeled, source_eval=None, target_eval=held_out)


def _few_labels(recipe: Recipe, target_split: dict[str, DomainDataset]) -> DomainDataset | None:
    """With ``data.target.labeled_per_class: k``: the k labelled images per class, taken out
    of ``target_split["train"]``, which keeps the unlabelled rest (in place)."""
    k = recipe.data.target.labeled_per_class
    if k is None:
        return None
    labeled, target_split["train"] = split_few_labels(target_split["train"], k, seed=recipe.seed)
    return labeled


def run_epochs(run_cfg: AdaptRunConfig, recipe: Recipe) -> int:
    """The run's epochs: its own override, else its objective's registered default (TENT,
    online by definition: one pass over the target), else train.epochs."""
    if run_cfg.epochs is not None:
        return run_cfg.epochs
    return run_cfg.spec.epochs if run_cfg.spec.epochs is not None else recipe.train.epochs


def run_train_config(run_cfg: AdaptRunConfig, recipe: Recipe) -> TrainConfig:
    """The training settings of one run: ``recipe.train``, with the learning-rate schedule
    its objective registered (DANN's for dann and cdan: their discriminator follows it)."""
    if run_cfg.spec.schedule is not None:
        return recipe.train.model_copy(update={"schedule": run_cfg.spec.schedule})
    return recipe.train


def uses_target_bn(run_cfg: AdaptRunConfig) -> bool:
    """Runs deployed on the target with target BatchNorm statistics (AdaBN on the unlabelled
    target training images): AdaBN runs and every objective registered with the per-domain
    convention (``adapt.methods.base``) — scored, selected and evaluated on the target with
    the statistics they trained with."""
    return run_cfg.adabn or run_cfg.spec.batchnorm == "per_domain"


def uses_per_domain_bn(run_cfg: AdaptRunConfig) -> bool:
    """Runs whose BatchNorm statistics end up the target's (:func:`uses_target_bn`; and the
    objectives that train on target images — fine-tuning, SHOT, TENT —, whose precise-BN
    pass re-estimates them there) are evaluated on the source with source statistics, so
    that source accuracy measures what the weights retained."""
    return uses_target_bn(run_cfg) or run_cfg.spec.trains_on_target


def batchnorm_statistics(run_cfg: AdaptRunConfig | None) -> str:
    """How a stage's model is deployed, in the words of its checkpoint, ONNX metadata and
    drift reference (:data:`adapt.export.BN_STATISTICS`): ``"target"`` for a per-domain-BN
    run (:func:`uses_per_domain_bn`: it carries the target's statistics), else ``"as
    trained"`` (also the source model and the baselines: ``run_cfg`` None)."""
    return "target" if run_cfg is not None and uses_per_domain_bn(run_cfg) else "as trained"


def held_out_sample(ds: DomainDataset | None, max_samples: int, seed: int) -> DomainDataset | None:
    """The held-out images the audit measures: ``ds`` itself, or a stratified sample of
    ``max_samples`` when it has more (``diagnostics.max_samples``)."""
    if ds is None or len(ds) <= max_samples:
        return ds
    return ds.subset(stratified_subsample(ds.labels, max_samples, seed))


def decide_deployment(summary: RunSummary, recipe: Recipe, domains: Domains, device: torch.device,
                      target_features: bool = True, progress: bool = False) -> Deployment:
    """The run's :class:`Deployment`: which model is deployed, how, its source-statistics
    copy (the one its evaluation made) and, with ``target_features``, its held-out target
    features (extracted here, once, on this process alone: no sharding)."""
    method = recipe.method
    ranking, ranked_on, ranked, read = None, None, {}, (None, None, None)
    if method.deploy in ("reverse_validation", "estimate") and summary.runs:  # also beside audit_run: the table
        ranking, ranked_on, ranked, read = estimate_ranking(summary, recipe, domains, device, progress)
    if method.audit_run is None and ranking is not None:
        name, rule = ranking.order[0], ranking.rule
        audited = next((n for n in ranking.order if n in summary.runs), None)
    else:
        name = recommended_run({n: st.selection for n, st in summary.runs.items()}, method.selection,
                               method.audit_run)
        rule, audited = ("audit_run" if method.audit_run else "selection"), name
    run_cfg = next((r for r in method.runs if r.name == name), None) if name in summary.runs else None
    stage = summary.runs[name] if run_cfg is not None else summary.source
    # the stage's evaluation made a per-domain-BN run's source-statistics copy: reused, not redone
    on_source = stage.source_model if domains.has_source else None
    held_out = domains.target_eval
    features = None
    if target_features and held_out is not None and len(held_out):
        features = ranked.get(stage.name) if ranked_on is held_out else None
        if features is None:
            features = extract_features(held_out, stage.model, "model", device=device, progress=False, shard=False)
    return Deployment(stage=stage, run_cfg=run_cfg, batchnorm=batchnorm_statistics(run_cfg), on_source=on_source,
                      target_features=features, audited=audited if audited in summary.runs else None,
                      ranking=ranking, ranked_on=ranked_on, ranked_features=ranked, rule=rule,
                      copies=copies_spread(summary, recipe, ranking, ranked),
                      source_on=read[0], source_features=read[1], source_reading=read[2])


def copies_spread(summary: RunSummary, recipe: Recipe, ranking: EstimateRanking | None,
                  ranked: dict[str, FeatureSet]) -> list[dict[str, Any]]:
    """The run-to-run spread of every group of copies (runs that differ only in their seed)
    on the ranked target images: disagreement, estimated accuracy range and, where target
    labels exist, the true range on the target test split."""
    by_name = {r.name: r for r in recipe.method.runs if r.name in summary.runs}
    configs = {n: r.model_dump() for n, r in by_name.items()}
    out = []
    for group in copy_groups(configs):
        if not all(n in ranked and ranked[n].probs is not None for n in group):
            continue
        preds = {n: ranked[n].probs.argmax(1) for n in group}
        est = {n: ranking.estimates[n][ranking.estimator] for n in group} if ranking is not None else None
        true = {n: (summary.runs[n].metrics.get("target_test") or {}).get("accuracy") for n in group}
        out.append({**run_spread(group, preds, est, true),
                    "seeds": [by_name[n].seed_in(recipe) for n in group],
                    "estimator": None if ranking is None else ranking.estimator})
    return out


def estimate_ranking(summary: RunSummary, recipe: Recipe, domains: Domains, device: torch.device,
                     progress: bool = False
                     ) -> tuple[EstimateRanking | None, DomainDataset | None, dict[str, FeatureSet], tuple]:
    """Every model (the source model first, then the runs) ranked by its estimated accuracy
    on the held-out target images the audit measures (:func:`held_out_sample`), with the
    source label mix of the audit's source images (COT) and the audit's label-shift reading
    of the source model (its ``before`` collapse section, from the source model's features
    on both held-out sets: a pure label shift ranks the source model first,
    :func:`diagnostics.ranking.rank_by_estimate`). Returns the ranking, the target images,
    every model's features on them, and (source images, the source model's features on
    them, the reading) — all kept for the audit. (None, None, {}, (None,) * 3) when there
    are no held-out target images."""
    n, seed = recipe.diagnostics.max_samples, recipe.seed
    target = held_out_sample(domains.target_eval, n, seed)
    if target is None or len(target) == 0:
        return None, None, {}, (None, None, None)
    source = held_out_sample(domains.source_eval, n, seed) if domains.has_source else None
    stages = {"source-only": summary.source, **summary.runs}
    feats = {name: extract_features(target, st.model, "model", device=device, progress=False, shard=False)
             for name, st in stages.items()}
    source_feats = reading = None
    if source is not None and len(source) and bool((np.asarray(source.labels) >= 0).all()):
        source_feats = extract_features(source, summary.source.model, "model", device=device, progress=False,
                                        shard=False)
        reading = collapse_section(source_feats, feats["source-only"], domains.classes, seed=seed,
                                   permutations=recipe.diagnostics.permutations)
    ranking = rank_by_estimate({name: f.probs for name, f in feats.items()},
                               None if source is None else np.asarray(source.labels), seed=seed,
                               source_reading=reading)
    if ranking is not None and recipe.method.deploy == "reverse_validation":
        scores = reverse_validation_scores(feats, target, recipe, domains, device, progress)
        ranking = by_reverse_validation(ranking, scores) if scores is not None else ranking
    return ranking, target, feats, (source if source_feats is not None else None, source_feats, reading)


#: the reverse network: every case reverse validation was measured on used small_cnn, and a
#: larger network from scratch would cost a training run per model on the CPU
REVERSE_ARCH = "small_cnn"


def reverse_validation_scores(feats: dict[str, FeatureSet], target: DomainDataset, recipe: Recipe,
                              domains: Domains, device: torch.device, progress: bool = False
                              ) -> dict[str, float] | None:
    """Every model's reverse-validation score (:func:`adapt.reverse_validation.reverse_validation_images`):
    a small network trained on ``target`` as the model labels it, scored on the labelled
    source training + validation images. None without labelled source images (a source-free
    recipe): the ranking then stays by estimate."""
    if not domains.has_source:
        return None
    train = domains.source_split.get("train")
    evals = [domains.source_split[k] for k in ("val",) if k in domains.source_split]
    if train is None or not len(train) or not bool((np.asarray(train.labels) >= 0).all()):
        return None
    k, channels = len(domains.classes), recipe.data.channels
    names = progress_bar(list(feats), enabled=progress, desc="deployment: reverse validation", unit="model", leave=False)
    return {name: reverse_validation_images(lambda: build_model(REVERSE_ARCH, k, channels), target,
                                            feats[name].probs.argmax(1), train, evals, seed=recipe.seed,
                                            device=device)
            for name in names}


def deployed_on_source(model: nn.Module, domains: Domains, device: torch.device) -> nn.Module:
    """A copy of a per-domain-BN model (see :func:`uses_per_domain_bn`) as it meets the
    source: BatchNorm statistics re-estimated on the unlabelled source training images."""
    return adabn_on(copy.deepcopy(model), domains.source_split["train"], device)


def adabn_on(model: nn.Module, data: DomainDataset, device: torch.device) -> nn.Module:
    """AdaBN: ``model`` with BatchNorm statistics re-estimated on ``data`` (in place)."""
    adabn(model, DataLoader(data, batch_size=256, shuffle=False), device)
    return model


def trains_on(train_data: Any, images: DomainDataset | None) -> bool:
    """Whether a run's training set is ``images`` itself, or ``images`` under a wrapper that
    keeps it as ``.base`` (the same images: e.g. :class:`adapt.methods.multisource.DomainTagged`,
    which adds each image's source to its label)."""
    return images is not None and getattr(train_data, "base", train_data) is images


def after_precise_bn(prepare: Callable[[nn.Module], nn.Module] | None, recipe: Recipe, train_data: Any,
                     source_train: DomainDataset | None) -> Callable[[nn.Module], nn.Module] | None:
    """``prepare`` (a model -> its form with source BatchNorm statistics) as used right
    after a training epoch on ``train_data``: when every epoch ends with precise BN over
    ``source_train`` itself and that pass covered every layer
    (:func:`adapt.train.precise_bn_covers`), the model already holds, bit for bit, the
    statistics ``prepare`` would estimate on the same images, and is used as it is."""
    if prepare is None or not recipe.train.precise_bn or not trains_on(train_data, source_train):
        return prepare
    return lambda m: m if precise_bn_covers(m, source_train) else prepare(m)
