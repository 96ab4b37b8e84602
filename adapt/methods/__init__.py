"""Adaptation methods, one file each, and the assembly of a recipe run's pieces.

A run in ``method.runs`` names an objective (``source_only``, ``dann``, ``finetune``),
an image style (``fda``, ``histogram``), MixStyle, AdaBN and EWC; :func:`build_run_components`
turns that into the objects the one training loop takes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from adapt.errors import UserError
from adapt.methods.base import FeatureStyle, ImageStyle, Objective, Penalty, batchnorm_convention
from adapt.methods.dann import DANN
from adapt.methods.ewc import EWC, L2SP, anchor_params, fisher_diagonal, save_fisher
from adapt.methods.source_only import SourceOnly
from adapt.methods.style import FDA, HistogramMatching, MixStyle

if TYPE_CHECKING:  # pragma: no cover
    from adapt.recipe import AdaptRunConfig, Recipe


def objective_batchnorm(objective: str) -> str:
    """The BatchNorm convention (``adapt.methods.base``) of the recipe objective named
    ``objective``: its class's ``batchnorm`` attribute; ``"source"`` for the others."""
    classes = {"dann": DANN}
    return batchnorm_convention(classes.get(objective))


@dataclass
class RunComponents:
    """Everything :func:`adapt.train.fit` needs for one adaptation run."""

    objective: Objective | None
    train_data: Any  # the labelled batches: source train, or the labelled target images
    target_data: Any | None  # unlabelled target images; drawn from when a part ``uses_target``
    style: ImageStyle | None = None
    feature_style: FeatureStyle | None = None
    penalties: list[Penalty] = field(default_factory=list)


def build_run_components(
    run: AdaptRunConfig,
    *,
    model: nn.Module,
    recipe: Recipe,
    source_train: Dataset,
    target_train: Dataset,
    target_labeled: Dataset | None,
    device: torch.device,
    out_dir: Path,
) -> RunComponents:
    """Assemble a run: its objective, the data it trains on, styles and penalties.

    ``source_train``: labelled source training images (with ``.images(idx)`` and
    ``.labels``); ``target_train``: the unlabelled target training images;
    ``target_labeled``: the few labelled target images (``finetune``), or None.
    EWC's Fisher is computed here, on the source training images, from ``model`` (still
    the source model's weights), and saved to ``out_dir/fisher.pt``.
    """
    objective: Objective | None
    train_data = source_train
    if run.objective == "none":
        objective = None
    elif run.objective == "source_only":
        objective = SourceOnly(recipe.train.label_smoothing)
    elif run.objective == "dann":
        objective = DANN.for_model(model, domain_weight=run.dann.weight, width=run.dann.hidden,
                                   depth=run.dann.depth, label_smoothing=recipe.train.label_smoothing)
    elif run.objective == "finetune":
        if target_labeled is None:
            raise UserError(f"method.runs.{run.name}: objective 'finetune' needs labelled target images "
                            "(set data.target_labeled: K)")
        objective = SourceOnly(recipe.train.label_smoothing)
        train_data = target_labeled
    else:  # pragma: no cover - the schema forbids it
        raise UserError(f"method.runs.{run.name}: unknown objective {run.objective!r}")

    style: ImageStyle | None = None
    if run.style == "fda":
        style = FDA(beta=run.fda_beta)
    elif run.style == "histogram":
        style = HistogramMatching()
        style.fit(target_train.images())
    feature_style = MixStyle(seed=recipe.seed) if run.mixstyle else None

    penalties: list[Penalty] = []
    if run.ewc is not None and objective is not None:
        penalties.append(_ewc_penalty(run, model, source_train, device, out_dir, recipe.seed))

    # the loop draws target batches only when a part declares ``uses_target``
    return RunComponents(objective, train_data, target_train, style, feature_style, penalties)


def _ewc_penalty(run: AdaptRunConfig, model: nn.Module, src: Dataset, device: torch.device,
                 out_dir: Path, seed: int) -> Penalty:
    cfg = run.ewc
    anchor = anchor_params(model)
    if cfg.fisher == "l2sp":
        return L2SP(anchor, lam=cfg.lam)
    n = min(cfg.samples, len(src))
    idx = torch.randperm(len(src), generator=torch.Generator().manual_seed(seed))[:n].numpy()
    images = src.images(idx).to(device)
    labels = torch.as_tensor(src.labels[idx]).to(device)
    fisher = fisher_diagonal(model, images, labels if cfg.fisher == "empirical" else None,
                             mode=cfg.fisher, generator=torch.Generator(device=device).manual_seed(seed))
    out_dir.mkdir(parents=True, exist_ok=True)
    save_fisher(out_dir / "fisher.pt", fisher, mode=cfg.fisher, samples=n, seed=seed)
    return EWC(fisher, anchor, lam=cfg.lam)
