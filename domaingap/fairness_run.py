"""``train.fairness`` and ``train.guard`` in a run: checked before anything is written,
assembled for each stage's :func:`adapt.train.fit`, and the per-group metrics of every
evaluated model (see docs/fairness.md)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from adapt.errors import UserError
from adapt.evaluate import predict
from adapt.fairness import attach_fairness, check_groups
from adapt.group_metrics import fairlearn_metrics, group_report, group_values, worst_group_score
from adapt.guard import Guard
from adapt.recipe import Recipe
from domaingap.runs import Domains, adabn_on, after_precise_bn

GROUP_METRICS = ("worst_group_accuracy", "eo_difference")


def group_column(recipe: Recipe) -> str | None:
    """The group column the fairness objective, the guard and the group metrics use."""
    guard, fair = recipe.train.guard, recipe.train.fairness
    return (guard.group if guard is not None and guard.group else None) or (fair.group if fair else None)


def check_fairness_inputs(recipe: Recipe, domains: Domains) -> None:
    """One-line UserErrors (naming the key) for a fairness or guard setting the data
    cannot serve: no source images, no group column, one group, a group of one image,
    no validation split. Run before the run folder is touched."""
    fair, guard = recipe.train.fairness, recipe.train.guard
    if fair is None and guard is None:
        return
    fairlearn_metrics()  # the optional extra, before anything trains
    if not domains.has_source:
        raise UserError(f"train.{'fairness' if fair else 'guard'}: needs labelled source images (data.source)")
    if fair is not None:
        check_groups(domains.source_split["train"], fair.group, "train.fairness.group")
        if fair.selection == "worst_group_accuracy":
            val = domains.source_split.get("val")
            if val is None or not len(val):
                raise UserError("train.fairness.selection: worst_group_accuracy needs a source validation "
                                "split (data.split.val > 0)")
            group_values(val, fair.group, "train.fairness.selection")
    if guard is not None:
        val = domains.source_split.get("val")
        if val is None or not len(val):
            raise UserError("train.guard: needs a source validation split (data.split.val > 0)")
        if guard.metric in GROUP_METRICS:
            column = group_column(recipe)
            if column is None:
                raise UserError(f"train.guard.group: metric {guard.metric} needs a group column "
                                "(set train.guard.group or train.fairness.group)")
            group_values(val, column, "train.guard.group")


def source_score_fn(recipe: Recipe, domains: Domains, device: torch.device
                    ) -> Callable[[nn.Module], tuple[float, dict[str, float]]] | None:
    """The source stage's epoch score for ``train.fairness.selection:
    worst_group_accuracy`` (:func:`adapt.group_metrics.worst_group_score` on the source
    validation split, whose groups are known); None otherwise (the stage keeps its
    average validation accuracy)."""
    fair, val = recipe.train.fairness, domains.source_split.get("val")
    if fair is None or fair.selection != "worst_group_accuracy" or val is None or not len(val):
        return None
    groups, column = group_values(val, fair.group, "train.fairness.selection"), fair.group

    def score_fn(m: nn.Module) -> tuple[float, dict[str, float]]:
        out = predict(m, val, device)
        return worst_group_score(out["labels"], out["probs"].argmax(1), groups, domains.classes, column)
    return score_fn


def fit_safeguards(recipe: Recipe, domains: Domains, objective: Any, train_data: Any, device: torch.device,
                   stage_dir: Path, per_domain_bn: bool = False) -> dict[str, Any]:
    """``fairness=`` and ``guard=`` for :func:`adapt.train.fit` of a stage trained on
    ``train_data`` (fairness only when it holds the labelled source images). A
    per-domain-BN run is guarded as it is deployed on the source (source statistics)."""
    fair_cfg, guard_cfg = recipe.train.fairness, recipe.train.guard
    out: dict[str, Any] = {"fairness": None, "guard": None}
    on_source = domains.has_source and train_data is domains.source_split.get("train")
    if fair_cfg is not None and on_source:
        out["fairness"] = attach_fairness(objective, fair_cfg, train_data, len(domains.classes))
    if guard_cfg is not None and domains.has_source:
        val = domains.source_split["val"]
        column = group_column(recipe) if guard_cfg.metric in GROUP_METRICS else None
        groups = group_values(val, column, "train.guard.group") if column else None
        source_train = domains.source_split["train"]
        prepare: Callable[[nn.Module], nn.Module] | None = (
            (lambda m: adabn_on(copy.deepcopy(m), source_train, device)) if per_domain_bn else None)
        # after an epoch, precise BN has just set what prepare would estimate (as the epoch's scoring reuses)
        out["guard"] = Guard(guard_cfg, val, groups, domains.classes, device, stage_dir, prepare, column,
                             after_precise_bn(prepare, recipe, train_data, source_train))
    return out


def group_metrics_section(model: nn.Module, domains: Domains, column: str | None, device: torch.device,
                          on_source: nn.Module | None = None) -> dict[str, Any] | None:
    """fairlearn's per-group report on the source and (labelled) target test splits, for
    the group ``column`` (:func:`group_column`: the recipe's); None without one."""
    if column is None:
        return None
    out: dict[str, Any] = {"column": column}
    for key, ds, m in (("source_test", domains.source_split.get("test"), on_source or model),
                       ("target_test", domains.target_split.get("test"), model)):
        if ds is None or not len(ds) or not ds.has_labels or column not in ds.groups:
            out[key] = None
            continue
        pred = predict(m, ds, device)
        out[key] = group_report(pred["labels"], pred["probs"].argmax(1), ds.groups[column], domains.classes,
                                column).to_dict()
    return out
