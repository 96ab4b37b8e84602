"""Each source's contribution, measured without target labels: leave one source out.

With ``method.leave_one_source_out: true`` a multi-source run trains, for every source
S_i, the source model again on the other sources only (the recipe's own source stage:
architecture, epochs, schedule, seed) and compares it with the source model of all
sources. Each model is deployed on the target as the AdaBN baseline is (BatchNorm
statistics re-estimated on the unlabelled target training images) and scored on the
held-out target images by a label-free estimate of its accuracy: ATC (Garg et al., ICLR
2022; :func:`adapt.accuracy_estimation.estimate_atc`, negative-entropy scores, threshold
from the model's own held-out source images), with the IM score beside it. Then

    contribution_i = estimate(all sources) − estimate(without S_i)

is positive when S_i helps. A source whose removal *raises* the estimate by more than
``HURTS`` is reported as one that seems to hurt (the audit's Sources verdict,
``diagnostics/audit/sources_policy.py``), with ATC's measured error beside it. When the
target's labels happen to be known, each model's true held-out target accuracy is
recorded too — for reporting only, never used by the verdict.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adapt.accuracy_estimation import estimate_atc
from adapt.accuracy_estimation.calibration import measured_error
from adapt.data.augment import SourceAugment
from adapt.data.sources import source_index
from adapt.evaluate import evaluate, predict
from adapt.methods.source_only import SourceOnly
from adapt.models import build_model
from adapt.selection import label_free_scores
from adapt.train import fit
from domaingap.runs import Domains, adabn_on

#: the estimator the contributions are measured with (its measured error is reported)
ESTIMATOR = "atc"


def _score(model: nn.Module, domains: Domains, keep: np.ndarray | None, device: torch.device) -> dict[str, Any]:
    """Label-free target score of a source model trained on the sources ``keep`` (None: all)."""
    val = domains.source_split.get("val")
    if val is None or not len(val):
        val = domains.source_split["test"]
    if keep is not None:
        val = val.subset(np.flatnonzero(np.isin(source_index(val, domains.source_names), keep)))
    on_source = predict(model, val, device)
    deployed = adabn_on(copy.deepcopy(model), domains.target_split["train"], device)
    on_target = predict(deployed, domains.target_eval, device)
    out = {"estimated_accuracy": estimate_atc(on_source["probs"], on_source["labels"], on_target["probs"],
                                              "neg_entropy"),
           "im_score": label_free_scores(on_target["probs"]).get("im")}
    if domains.target.has_labels:
        out["target_accuracy_reporting_only"] = evaluate(deployed, domains.target_eval, domains.classes,
                                                         device)["accuracy"]
    return out


def leave_one_source_out(source_model: nn.Module, recipe: Any, domains: Domains, device: torch.device,
                         progress: bool = False) -> dict[str, Any]:
    """{"estimator", "measured_error", "all": score, "without": {name: score},
    "contribution": {name: estimate(all) − estimate(without name)}} (module docstring)."""
    names = domains.source_names
    train = domains.source_split["train"]
    which = source_index(train, names)
    scores = {"all": _score(source_model, domains, None, device)}
    without: dict[str, Any] = {}
    for i, name in enumerate(names):
        keep = np.array([j for j in range(len(names)) if j != i])
        torch.manual_seed(recipe.seed)
        model = build_model(recipe.model.arch, len(domains.classes), recipe.data.channels,
                            recipe.model.weights).to(device)
        with tempfile.TemporaryDirectory() as tmp:  # the checkpoints of a measurement are not kept
            fit(model, SourceOnly(recipe.train.label_smoothing), train.subset(np.flatnonzero(which != i)),
                cfg=recipe.train, out_dir=Path(tmp), seed=recipe.seed, strategy=recipe.strategy,
                desc=f"without {name}", progress=progress,
                augment=SourceAugment(recipe.data.augment) if recipe.data.augment else None)
        without[name] = _score(model, domains, keep, device)
    err = measured_error(ESTIMATOR)
    return {
        "estimator": f"{ESTIMATOR} (label-free estimate of target accuracy, AdaBN on the target)",
        "measured_error": None if err is None else {
            "accuracy_mean": err.accuracy_mean, "accuracy_p90": err.accuracy_p90, "change_p90": err.change_p90},
        "all": scores["all"], "without": without,
        "contribution": {n: scores["all"]["estimated_accuracy"] - w["estimated_accuracy"] for n, w in without.items()},
    }
