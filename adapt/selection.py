"""Label-free model selection: score each epoch's model without target labels.

Target labels, when known, are used only for reporting, never here. The scores come
from pytorch-adapt's validators (Musgrave et al., "Benchmarking Validation Methods for
Unsupervised Domain Adaptation", 2022):

* ``im`` — information maximisation, H(E p) − E H(p) on target predictions: high when
  predictions are confident *and* diverse. A model that collapses onto one class
  scores ~0, which is why it is the default.
* ``snd`` — soft neighbourhood density (Saito et al. 2021) of target predictions: high
  when target points cluster. It can reward a collapsed model, so it is reported but
  not the default.
* ``source_val`` — accuracy on the labelled source validation split (a supervised but
  source-only criterion: it protects source accuracy, not target accuracy).
* ``last`` — no selection: the final epoch.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from adapt.evaluate import classification_metrics, predict

SELECTORS = ("im", "snd", "source_val", "last")


def _validators() -> tuple[type, type]:
    """pytorch-adapt's IM and SND validators.

    Late import: pytorch-adapt (with torchmetrics behind it) adds seconds to start-up and
    only selection needs it. torchmetrics' import of ``pkg_resources`` warns on every run
    (a deprecation aimed at torchmetrics' authors, not at our users): that one warning,
    from that module, is silenced here — the only place it is triggered.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning,
                                module=r"torchmetrics\.")
        from pytorch_adapt.validators import IMValidator, SNDValidator
    return IMValidator, SNDValidator


def label_free_scores(probs: np.ndarray) -> dict[str, float]:
    """IM and SND of target predicted probabilities ``probs`` [N, K] (higher is better)."""
    IMValidator, SNDValidator = _validators()
    p = torch.as_tensor(probs, dtype=torch.float32).clamp_min(1e-12)
    logits = p.log()  # softmax(log p) = p, so IM sees exactly these predictions
    return {
        "im": float(IMValidator()(target_train={"logits": logits})),
        "snd": float(SNDValidator()(target_train={"preds": p})),
    }


def make_score_fn(
    selector: str,
    *,
    target: Dataset,
    source_val: Dataset | None,
    class_names: list[str],
    device: torch.device,
    prepare: Callable[[nn.Module], nn.Module] | None = None,
    source_prepare: Callable[[nn.Module], nn.Module] | None = None,
    oracle: Dataset | None = None,
    batch_size: int = 256,
) -> Callable[[nn.Module], tuple[float, dict[str, float]]]:
    """A score function for :func:`adapt.train.fit` that logs every score and returns
    the one ``selector`` names. ``prepare`` turns the training model into the model that
    will be deployed (e.g. AdaBN on the target) before it is scored; it gets a copy.
    ``source_prepare`` does the same for the source-validation accuracy when the model
    is deployed on the source differently (per-domain BatchNorm statistics: AdaBN and
    fine-tuning runs are measured on the source with the source's statistics).
    ``oracle``: labelled target images (the target test split) whose accuracy is logged
    per epoch as ``oracle_target_accuracy`` — for reporting the selection regret only;
    it never enters the score."""
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r}; choose from {SELECTORS}")
    epoch_counter = {"n": 0}

    def score(model: nn.Module) -> tuple[float, dict[str, float]]:
        candidate = prepare(copy.deepcopy(model)) if prepare is not None else model
        logs = label_free_scores(predict(candidate, target, device, batch_size)["probs"])
        if source_val is not None and len(source_val):
            on_source = source_prepare(copy.deepcopy(model)) if source_prepare is not None else candidate
            out = predict(on_source, source_val, device, batch_size)
            m = classification_metrics(out["labels"], out["probs"].argmax(1), class_names)
            logs["source_val_accuracy"] = m["accuracy"] if m["accuracy"] is not None else float("nan")
        if oracle is not None and len(oracle):
            out = predict(candidate, oracle, device, batch_size)
            acc = classification_metrics(out["labels"], out["probs"].argmax(1), class_names)["accuracy"]
            logs["oracle_target_accuracy"] = acc if acc is not None else float("nan")
        epoch_counter["n"] += 1
        if selector == "last":
            return float(epoch_counter["n"]), logs
        if selector == "source_val":
            return logs.get("source_val_accuracy", float("nan")), logs
        return logs[selector], logs

    return score


def selection_summary(history: list[dict[str, Any]], selector: str, best_epoch: int) -> dict[str, Any]:
    """The chosen epoch and every epoch's scores, for ``selection.json``."""
    keys = ("im", "snd", "source_val_accuracy", "oracle_target_accuracy", "score")
    return {
        "selector": selector,
        "selected_epoch": best_epoch,
        "epochs": [{"epoch": h["epoch"], **{k: h[k] for k in keys if k in h}} for h in history],
    }
