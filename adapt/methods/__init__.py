"""Adaptation methods, one file each, and the assembly of a recipe run's pieces.

A run in ``method.runs`` names a registered objective (:mod:`adapt.method_registry`; each
objective's file registers its name, options, BatchNorm convention and factory), an image
style (``fda``, ``histogram``), MixStyle, AdaBN and EWC; :func:`build_run_components` turns
that into the :class:`~adapt.methods.base.MethodParts` the one training loop takes. SHOT
and TENT are source-free: their "labelled" batches are target images (SHOT's carry its
pseudo-labels), and no source image is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import Dataset

from adapt.method_registry import BuildContext
from adapt.methods.base import ImageStyle, MethodParts, Penalty
from adapt.methods.ewc import EWC, L2SP, anchor_params, fisher_diagonal, save_fisher
from adapt.methods.style import FDA, HistogramMatching, MixStyle

if TYPE_CHECKING:  # pragma: no cover
    from adapt.recipe import AdaptRunConfig, Recipe


def build_run_components(
    run: AdaptRunConfig,
    *,
    model: nn.Module,
    recipe: Recipe,
    source_train: Dataset | None,
    target_train: Dataset,
    target_labeled: Dataset | None,
    device: torch.device,
    out_dir: Path,
) -> MethodParts:
    """Assemble a run: its objective and the data it trains on (the objective's registered
    factory), styles and penalties.

    ``source_train``: labelled source training images (with ``.images(idx)`` and
    ``.labels``), None in a source-free recipe (SHOT, TENT); ``target_train``: the unlabelled target training images;
    ``target_labeled``: the few labelled target images (``finetune``, ``mme``), or None.
    EWC's Fisher is computed here, on the source training images, from ``model`` (still
    the source model's weights), and saved to ``out_dir/fisher.pt``.
    """
    ctx = BuildContext(run=run, options=run.options, model=model, recipe=recipe, source_train=source_train,
                       target_train=target_train, target_labeled=target_labeled)
    objective, train_data = run.spec.factory(ctx)

    style: ImageStyle | None = None
    if run.style == "fda":
        style = FDA(beta=run.fda_beta)
    elif run.style == "histogram":
        style = HistogramMatching()
        style.fit(target_train.images())
    feature_style = MixStyle(seed=run.seed_in(recipe)) if run.mixstyle else None

    penalties: list[Penalty] = []
    if run.ewc is not None and objective is not None:
        penalties.append(_ewc_penalty(run, model, source_train, device, out_dir, run.seed_in(recipe)))

    # the loop draws target batches only when a part declares ``uses_target``
    return MethodParts(objective, style, feature_style, penalties, train_data=train_data, target_data=target_train)


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
