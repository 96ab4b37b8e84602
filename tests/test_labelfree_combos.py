"""The label-free study's combined selectors (benchmarks/labelfree_combos.py): the
do-no-harm rule deploys the source model unless a run is shown to help, and the
leave-one-shift-out choice never uses the shift it is judged on."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _combos():
    spec = importlib.util.spec_from_file_location("labelfree_combos", ROOT / "benchmarks" / "labelfree_combos.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["labelfree_combos"] = mod
    spec.loader.exec_module(mod)
    return mod


def _row(model, true, source_val, agreement, shift="s", seed=0):
    return {"shift": shift, "seed": seed, "model": model, "true_acc": true, "n_source": 200,
            "scores": {"source_val": source_val, "agreement": agreement}}


def test_do_no_harm_keeps_the_source_model_unless_a_run_is_shown_to_help():
    c = _combos()
    # a pure label shift: every run a little worse, with a slightly higher source accuracy
    rows = [_row("source-only", 0.98, 0.96, 0.91), _row("dann", 0.91, 0.97, 0.94), _row("adabn", 0.91, 0.96, 0.93)]
    assert c.pick_run("source_val", rows, 0.09, 200)["model"] == "dann"
    assert c.pick_run("helped>source_val", rows, 0.09, 200, helped=set())["model"] == "source-only"
    # a run shown to help: the best source accuracy among the helped ones
    assert c.pick_run("helped>source_val", rows, 0.09, 200, helped={"adabn", "dann"})["model"] == "dann"
    assert c.pick_run("helped>agreement", rows, 0.09, 200, helped={"adabn"})["model"] == "adabn"


def test_band_rules_use_their_stated_intervals():
    c = _combos()
    assert c.binomial_margin(0.96, 200) == pytest.approx(1.96 * (2 * 0.96 * 0.04 / 200) ** 0.5)
    rows = [_row("a", 0.5, 0.90, 0.80), _row("b", 0.9, 0.99, 0.75), _row("c", 0.1, 0.992, 0.10)]
    # within 0.09 of the best agreement (a, b), the best source accuracy: b (c is far off)
    assert c.pick_run("agreement>source_val", rows, 0.09, 200)["model"] == "b"
    # within the binomial interval of the best source accuracy (b, c), the best agreement: b
    assert c.pick_run("source_val>agreement", rows, 0.09, 200)["model"] == "b"


def test_leave_one_shift_out_never_chooses_on_the_shift_it_judges():
    c = _combos()
    # A is perfect on shift x and poor elsewhere; B the reverse
    regrets = {"A": {("x", 0): 0.0, ("y", 0): 0.3, ("z", 0): 0.3},
               "B": {("x", 0): 0.2, ("y", 0): 0.0, ("z", 0): 0.0}}
    out, chosen = c.loso(regrets)
    assert chosen == {"x": "B", "y": "B", "z": "B"}  # x's own figures would have chosen A
    assert out == {("x", 0): 0.2, ("y", 0): 0.0, ("z", 0): 0.0}


def test_reverse_validation_rule_reads_the_label_shift_first_then_rv_ties_by_the_estimate():
    c = _combos()

    def row(model, true, rv, agreement, cot):
        return {"shift": "s", "seed": 0, "model": model, "true_acc": true, "n_source": 200,
                "scores": {"rv_images": rv, "agreement": agreement, "cot": cot}}

    rows = [row("source-only", 0.5, 0.70, 0.6, 0.5), row("dann", 0.8, 0.90, 0.5, 0.4), row("adabn", 0.7, 0.90, 0.7, 0.6)]
    order = ("agreement", "cot")
    assert c.pick_run("labelshift>rv_images", rows, 0.0, 200, estimator_order=order)["model"] == "adabn"  # tie: agreement
    rows[1]["scores"]["rv_images"] = 0.95
    assert c.pick_run("labelshift>rv_images", rows, 0.0, 200, estimator_order=order)["model"] == "dann"
    shifted = [{**r, "label_shift": {"verdict": "label_shift"}} for r in rows]
    assert c.pick_run("labelshift>rv_images", shifted, 0.0, 200, estimator_order=order)["model"] == "source-only"
    got = c.one_run_regrets(rows, ("labelshift>rv_images",))
    # pairs (source, dann) and (source, adabn): the run is the better one both times
    assert got["always the run"] == [0.0, 0.0] and got["labelshift>rv_images"] == [0.0, 0.0]
