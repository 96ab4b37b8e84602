"""Group DRO done as Sagawa et al. (ICLR 2020) do it: the epoch picked by worst-group
accuracy on the source validation split, and the generalization adjustment C / sqrt(n_g)
(``train.fairness.selection`` / ``train.fairness.adjustment``, docs/fairness.md).

Known answers: on a constructed history of validation predictions (truth planted: which
epoch has the better worst cell, which the better average) worst-group selection picks the
epoch with the better worst cell, the average breaks ties among equal worst cells, and the
average-accuracy selection picks another epoch; the adjusted group-DRO update is the
hand-computed q_g exp(eta (L_g + C / sqrt(n_g))). End to end (tiny phantom): the source
stage keeps the epoch whose worst source-validation cell is best. Bad values stop with one
error line and exit 2.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from adapt.fairness import FairnessLoss
from adapt.fairness_config import FairnessConfig
from adapt.group_metrics import worst_group_score
from domaingap.adapt_run import main as adapt_main

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["normal", "opacity"]


def planted_val():
    """A validation split of 88 images: 40 per majority cell (fixed / normal, portable /
    opacity), 4 per minority cell (portable / normal, fixed / opacity)."""
    cells = [("fixed", 0, 40), ("portable", 1, 40), ("portable", 0, 4), ("fixed", 1, 4)]
    groups = [g for g, _, n in cells for _ in range(n)]
    labels = np.array([y for _, y, n in cells for _ in range(n)])
    return groups, labels


def predictions(labels, wrong_per_cell):
    """Predictions that get the first k images of each cell wrong (cells in planted_val order)."""
    preds, start = labels.copy(), 0
    for n, k in zip((40, 40, 4, 4), wrong_per_cell):
        preds[start:start + k] = 1 - preds[start:start + k]
        start += n
    return preds


def first_best(scores):
    """The loop's rule (adapt.train: a score must beat the best so far): the first maximum."""
    best, pick = -np.inf, None
    for epoch, s in enumerate(scores, 1):
        if s > best:
            best, pick = s, epoch
    return pick


def test_worst_group_selection_picks_the_epoch_with_the_better_worst_group():
    groups, labels = planted_val()
    history = [  # wrong images per cell: fixed/normal, portable/opacity, portable/normal, fixed/opacity
        (0, 0, 3, 1),  # epoch 1: the scanner detector: 95.5 % average, worst cell 25 %
        (4, 4, 1, 1),  # epoch 2: worst cell 75 %, average 88.6 %
        (2, 1, 1, 0),  # epoch 3: worst cell 75 % again, average 95.5 %: wins the tie
        (3, 2, 1, 1),  # epoch 4: worst cell 75 %, average 92.0 %
    ]
    scored = [worst_group_score(labels, predictions(labels, w), groups, CLASSES, "scanner") for w in history]
    worst = [logs["val_worst_group_accuracy"] for _, logs in scored]
    average = [logs["val_accuracy"] for _, logs in scored]
    assert worst == pytest.approx([0.25, 0.75, 0.75, 0.75])
    assert average == pytest.approx([84 / 88, 78 / 88, 84 / 88, 81 / 88])
    assert first_best([s for s, _ in scored]) == 3  # the better worst cell; among ties, the average
    assert first_best(average) == 1  # what average-accuracy selection keeps: the scanner detector
    # the tie-break never outranks a better worst cell: 1 more right in the 4-image cell wins
    # over any average
    assert scored[1][0] > scored[0][0] and scored[2][0] - scored[1][0] < 1 / 88 ** 2


def test_generalization_adjustment_is_c_over_sqrt_n_in_the_weight_update():
    groups = ["a"] * 9 + ["b"]
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 0])  # cells a/0: 4, a/1: 5, b/0: 1, b/1: 0
    eta, c = 0.5, 2.0
    cfg = FairnessConfig(objective="group_dro", group="g", step_size=eta, adjustment=c)
    loss_fn = FairnessLoss(cfg, groups, labels, 2)
    batch = [0, 4, 9]
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.3, 0.1]])
    ys = torch.as_tensor(labels[batch])
    loss_fn.set_batch(batch)
    loss = loss_fn(logits, ys)
    ce = torch.nn.functional.cross_entropy(logits, ys, reduction="none").numpy().astype(np.float64)
    group_loss = np.array([ce[0], ce[1], ce[2], 0.0])
    counts = np.array([4, 5, 1, 1])  # an empty cell counts as 1 (no division by zero)
    q = np.full(4, 0.25) * np.exp(eta * (group_loss + c / np.sqrt(counts)))
    q /= q.sum()
    assert np.allclose(loss_fn.q.numpy(), q)
    assert float(loss) == pytest.approx(float(group_loss @ q), rel=1e-6)  # the loss itself is not adjusted


RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "fairness_phantom.yaml"
#: the shipped recipe, shrunk: a large minority, so that every (scanner x class) cell of the
#: validation split has images; 3 epochs without patience
SMALL = ["data.source.n=200", "data.source.minority=0.3", "data.target.n=40", "data.target.minority=0.3",
         "data.image_size=32", "data.split={train: 0.5, val: 0.3, test: 0.2}", "train.epochs=3",
         "train.batch_size=32", "train.lr=0.003", "train.device=cpu", "train.threads=1", "train.guard=null",
         "train.fairness.adjustment=1.0", "method.runs=[]", "seed=1"]


def run(tmp_path, *overrides):
    return adapt_main([str(RECIPE), *SMALL, *overrides, f"output.dir={tmp_path}",
                       "output.name=sel", "--quiet", "--no-diagnostics"])


def test_the_source_stage_keeps_the_epoch_with_the_best_worst_validation_cell(tmp_path):
    assert run(tmp_path) == 0
    fit = json.loads((tmp_path / "sel" / "metrics.json").read_text())["source"]["fit"]
    rows = fit["history"]
    assert len(rows) == 3 and all("val_worst_group_accuracy" in r for r in rows)
    key = [(r["val_worst_group_accuracy"], r["val_accuracy"]) for r in rows]
    assert fit["best_epoch"] == 1 + key.index(max(key))


@pytest.mark.parametrize("override, culprit", [
    ("train.fairness.selection=best", r"train\.fairness\.selection"),
    ("train.fairness.adjustment=-1", r"train\.fairness\.adjustment"),
    ("train.fairness={objective: equalized_odds, group: scanner, adjustment: 2}", r"train\.fairness: .*adjustment"),
    ("data.split={train: 0.8, val: 0.0, test: 0.2}", r"train\.fairness\.selection: .*validation split"),
])
def test_bad_selection_or_adjustment_is_one_line_and_exit_2(tmp_path, capsys, override, culprit):
    assert run(tmp_path, override) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(culprit, err[0]), err
    assert not (tmp_path / "sel").exists()
