"""What an ``adapt-run`` is made of: its data, its trained stages, and how a model
is deployed on each domain.

The orchestration layer's shared vocabulary: :mod:`domaingap.pipeline` produces these
objects and :mod:`domaingap.run_audit` reads them, so they live below both.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from adapt.data import (
    DomainDataset,
    check_same_classes,
    check_trainable_classes,
    labeled_per_class,
    load_domain,
    stratified_split,
)
from adapt.data.sources import load_sources
from adapt.errors import UserError
from adapt.methods import objective_batchnorm
from adapt.methods.adabn import adabn
from adapt.models import load_checkpoint
from adapt.recipe import ADVERSARIAL_OBJECTIVES, SOURCE_FREE_OBJECTIVES, AdaptRunConfig, Recipe, TrainConfig


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


@dataclass
class RunSummary:
    """Every stage of one ``adapt-run`` and the comparison table."""

    run_dir: Path
    source: StageOutcome
    runs: dict[str, StageOutcome] = field(default_factory=dict)
    baselines: dict[str, StageOutcome] = field(default_factory=dict)
    table: list[dict[str, Any]] = field(default_factory=list)
    #: features of a stage's model (by stage name) on ``Domains.target_eval``, extracted
    #: once for the drift reference and reused by the audit
    target_eval_features: dict[str, Any] = field(default_factory=dict)
    audit_path: Path | None = None
    #: several sources: gaps, weights, contributions (domaingap/source_weights.py, source_contribution.py)
    sources: dict[str, Any] | None = None


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
    labeled = None
    if d.target_labeled > 0:
        if not target.has_labels:
            raise UserError("data.target_labeled: needs target labels, but the target domain is unlabelled")
        tr = target_split["train"]
        labeled = tr.subset(labeled_per_class(tr.labels, d.target_labeled, seed=recipe.seed))
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
    labeled = None
    if recipe.data.target_labeled > 0:
        if not target.has_labels:
            raise UserError("data.target_labeled: needs target labels, but the target domain is unlabelled")
        tr = target_split["train"]
        labeled = tr.subset(labeled_per_class(tr.labels, recipe.data.target_labeled, seed=recipe.seed))
    held_out = target.subset(np.concatenate([t_idx[k] for k in ("val", "test") if k in t_idx]))
    return Domains(None, target, {}, target_split, labeled, source_eval=None, target_eval=held_out)


def run_epochs(run_cfg: AdaptRunConfig, recipe: Recipe) -> int:
    """The run's epochs: its own override, else train.epochs — except TENT, online by
    definition: one pass over the target unless the run says otherwise."""
    if run_cfg.epochs is not None:
        return run_cfg.epochs
    return 1 if run_cfg.objective == "tent" else recipe.train.epochs


def run_train_config(run_cfg: AdaptRunConfig, recipe: Recipe) -> TrainConfig:
    """The training settings of one run: ``recipe.train``, with DANN's learning-rate
    schedule for the adversarial objectives (their discriminator follows it)."""
    if run_cfg.objective in ADVERSARIAL_OBJECTIVES:
        return recipe.train.model_copy(update={"schedule": "dann"})
    return recipe.train


def uses_target_bn(run_cfg: AdaptRunConfig) -> bool:
    """Runs deployed on the target with target BatchNorm statistics (AdaBN on the unlabelled
    target training images): AdaBN runs and every alignment objective, whose convention is
    per-domain (``adapt.methods.base``) — scored, selected and evaluated on the target with
    the statistics they trained with."""
    return run_cfg.adabn or objective_batchnorm(run_cfg.objective) == "per_domain"


def uses_per_domain_bn(run_cfg: AdaptRunConfig) -> bool:
    """Runs whose BatchNorm statistics end up the target's (:func:`uses_target_bn`;
    fine-tuning on target images, and SHOT/TENT, which train on target images only, whose
    precise-BN pass re-estimates them there) are evaluated on the source with source
    statistics, so that source accuracy measures what the weights retained."""
    return uses_target_bn(run_cfg) or run_cfg.objective in ("finetune", *SOURCE_FREE_OBJECTIVES)


def deployed_on_source(model: nn.Module, domains: Domains, device: torch.device) -> nn.Module:
    """A copy of a per-domain-BN model (see :func:`uses_per_domain_bn`) as it meets the
    source: BatchNorm statistics re-estimated on the unlabelled source training images."""
    return adabn_on(copy.deepcopy(model), domains.source_split["train"], device)


def adabn_on(model: nn.Module, data: DomainDataset, device: torch.device) -> nn.Module:
    """AdaBN: ``model`` with BatchNorm statistics re-estimated on ``data`` (in place)."""
    adabn(model, DataLoader(data, batch_size=256, shuffle=False), device)
    return model
