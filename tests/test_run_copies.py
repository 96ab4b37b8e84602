"""Copies of a run (``method.runs[].copies: k``): the same settings, other seeds. They are
more models for the agreement estimate and show the run-to-run spread a single run hides."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adapt.recipe import load_recipe, validate_recipe
from diagnostics.run_spread import copy_groups, run_spread


def _recipe(runs, **method):
    return validate_recipe({"seed": 5, "method": {"runs": runs, **method}}, "test recipe")


def test_copies_are_expanded_with_consecutive_seeds():
    r = _recipe([{"name": "dann", "objective": "dann", "copies": 3}, {"name": "adabn", "adabn": True, "epochs": 0}],
                audit_run="dann-3")
    assert [(x.name, x.seed_in(r), x.copies) for x in r.method.runs] == [
        ("dann", 5, 1), ("dann-2", 6, 1), ("dann-3", 7, 1), ("adabn", 5, 1)]
    own = _recipe([{"name": "tent", "objective": "tent", "seed": 40, "copies": 2}])
    assert [(x.name, x.seed_in(own)) for x in own.method.runs] == [("tent", 40), ("tent-2", 41)]
    # the written recipe reads back to the same runs (expanded once)
    again = validate_recipe(__import__("yaml").safe_load(r.to_yaml()), "again")
    assert [(x.name, x.seed_in(again)) for x in again.method.runs] == [(x.name, x.seed_in(r)) for x in r.method.runs]


def test_a_copy_name_taken_by_another_run_is_an_error():
    with pytest.raises(Exception, match="dann-2"):
        _recipe([{"name": "dann", "objective": "dann", "copies": 2}, {"name": "dann-2", "adabn": True, "epochs": 0}])


def test_copy_groups_are_runs_equal_but_for_name_and_seed():
    configs = {"a": {"name": "a", "seed": None, "objective": "dann", "lr": 0.1},
               "a-2": {"name": "a-2", "seed": 6, "objective": "dann", "lr": 0.1},
               "b": {"name": "b", "seed": None, "objective": "dann", "lr": 0.2},
               "c": {"name": "c", "seed": 9, "objective": "tent", "lr": 0.1}}
    assert copy_groups(configs) == [["a", "a-2"]]


def test_run_spread_known_answer():
    preds = {"x": np.array([0, 1, 1, 0]), "y": np.array([0, 1, 0, 0]), "z": np.array([1, 1, 0, 0])}
    s = run_spread(["x", "y", "z"], preds, {"x": 0.7, "y": 0.6, "z": 0.65}, {"x": 0.75, "y": None, "z": 0.5})
    # pairs: x-y 1/4, x-z 2/4, y-z 1/4
    assert s["disagreement"] == pytest.approx({"mean": (0.25 + 0.5 + 0.25) / 3, "max": 0.5})
    assert s["estimated"] == {"min": 0.6, "max": 0.7}
    assert "true" not in s  # one copy's true accuracy unknown: no range claimed


RECIPE = """
name: copies
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 240}
  target: {kind: phantom-cxr, site: B, n: 240}
  image_size: 32
train: {epochs: 1, batch_size: 32, device: cpu, patience: null}
method:
  runs:
    - {name: adabn, adabn: true, epochs: 0}
    - {name: dann, objective: dann, adabn: true, epochs: 1, copies: 2}
diagnostics: {enabled: false}
output: {dir: OUT}
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_a_run_with_copies_trains_each_and_reports_their_spread(tmp_path):
    import torch

    from domaingap.pipeline import run_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.replace("OUT", str(tmp_path / "runs")))
    summary = run_recipe(load_recipe(path), progress=False)
    a, b = summary.runs["dann"].model.state_dict(), summary.runs["dann-2"].model.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # another seed: other weights
    dep = json.loads((summary.run_dir / "metrics.json").read_text())["deployment"]
    (group,) = dep["copies"]
    assert group["runs"] == ["dann", "dann-2"] and group["seeds"] == [0, 1]
    acc = {n: summary.runs[n].metrics["target_test"]["accuracy"] for n in group["runs"]}
    assert group["true"] == pytest.approx({"min": min(acc.values()), "max": max(acc.values())})
    # the disagreement is that of the two copies' predictions on the ranked target images
    feats = summary.deployment.ranked_features
    d = float(np.mean(feats["dann"].probs.argmax(1) != feats["dann-2"].probs.argmax(1)))
    assert group["disagreement"]["mean"] == pytest.approx(d)
    assert len(dep["ranking"]) == 4  # source model, adabn, two copies: agreement decides
    assert dep["estimator"] == "agreement"
    # from Python: the stage the run deployed, and its model
    from domaingap.experiment import load_run

    again = load_run(summary.run_dir)
    deployed = summary.deployment.name
    assert again.deployed == ("source" if deployed == "source-only" else deployed)
    assert again.model(again.deployed) is not None
