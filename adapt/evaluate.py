"""Predictions and classification metrics (accuracy, macro-F1, per-class recall, confusion)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
    return_features: bool = False,
) -> dict[str, np.ndarray]:
    """Run ``model`` over ``dataset`` in eval mode.

    Returns ``probs`` [N, K] float32, ``labels`` [N] int64 (-1 = unknown) and, when
    ``return_features``, ``features`` [N, D] float32 (the penultimate layer).
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    probs, labels, feats = [], [], []
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if return_features:
            f = model.features(x)
            logits = model.head(f)
            feats.append(f.float().cpu())
        else:
            logits = model(x)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    out = {
        "probs": torch.cat(probs).numpy() if probs else np.zeros((0, 0), np.float32),
        "labels": torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, np.int64),
    }
    if return_features:
        out["features"] = torch.cat(feats).numpy() if feats else np.zeros((0, 0), np.float32)
    return out


def classification_metrics(
    labels: np.ndarray, preds: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall and the confusion matrix.

    ``labels`` and ``preds`` are [N] class indices; rows of ``confusion`` are true
    classes, columns predicted. Samples with unknown labels (-1) are ignored.
    Classes absent from ``labels`` get recall ``None`` and are left out of macro-F1.
    """
    k = len(class_names)
    keep = labels >= 0
    labels, preds = labels[keep], preds[keep]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    n = int(confusion.sum())
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(1).astype(float)
    predicted = confusion.sum(0).astype(float)
    recall = np.divide(tp, support, out=np.full(k, np.nan), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * np.nan_to_num(recall), precision + np.nan_to_num(recall),
                   out=np.zeros(k), where=(precision + np.nan_to_num(recall)) > 0)
    present = support > 0
    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else None,
        "macro_f1": float(f1[present].mean()) if present.any() else None,
        "per_class_recall": {
            c: (None if np.isnan(r) else float(r)) for c, r in zip(class_names, recall)
        },
        "confusion": confusion.tolist(),
    }


def evaluate(
    model: nn.Module,
    dataset: Dataset,
    class_names: list[str],
    device: torch.device | str = "cpu",
    batch_size: int = 256,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Metrics of ``model`` on a labelled ``dataset`` (see :func:`classification_metrics`)."""
    out = predict(model, dataset, device, batch_size, num_workers)
    preds = out["probs"].argmax(1) if len(out["probs"]) else np.zeros(0, np.int64)
    return classification_metrics(out["labels"], preds, class_names)
