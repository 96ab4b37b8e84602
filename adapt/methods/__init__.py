"""Adaptation methods, one file each, and the assembly of a recipe run's pieces.

A run in ``method.runs`` names an objective (``source_only``, ``dann``, ``cdan``, ``mcc``,
``coral``, ``dan``, ``shot``, ``tent``, ``finetune``, ``mme``), an image style (``fda``,
``histogram``), MixStyle, AdaBN and EWC; :func:`build_run_components` turns that into the
objects the one training loop takes. SHOT and TENT are source-free: their "labelled"
batches are target images (SHOT's carry its pseudo-labels), and no source image is read.
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
from adapt.methods.cdan import CDAN
from adapt.methods.coral import DeepCORAL
from adapt.methods.dan import DAN
from adapt.methods.dann import DANN
from adapt.methods.ewc import EWC, L2SP, anchor_params, fisher_diagonal, save_fisher
from adapt.methods.mcc import MCC
from adapt.methods.mme import MME
from adapt.methods.multisource import M3SDA, MultiSourceDANN, build_multisource
from adapt.methods.shot import SHOT
from adapt.methods.source_only import SourceOnly
from adapt.methods.style import FDA, HistogramMatching, MixStyle
from adapt.methods.tent import TENT

if TYPE_CHECKING:  # pragma: no cover
    from adapt.recipe import AdaptRunConfig, Recipe


def objective_batchnorm(objective: str) -> str:
    """The BatchNorm convention (``adapt.methods.base``) of the recipe objective named
    ``objective``: its class's ``batchnorm`` attribute; ``"source"`` for the others."""
    classes = {"dann": DANN, "cdan": CDAN, "mcc": MCC, "coral": DeepCORAL, "dan": DAN, "shot": SHOT, "tent": TENT,
               "mme": MME, "msdann": MultiSourceDANN, "m3sda": M3SDA}
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
    source_train: Dataset | None,
    target_train: Dataset,
    target_labeled: Dataset | None,
    device: torch.device,
    out_dir: Path,
) -> RunComponents:
    """Assemble a run: its objective, the data it trains on, styles and penalties.

    ``source_train``: labelled source training images (with ``.images(idx)`` and
    ``.labels``), None in a source-free recipe (SHOT, TENT); ``target_train``: the unlabelled target training images;
    ``target_labeled``: the few labelled target images (``finetune``, ``mme``), or None.
    EWC's Fisher is computed here, on the source training images, from ``model`` (still
    the source model's weights), and saved to ``out_dir/fisher.pt``.
    """
    objective: Objective | None
    train_data = source_train
    smoothing = recipe.train.label_smoothing
    if run.objective == "none":
        objective = None
    elif run.objective == "source_only":
        objective = SourceOnly(recipe.train.label_smoothing)
    elif run.objective == "dann":
        objective = DANN.for_model(model, domain_weight=run.dann.weight, width=run.dann.hidden,
                                   depth=run.dann.depth, label_smoothing=recipe.train.label_smoothing)
    elif run.objective in ("cdan", "mcc", "coral", "dan"):
        objective = _alignment_objective(run, model, smoothing, recipe.seed)
    elif run.objective in ("msdann", "m3sda"):  # two or more sources (adapt/methods/multisource.py)
        objective, train_data = build_multisource(run, model, source_train, [s.name for s in recipe.data.sources],
                                                  smoothing)
    elif run.objective == "shot":
        # no label smoothing on pseudo-labels (the paper smooths the source training only)
        objective = SHOT(target_train, pseudo_label_weight=run.shot.pseudo_label_weight,
                         diversity_weight=run.shot.diversity_weight)
        train_data = objective.data  # target images with pseudo-labels, refreshed every epoch
    elif run.objective == "tent":
        objective = TENT()
        train_data = target_train  # unlabelled: TENT ignores the labels
    elif run.objective in ("finetune", "mme"):
        if target_labeled is None:
            raise UserError(f"method.runs.{run.name}: objective '{run.objective}' needs labelled target images "
                            "(set data.target.labeled_per_class: k)")
        if run.objective == "mme":  # source batches from the loop, labelled target ones kept by MME
            objective = MME.for_model(model, target_labeled, lam=run.mme.lam, temperature=run.mme.temperature,
                                      label_smoothing=smoothing, seed=recipe.seed)
        else:
            objective = SourceOnly(smoothing)
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


def _alignment_objective(run: AdaptRunConfig, model: nn.Module, smoothing: float, seed: int) -> Objective:
    """CDAN, MCC, DeepCORAL or DAN from the run's options (under the objective's own key)."""
    if run.objective == "cdan":
        c = run.cdan
        return CDAN.for_model(model, domain_weight=c.weight, entropy=c.entropy, randomized_dim=c.randomized_dim,
                              max_dim=c.max_multilinear_dim, width=c.hidden, depth=c.depth,
                              label_smoothing=smoothing, seed=seed)
    if run.objective == "mcc":
        return MCC(weight=run.mcc.weight, temperature=run.mcc.temperature, label_smoothing=smoothing)
    if run.objective == "coral":
        return DeepCORAL(weight=run.coral.weight, layers=run.coral.layers, label_smoothing=smoothing)
    return DAN(weight=run.dan.weight, layers=run.dan.layers, kernel_low=run.dan.kernel_low,
               kernel_high=run.dan.kernel_high, label_smoothing=smoothing)


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
