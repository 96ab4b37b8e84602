"""Fairness objectives in the one loop: group DRO and differentiable parity penalties.

A :class:`FairnessLoss` takes the place of an objective's labelled-source criterion
(``class_criterion``, or ``criterion`` for source-only training): it is called with the
source logits and labels of the step, and the loop tells it, before every step, which
training samples the batch holds (:meth:`FairnessLoss.set_batch`) — so every objective
(DANN, CDAN, MCC, CORAL, DAN, source-only) gains it without a change.

* ``group_dro`` — Sagawa et al. (ICLR 2020), Algorithm 1 (online): groups are (group
  value x class); for the batch's mean loss per group L_g, q_g <- q_g exp(eta L_g), q
  renormalised, loss = sum_g q_g L_g (a group absent from the batch has L_g = 0, as in
  the authors' code); with the generalization adjustment C (``adjustment``) the update
  sees L_g + C / sqrt(n_g), n_g the cell's training images, as in the authors' code (the
  loss itself stays sum_g q_g L_g). q is carried in ``last.pt``, so a resumed run is exact.
* ``equalized_odds`` — mean CE + weight x max over classes c of the gap between the
  groups' mean predicted probability vectors among samples of true class c (the soft
  version of fairlearn's TPR/FPR gaps); ``demographic_parity`` — the same gap over all
  samples. A gap needs two groups in the batch; otherwise it is 0.

With several ranks each keeps its own q (its own batches); the weights are a training
signal, not a reported number.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from adapt.errors import UserError
from adapt.fairness_config import FairnessConfig
from adapt.group_metrics import group_values


class FairnessLoss:
    """The fairness objective for one training set (see the module docstring)."""

    def __init__(self, cfg: FairnessConfig, groups: Sequence[str], labels: np.ndarray, n_classes: int,
                 label_smoothing: float = 0.0):
        self.cfg = cfg
        self.values = sorted(set(groups))
        index = {v: i for i, v in enumerate(self.values)}
        self.group = torch.as_tensor([index[v] for v in groups], dtype=torch.long)
        self.cell = self.group * n_classes + torch.as_tensor(np.asarray(labels), dtype=torch.long)
        self.n_classes = n_classes
        self.n_cells = len(self.values) * n_classes
        self.label_smoothing = label_smoothing
        self.q = torch.full((self.n_cells,), 1.0 / self.n_cells, dtype=torch.float64)
        # the generalization adjustment C / sqrt(n_g) over the cells' training counts
        counts = torch.bincount(self.cell, minlength=self.n_cells).clamp(min=1).double()
        self.adjust = cfg.adjustment / counts.sqrt()
        self._batch: Tensor | None = None

    def set_batch(self, indices: Sequence[int]) -> None:
        """The training-set indices of the next step's source batch, in batch order."""
        self._batch = torch.as_tensor(np.asarray(indices, dtype=np.int64))

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.tolist()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state and "q" in state and len(state["q"]) == self.n_cells:
            self.q = torch.tensor(state["q"], dtype=torch.float64)

    def start(self, state: dict[str, Any], *_: Any) -> None:
        """At the start of :func:`adapt.train.fit`: q from the loop state of a resumed run."""
        self.load_state_dict(state.get("fairness"))

    def cell_name(self, cell: int, classes: Sequence[str]) -> str:
        return f"{self.values[cell // self.n_classes]} / {classes[cell % self.n_classes]}"

    def __call__(self, logits: Tensor, ys: Tensor) -> Tensor:
        if self._batch is None or len(self._batch) != len(ys):
            raise RuntimeError("FairnessLoss: set_batch was not called with this step's batch")
        logits = logits.float()
        ce = F.cross_entropy(logits, ys, reduction="none", label_smoothing=self.label_smoothing)
        if self.cfg.objective == "group_dro":
            return self._group_dro(ce, self.cell[self._batch].to(ce.device))
        probs = torch.softmax(logits, dim=1)
        group = self.group[self._batch].to(ce.device)
        if self.cfg.objective == "demographic_parity":
            gap = parity_gap(probs, group)
        else:
            gap = torch.stack([parity_gap(probs[ys == c], group[ys == c]) for c in ys.unique()]).max()
        return ce.mean() + self.cfg.penalty_weight * gap

    def _group_dro(self, ce: Tensor, cell: Tensor) -> Tensor:
        counts = torch.bincount(cell, minlength=self.n_cells).to(ce.dtype)
        sums = torch.zeros(self.n_cells, dtype=ce.dtype, device=ce.device).index_add(0, cell, ce)
        group_loss = sums / counts.clamp(min=1)
        q = self.q * torch.exp(self.cfg.step_size * (group_loss.detach().double().cpu() + self.adjust))
        self.q = q / q.sum()
        return group_loss @ self.q.to(device=ce.device, dtype=ce.dtype)


def parity_gap(probs: Tensor, group: Tensor) -> Tensor:
    """max over classes k of (max_a - min_a) of the groups' mean predicted probability of
    k; 0 with fewer than two groups. ``probs`` [N, K], ``group`` [N] group ids."""
    present = group.unique()
    if len(present) < 2:
        return probs.new_zeros(())
    means = torch.stack([probs[group == a].mean(0) for a in present])  # [A, K]
    return (means.max(0).values - means.min(0).values).max()


def attach_fairness(objective: Any, cfg: FairnessConfig, train_data: Any, n_classes: int,
                    key: str = "train.fairness") -> FairnessLoss:
    """Build the :class:`FairnessLoss` for ``train_data`` and put it in place of
    ``objective``'s labelled-source criterion; a UserError naming ``key`` when the
    objective has none (SHOT, TENT) or the data lacks the group column or is too thin."""
    attr = "class_criterion" if hasattr(objective, "class_criterion") else (
        "criterion" if getattr(objective, "name", "") == "source_only" else None)
    if attr is None:
        raise UserError(f"{key}: the objective {getattr(objective, 'name', objective)!r} trains without "
                        "labelled source images; a fairness objective needs them")
    groups = check_groups(train_data, cfg.group, f"{key}.group")
    smoothing = float(getattr(getattr(objective, attr), "label_smoothing", 0.0))
    loss = FairnessLoss(cfg, groups, train_data.labels, n_classes, smoothing)
    setattr(objective, attr, loss)
    return loss


def check_groups(train_data: Any, column: str, key: str) -> list[str]:
    """The group values of ``train_data``'s column, or a UserError naming ``key``: no such
    column, one group only, or a group of a single image (no per-group loss or rate)."""
    groups = group_values(train_data, column, key)
    counts = {v: groups.count(v) for v in set(groups)}
    if len(counts) < 2:
        raise UserError(f"{key}: column {column!r} has one value ({next(iter(counts))!r}) in "
                        f"{train_data.name}; a fairness objective needs at least two groups")
    thin = min(counts, key=lambda v: (counts[v], v))
    if counts[thin] < 2:
        raise UserError(f"{key}: group {thin!r} of column {column!r} has one training image in "
                        f"{train_data.name} (at least 2 are needed)")
    return groups
