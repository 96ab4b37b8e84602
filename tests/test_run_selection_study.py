"""benchmarks/run_selection_study.py: regret of the run selectors, pooled over case sets;
known answers on hand-made cases (every model's true accuracy and scores given)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(shift, model, true, cot, agreement):
    return {"shift": shift, "seed": 0, "model": model, "true_acc": true,
            "scores": {"cot": cot, "agreement": agreement, "agreement_mean": agreement}}


def test_one_run_regret_keeps_the_source_model_on_a_tie_and_refuses_a_wrecked_run():
    study = _load("run_selection_study")
    rows = [_row("a", "source-only", 0.60, 0.50, 0.9), _row("a", "good", 0.80, 0.70, 0.9),
            _row("a", "wrecked", 0.10, 0.20, 0.9), _row("a", "tie", 0.70, 0.50, 0.9)]
    pairs = study.two_model_regrets(rows)
    # (always the run, estimate by COT over {source, run}) per run, in order
    np.testing.assert_allclose(pairs, [[0.0, 0.0], [0.5, 0.0], [0.0, 0.10]])


def test_leave_one_set_out_applies_the_rule_best_on_the_other_sets():
    study = _load("run_selection_study")
    sets = {"A": {"r1": {("A", 1): 0.0}, "r2": {("A", 1): 0.3}},
            "B": {"r1": {("B", 1): 0.1}, "r2": {("B", 1): 0.0}},
            "C": {"r1": {("C", 1): 0.0}, "r2": {("C", 1): 0.5}}}
    chosen, regrets = study.leave_one_set_out(sets)
    # A held out: on B+C r1 (mean 0.05) beats r2 (0.25); B: r1 (0) on A+C; C: r1 (0.05) on A+B
    assert chosen == {"A": "r1", "B": "r1", "C": "r1"}
    assert regrets == [0.0, 0.1, 0.0]
    text, table = study.pooled_table(sets)
    assert table["r1"]["pooled"] == pytest.approx((np.mean([0.0, 0.1, 0.0]), 0.1))
    assert text.index("| r1 |") < text.index("| r2 |")  # best pooled mean first


def test_under_a_label_shift_reading_the_source_model_is_picked_whatever_the_estimates():
    combos = _load("labelfree_combos")
    study = _load("run_selection_study")
    # the estimates prefer the run (COT 0.7 > 0.5); the truth prefers the source model
    rows = [_row("ls", "source-only", 0.98, 0.50, 0.9), _row("ls", "aligned", 0.91, 0.70, 0.9)]
    order = ("cot", "agreement")
    assert combos.pick_run("estimate", rows, 0.0, 0, estimator_order=order)["model"] == "aligned"
    shifted = [{**r, "label_shift": {"verdict": "label_shift"}} for r in rows]
    assert combos.pick_run("labelshift>estimate", shifted, 0.0, 0, estimator_order=order)["model"] == "source-only"
    # any other reading leaves the estimate to decide
    other = [{**r, "label_shift": {"verdict": "covariate_shift"}} for r in rows]
    assert combos.pick_run("labelshift>estimate", other, 0.0, 0, estimator_order=order)["model"] == "aligned"
    np.testing.assert_allclose(study.two_model_regrets(shifted), [[0.07, 0.0]])
