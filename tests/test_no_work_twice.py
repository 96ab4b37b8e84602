"""``adapt-run`` does no work twice (issues 20 and 21): one BatchNorm re-estimation per
model state and domain (the epoch's scoring reuses precise BN's source statistics), the
layer order learnt from one image, the deployed run decided once (``RunSummary.deployment``)
and read by the drift reference and the audit, the deployed model's source-statistics copy
made once (score, evaluation and audit), and each audited model run once over each domain's
held-out images (drift reference, gap statistics, group metrics and label-free estimates
share one pass). Counted by spies on the session's end-to-end run (tests/conftest.py: e2e,
recorded_run); each count failed on the code before the change."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest
import torch

import adapt.methods.adabn as adabn_mod
import domaingap.runs as runs_mod
import adapt.train as train_mod
from adapt.models import build_model

def _epochs(stage) -> int:
    return len((stage.fit or {}).get("history") or [])


@pytest.mark.slow
def test_each_model_state_gets_one_batchnorm_estimate_per_domain(e2e):
    summary, domains, calls = e2e.summary, e2e.domains, e2e.calls
    runs = summary.runs
    assert _epochs(runs["adabn"]) == 0 and _epochs(runs["hist"]) == 2 and _epochs(runs["hurt"]) >= 1
    src_train, tgt_train = domains.source_split["train"], domains.target_split["train"]
    on_source = sum(1 for data in calls["adabn"] if data is src_train)
    # the source stage: precise BN per epoch; each run that trains on the source: precise BN
    # per epoch, which its scoring reuses (was: a second estimate per epoch); every
    # per-domain-BN run (all three): one source-statistics copy of its final model, shared
    # by its score, its evaluation and the audit (was: one each), copied from the statistics
    # its last precise BN left (all three fine-tune everything on the source, the AdaBN
    # run as the source model did): no estimate of its own (was: one each)
    expected = _epochs(summary.source) + _epochs(runs["hist"]) + _epochs(runs["hurt"])
    assert on_source == expected, (on_source, expected)
    # the target side: the AdaBN runs, per epoch (scoring the deployed form); the final
    # model is the best-scored state, whose target statistics its scoring estimated (was:
    # once more at the end); the untrained AdaBN run once; the DANN run (per-domain
    # convention) likewise
    on_target = sum(1 for data in calls["adabn"] if data is tgt_train)
    assert on_target == 1 + _epochs(runs["hist"]) + _epochs(runs["hurt"]), on_target
    # and those are the statistics a fresh estimate on the target gives, bit for bit
    for name in ("hist", "hurt"):
        fresh = runs_mod.adabn_on(copy.deepcopy(runs[name].model), tgt_train, torch.device("cpu"))
        for a, b in zip(adabn_mod.batchnorm_layers(runs[name].model), adabn_mod.batchnorm_layers(fresh)):
            assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var), name
    # and the scores are still logged as deployed on the source, every epoch
    for name in ("hist", "hurt"):
        epochs = runs[name].selection["epochs"]
        assert len(epochs) == _epochs(runs[name]) and all("source_val_accuracy" in e for e in epochs)


@pytest.mark.slow
def test_the_deployed_models_source_copy_is_made_once(e2e):
    summary, calls = e2e.summary, e2e.calls
    made = Counter(id(m) for m in calls["on_source"])
    for name in ("adabn", "hist", "hurt"):
        stage = summary.runs[name]
        # copied from precise BN's statistics, not estimated again (was: one estimate)
        assert made[id(stage.model)] == 0, name
        assert stage.on_source is not None
        # and it is the estimate, bit for bit: a fresh source-statistics copy of the final model
        fresh = runs_mod.deployed_on_source(stage.model, e2e.domains, torch.device("cpu"))
        for a, b in zip(adabn_mod.batchnorm_layers(stage.on_source), adabn_mod.batchnorm_layers(fresh)):
            assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var), name
        for p, q in zip(stage.on_source.parameters(), stage.model.parameters()):
            assert torch.equal(p, q), name
    assert (summary.run_dir / "audit.json").is_file()  # the audit ran, on the kept copy


@pytest.mark.slow
def test_held_out_target_features_of_the_deployed_model_are_extracted_once(e2e):
    summary, domains, calls = e2e.summary, e2e.domains, e2e.calls
    deployed = summary.runs["hist"].model  # method.audit_run: the audited, deployed run
    same = [1 for data, model in calls["features"] if data is domains.target_eval and model is deployed]
    assert len(same) == 1, len(same)
    assert (summary.run_dir / "drift_reference.npz").is_file()


@pytest.mark.slow
def test_the_deployment_is_decided_once_and_read_by_everyone(e2e):
    from diagnostics.drift import REFERENCE_FILE, load_reference

    summary, calls = e2e.summary, e2e.calls
    assert len(calls["decided"]) == 1, len(calls["decided"])  # was: twice (drift reference, audit)
    hist = summary.runs["hist"]  # method.audit_run
    dep = summary.deployment
    assert dep.run == "hist" and dep.stage is hist and dep.batchnorm == "target"
    assert dep.on_source is hist.on_source is not None  # the copy its evaluation made
    ref = load_reference(summary.run_dir / REFERENCE_FILE)
    assert ref.meta["run"] == "hist" and ref.meta["batchnorm_statistics"] == "target"
    assert ref.meta["model"] == "methods/hist/model.pt"
    audit = json.loads((summary.run_dir / "audit.json").read_text())
    assert audit["after"]["name"] == "adapted (hist)"
    rows = {r["model"]: r for r in audit["methods_table"]}
    assert "audited" in rows["hist"]["audit"] and "audited" not in (rows["adabn"].get("audit") or "")


@pytest.mark.slow
def test_each_audited_model_runs_over_the_held_out_target_once(e2e):
    # features, predictions and group metrics of the source and the deployed model on the
    # held-out target images: one pass each (was: a second one for the group metrics)
    summary, domains, calls = e2e.summary, e2e.domains, e2e.calls
    passes = Counter((id(data), id(model)) for data, model in calls["features"] + calls["predict"])
    for stage in (summary.source, summary.runs["hist"]):
        assert passes[(id(domains.target_eval), id(stage.model))] == 1, stage.name


@pytest.mark.slow
def test_layer_order_is_learnt_from_one_image(e2e):
    order = e2e.calls["order"]
    assert order and set(order) == {1}, Counter(order)


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
    n = train_mod.PRECISE_BN_IMAGES + 1
    big = TensorDataset(torch.rand(n, 1, 8, 8), torch.zeros(n, dtype=torch.long))
    assert not train_mod.precise_bn_covers(model, big)
    for p in adabn_mod.batchnorm_layers(model)[0].parameters():
        p.requires_grad_(False)
    assert not train_mod.precise_bn_covers(model, data)
