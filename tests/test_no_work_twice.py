"""``adapt-run`` does no work twice (issue 20): one BatchNorm re-estimation per model state
and domain, the chain's layer order learnt from one image, the deployed model's
source-statistics copy made once (evaluation and audit), and its held-out target features
extracted once (drift reference and audit). Counted with spies on a small run (phantom,
32 px, a few batches); each count failed on the code before the change."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch

import adapt.methods.adabn as adabn_mod
import adapt.pipeline as pipeline_mod
import adapt.runs as runs_mod
import adapt.train as train_mod
import diagnostics.drift as drift_mod
import diagnostics.features as features_mod
import diagnostics.run_audit as audit_mod
from adapt.models import build_model
from adapt.recipe import validate_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_EPOCHS = 2


def _recipe(root) -> dict:
    return {
        "name": "twice", "seed": 0,
        "data": {"source": {"kind": "phantom-cxr", "site": "A", "n": 160},
                 "target": {"kind": "phantom-cxr", "site": "B", "n": 160}, "image_size": 32},
        "model": {"arch": "small_cnn"},
        "train": {"epochs": 1, "batch_size": 32, "device": "cpu", "patience": None, "threads": 1},
        "method": {"selection": "im", "runs": [
            {"name": "hist", "objective": "source_only", "style": "histogram", "adabn": True,
             "epochs": RUN_EPOCHS}]},
        "diagnostics": {"enabled": True, "permutations": 20, "max_samples": 200, "attribution_samples": 10,
                        "attribution_steps": 2, "umap": False},
        "output": {"dir": str(root / "runs")},
    }


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """Run the recipe with spies on every BatchNorm re-estimation, every source-statistics
    copy and every held-out target feature extraction; return (summary, domains, spies)."""
    root = tmp_path_factory.mktemp("twice")
    mp = pytest.MonkeyPatch()
    calls: dict[str, list] = {"adabn": [], "order": [], "on_source": [], "features": []}
    domains_seen = []

    real_adabn, real_order = adabn_mod.adabn, adabn_mod._forward_order
    real_on_source, real_load = runs_mod.deployed_on_source, pipeline_mod.load_domains
    real_extract = features_mod.extract_features

    def adabn_spy(model, data, *a, **kw):
        calls["adabn"].append(getattr(data, "dataset", data))
        return real_adabn(model, data, *a, **kw)

    def order_spy(model, layers, x):
        calls["order"].append(x.shape[0])
        return real_order(model, layers, x)

    def on_source_spy(model, domains, device):
        calls["on_source"].append(model)
        return real_on_source(model, domains, device)

    def extract_spy(dataset, model=None, *a, **kw):
        calls["features"].append((dataset, model))
        return real_extract(dataset, model, *a, **kw)

    def load_spy(recipe):
        domains_seen.append(real_load(recipe))
        return domains_seen[-1]

    for mod in (adabn_mod, train_mod, runs_mod):  # every module that calls adabn by name
        mp.setattr(mod, "adabn", adabn_spy)
    mp.setattr(adabn_mod, "_forward_order", order_spy)
    for mod in (runs_mod, pipeline_mod, audit_mod):
        mp.setattr(mod, "deployed_on_source", on_source_spy)
    # the audit imports extract_features late, from diagnostics.features
    for mod in (features_mod, drift_mod, pipeline_mod):
        mp.setattr(mod, "extract_features", extract_spy, raising=False)
    mp.setattr(pipeline_mod, "load_domains", load_spy)
    try:
        summary = pipeline_mod.run_recipe(validate_recipe(_recipe(root)), progress=False)
    finally:
        mp.undo()
    return summary, domains_seen[0], calls


def test_the_source_statistics_are_estimated_once_per_epoch(counted):
    # Each epoch of the AdaBN run: precise BN re-estimates the source statistics; its
    # scoring reuses them (same images, all layers) instead of estimating them again.
    summary, domains, calls = counted
    src_train = domains.source_split["train"]
    on_source_train = sum(1 for data in calls["adabn"] if data is src_train)
    source_epochs = 1
    # source stage: precise BN per epoch; the run: precise BN per epoch; then one
    # deployed_on_source for the finished run (its evaluation, reused by the audit)
    assert on_source_train == source_epochs + RUN_EPOCHS + 1, on_source_train
    # the target statistics: one per epoch (scoring the deployed form) + the final AdaBN
    tgt_train = domains.target_split["train"]
    assert sum(1 for data in calls["adabn"] if data is tgt_train) == RUN_EPOCHS + 1
    # and the selection still logs the source-validation accuracy as deployed on the source
    sel = summary.runs["hist"].selection
    assert all("source_val_accuracy" in e for e in sel["epochs"]) and len(sel["epochs"]) == RUN_EPOCHS


def test_the_deployed_models_source_copy_is_made_once(counted):
    summary, _, calls = counted
    hist = summary.runs["hist"]
    assert [m is hist.model for m in calls["on_source"]] == [True]
    assert hist.on_source is not None
    assert (summary.run_dir / "audit.json").is_file()


def test_held_out_target_features_of_the_deployed_model_are_extracted_once(counted):
    summary, domains, calls = counted
    deployed = summary.runs["hist"].model
    same = [1 for data, model in calls["features"] if data is domains.target_eval and model is deployed]
    assert len(same) == 1, len(same)
    assert (summary.run_dir / "drift_reference.npz").is_file()


def test_layer_order_is_learnt_from_one_image(counted):
    _, _, calls = counted
    assert calls["order"] and set(calls["order"]) == {1}, Counter(calls["order"])


def test_reused_source_statistics_equal_a_fresh_estimate():
    # What the scoring reuses is what it used to compute, bit for bit: precise BN on the
    # whole training set against AdaBN on it (adabn_on, as deployed on the source).
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1)
    x = torch.rand(600, 1, 32, 32)
    data = TensorDataset(x, torch.zeros(600, dtype=torch.long))
    model.train()
    model(x[:64])
    assert train_mod.precise_bn_covers(model, data)
    train_mod._precise_bn(model, data, seed=3, device=torch.device("cpu"))
    fresh = runs_mod.adabn_on(copy.deepcopy(model), data, torch.device("cpu"))
    for a, b in zip(adabn_mod.batchnorm_layers(model), adabn_mod.batchnorm_layers(fresh)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    # a sample (more images than precise BN takes) or a frozen layer: not covered
    big = TensorDataset(torch.rand(train_mod.PRECISE_BN_IMAGES + 1, 1, 8, 8), torch.zeros(train_mod.PRECISE_BN_IMAGES + 1, dtype=torch.long))
    assert not train_mod.precise_bn_covers(model, big)
    for p in adabn_mod.batchnorm_layers(model)[0].parameters():
        p.requires_grad_(False)
    assert not train_mod.precise_bn_covers(model, data)
