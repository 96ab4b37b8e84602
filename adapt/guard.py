"""The guard: a metric on the source validation split, watched every epoch.

``train.guard: {metric, max_drop, action, z}`` (see docs/fairness.md). After each
epoch's score the guard measures its metric on the validation images (with the
validation groups): ``source_val_accuracy`` (group "all"), ``worst_group_accuracy``
(the smallest accuracy over the (group value x class) cells) or ``eo_difference``
(fairlearn's equalized-odds difference between the groups; lower is better). The
reference is the best value so far, the weights the fit started from ("epoch 0") included
— an adaptation run must not end worse than the source model it began with; the
reference's weights are kept in ``guard.pt``.

Noise-aware comparison: the same model measured on a few hundred images moves by
several points from epoch to epoch (a cell of 90 images at 95 % has a binomial standard
error of 2.3 points), so a fixed ``max_drop`` of 0.02 would trip on noise. The guard
trips only when

    drop > max_drop + z * SE,   SE = sqrt(2 p~ (1 - p~) / n)

— the standard error of the difference of two independent binomial proportions on n
images, p~ the Agresti-Coull centre (x + 2) / (n + 4) of the reference value (so that a
reference of 100 % still carries noise), n the size of the cell measured (the whole
split for source_val_accuracy; the smallest group for eo_difference, whose rates are
proportions within a group). ``z`` defaults to 2.

When it trips: ``rollback`` ends training with the reference epoch's weights (written
to ``best.pt``); ``stop`` ends training and keeps the usual selection among the epochs
before the trip (the starting weights when it trips at the first epoch). Either way the tripped epoch cannot be selected, the loop state says
so (a resumed run does not continue past it), and the record — metric, group, epoch,
values, threshold — is in ``FitResult.guard`` (metrics.json) and the audit.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from torch import nn
from torch.utils.data import Dataset

from adapt.evaluate import predict
from adapt.fairness_config import GuardConfig
from adapt.group_metrics import group_report
from adapt.io import atomic_torch_save


def drop_threshold(max_drop: float, z: float, reference: float, n: int) -> tuple[float, float]:
    """(threshold, SE): a drop beyond ``threshold`` = max_drop + z SE is more than noise
    for a proportion ``reference`` measured on ``n`` images (see the module docstring)."""
    p = (reference * n + 2.0) / (n + 4.0)
    se = math.sqrt(2.0 * p * (1.0 - p) / max(n, 1))
    return max_drop + z * se, se


class Guard:
    """Watches ``cfg.metric`` on ``val`` (a labelled dataset with ``groups`` per sample)."""

    def __init__(self, cfg: GuardConfig, val: Dataset, groups: Sequence[str] | None, classes: Sequence[str],
                 device: Any, out_dir: str | Path, prepare: Callable[[nn.Module], nn.Module] | None = None,
                 column: str | None = None, epoch_prepare: Callable[[nn.Module], nn.Module] | None = None):
        """``prepare`` turns the model into the one measured (e.g. a copy with source
        BatchNorm statistics; None: the model itself); ``epoch_prepare`` does it after an
        epoch (default ``prepare``), when the epoch's end may already have done part of it."""
        self.cfg, self.val, self.classes, self.device = cfg, val, list(classes), device
        self.groups = list(groups) if groups is not None else ["all"] * len(val)
        self.column = column or "all"
        self.path = Path(out_dir) / "guard.pt"
        self.prepare = prepare
        self.epoch_prepare = epoch_prepare or prepare

    def measure(self, model: nn.Module, prepare: Callable[[nn.Module], nn.Module] | None = None) -> dict[str, Any]:
        """{value, goodness (higher is better), group, n} of the metric for ``model``,
        brought to what is measured by ``prepare`` (default: the guard's)."""
        prepare = prepare or self.prepare
        m = prepare(model) if prepare is not None else model
        out = predict(m, self.val, self.device)
        rep = group_report(out["labels"], out["probs"].argmax(1), self.groups, self.classes, self.column)
        if self.cfg.metric == "source_val_accuracy":
            acc = float(np.mean(out["probs"].argmax(1) == out["labels"]))
            return {"value": acc, "goodness": acc, "group": "all", "n": len(out["labels"])}
        if self.cfg.metric == "worst_group_accuracy":
            return {"value": rep.worst_group_accuracy, "goodness": rep.worst_group_accuracy,
                    "group": rep.worst_cell, "n": rep.worst_cell_n}
        eo = rep.eo_difference or 0.0
        smallest = min(rep.per_group, key=lambda k: rep.per_group[k]["n"])
        return {"value": eo, "goodness": -eo, "group": smallest, "n": rep.per_group[smallest]["n"]}

    def start(self, state: dict[str, Any], trainable: nn.Module, model: nn.Module, is_main: bool) -> None:
        """At the start of :func:`adapt.train.fit`: on a fresh start, the weights it starts
        from are the first reference ("epoch 0": for an adaptation run, the source model —
        a run must not end worse than it began); a resumed run keeps its state."""
        if "guard" in state:
            return
        now = self.measure(model)
        state["guard"] = {"metric": self.cfg.metric, "reference": {**now, "epoch": 0}, "tripped": None}
        if is_main:
            atomic_torch_save(self.path, {"trainable": trainable.state_dict(), "epoch": -1})

    def after_epoch(self, trainable: nn.Module, model: nn.Module, epoch: int, state: dict[str, Any],
                    record: dict[str, Any], score: float, is_main: bool, desc: str,
                    say: Callable[[str], None]) -> float:
        """Measure, keep the reference, trip; returns the score the selection should see
        (-inf for a tripped epoch). Updates ``state['guard']`` (saved in ``last.pt``)."""
        g = state["guard"]
        now = self.measure(model, self.epoch_prepare)
        record[f"guard_{self.cfg.metric}"] = now["value"]
        ref = g["reference"]
        if ref is None or now["goodness"] > ref["goodness"]:
            g["reference"] = {**now, "epoch": epoch + 1}
            if is_main:
                atomic_torch_save(self.path, {"trainable": trainable.state_dict(), "epoch": epoch})
            return score
        drop = ref["goodness"] - now["goodness"]
        p = ref["value"] if self.cfg.metric != "eo_difference" else 1.0 - ref["value"]
        threshold, se = drop_threshold(self.cfg.max_drop, self.cfg.z, p, now["n"])
        if drop <= threshold:
            return score
        g["tripped"] = {"metric": self.cfg.metric, "group": now["group"], "epoch": epoch + 1,
                        "value": now["value"], "reference": ref["value"], "reference_epoch": ref["epoch"],
                        "drop": drop, "threshold": threshold, "se": se, "action": self.cfg.action}
        say(f"{desc}: guard tripped at epoch {epoch + 1}: {self.cfg.metric} of group {now['group']!r} "
            f"{'rose' if self.cfg.metric == 'eo_difference' else 'fell'} from {ref['value']:.3f} "
            f"(epoch {ref['epoch']}) to {now['value']:.3f}, beyond max_drop {self.cfg.max_drop:g} + "
            f"{self.cfg.z:g} SE ({threshold:.3f}); "
            + (f"rolling back to epoch {ref['epoch']}" if self.cfg.action == "rollback" else "stopping"))
        if self.cfg.action == "rollback" or state["best_epoch"] < 0:  # stop with no epoch before: the start
            # the reference's score (-inf for the starting weights, which scored nothing)
            best = state["history"][ref["epoch"] - 1]["score"] if ref["epoch"] > 0 else -math.inf
            state.update(best_epoch=ref["epoch"] - 1, best_score=best)
            if is_main:
                shutil.copyfile(self.path, self.path.with_name("best.pt.tmp"))
                self.path.with_name("best.pt.tmp").replace(self.path.with_name("best.pt"))
        return -math.inf
