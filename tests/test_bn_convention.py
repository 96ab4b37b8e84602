"""Issue 12, item 2: an alignment objective is scored, selected and evaluated with the
BatchNorm statistics it trained with (per-domain: the target's on the target, the
source's on the source)."""

from __future__ import annotations

import copy

import pytest
import torch

from adapt.evaluate import evaluate, predict
from adapt.methods.base import batchnorm_convention
from adapt.methods.dann import DANN
from adapt.methods.source_only import SourceOnly
from adapt.recipe import load_recipe
from adapt.selection import label_free_scores

RECIPE = """
name: bn
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 240}
  target: {kind: phantom-cxr, site: B, n: 240}
  image_size: 32
train: {epochs: 2, batch_size: 32, lr: 0.002, device: cpu, patience: null, threads: 1}
method:
  selection: im
  runs:
    - {name: dann, objective: dann, epochs: 2}
diagnostics: {enabled: false}
"""


def test_conventions_declared_by_the_objectives():
    assert batchnorm_convention(DANN(8)) == "per_domain"
    assert batchnorm_convention(SourceOnly()) == "source"
    assert batchnorm_convention(None) == "source"


@pytest.mark.slow
def test_dann_target_is_scored_selected_and_evaluated_with_target_statistics(tmp_path):
    from adapt.methods.adabn import adabn, batchnorm_layers
    from domaingap.pipeline import load_domains, run_recipe
    from domaingap.runs import deployed_on_source

    path = tmp_path / "bn.yaml"
    path.write_text(RECIPE)
    recipe = load_recipe(path, [f"output.dir={tmp_path / 'runs'}"])
    summary = run_recipe(recipe, progress=False, diagnostics=False)
    domains = load_domains(recipe)
    stage = summary.runs["dann"]
    model = stage.model

    # deployed on the target: every BatchNorm holds the target training images' statistics
    ref = copy.deepcopy(model)
    adabn(ref, torch.utils.data.DataLoader(domains.target_split["train"], batch_size=64), "cpu")
    for a, b in zip(batchnorm_layers(model), batchnorm_layers(ref)):
        torch.testing.assert_close(a.running_mean, b.running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.running_var, b.running_var, atol=1e-5, rtol=1e-5)

    # evaluated with them: the reported target accuracy is this model's
    target_acc = evaluate(model, domains.target_split["test"], domains.classes, "cpu")["accuracy"]
    assert stage.metrics["target_test"]["accuracy"] == pytest.approx(target_acc, abs=1e-12)

    # scored and selected with them: the selected epoch's logged label-free score and
    # per-epoch target accuracy are those of the deployed model
    sel = stage.selection
    chosen = next(e for e in sel["epochs"] if e["epoch"] == sel["selected_epoch"])
    im = label_free_scores(predict(model, domains.target_split["train"], "cpu")["probs"])["im"]
    assert chosen["im"] == pytest.approx(im, abs=1e-6)
    assert chosen["oracle_target_accuracy"] == pytest.approx(target_acc, abs=1e-12)

    # the source is evaluated with the source's statistics
    on_source = deployed_on_source(model, domains, torch.device("cpu"))
    src_acc = evaluate(on_source, domains.source_split["test"], domains.classes, "cpu")["accuracy"]
    assert stage.metrics["source_test"]["accuracy"] == pytest.approx(src_acc, abs=1e-12)
