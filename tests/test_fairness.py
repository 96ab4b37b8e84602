"""Fairness objectives, per-group metrics and the guard (issue 24, docs/fairness.md).

Known answers: group DRO's online update is Sagawa et al.'s Algorithm 1, computed by hand;
the parity penalties are the gaps between groups' mean predicted probabilities; fairlearn's
per-group report matches hand counts; the guard's threshold is max_drop + z SE of a
difference of binomial proportions. End to end (tiny phantom): the guard trips on a run
built to degrade (DANN at weight 30, lr 0.3: it wrecks the source model) and rolls back to
the source model's exact weights, recording metric, group and epoch in metrics.json; a run
with group DRO and a guard, killed and resumed, ends bit-identical to the straight run;
bad fairness inputs stop with one error line and exit 2. The quickstart with a guard added
does not trip (tests/test_fairness_quickstart.py).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from adapt.data.phantom import make_phantom, write_phantom
from adapt.errors import UserError
from adapt.fairness import FairnessLoss, parity_gap
from adapt.fairness_config import FairnessConfig
from adapt.group_metrics import group_report
from adapt.guard import drop_threshold
from adapt.recipe import load_recipe
from domaingap.adapt_run import main as adapt_main
from domaingap.pipeline import run_recipe
from tests.test_resume import assert_same, run_with_kills, stage_facts

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- known answers


def test_group_dro_is_sagawas_online_algorithm():
    """q_g <- q_g exp(eta L_g) over (group x class) cells, renormalised; loss = sum q_g L_g;
    a cell absent from the batch has L_g = 0 (factor 1)."""
    groups = ["a", "a", "b", "b", "a", "b"]
    labels = np.array([0, 1, 0, 1, 0, 0])
    eta = 0.5
    loss_fn = FairnessLoss(FairnessConfig(objective="group_dro", group="g", step_size=eta), groups, labels, 2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.5], [1.0, -1.0], [0.0, 3.0]])
    batch = [0, 1, 2, 3, 4]
    ys = torch.as_tensor(labels[batch])
    loss_fn.set_batch(batch)
    loss = loss_fn(logits, ys)

    ce = torch.nn.functional.cross_entropy(logits, ys, reduction="none").numpy().astype(np.float64)
    cells = np.array([{"a": 0, "b": 1}[groups[i]] * 2 + labels[i] for i in batch])
    group_loss = np.array([ce[cells == c].mean() if (cells == c).any() else 0.0 for c in range(4)])
    q = np.full(4, 0.25) * np.exp(eta * group_loss)
    q /= q.sum()
    assert np.allclose(loss_fn.q.numpy(), q)
    assert float(loss) == pytest.approx(float(group_loss @ q), rel=1e-6)
    # the worst cell (b / normal: logits 0.5, 0.5 -> CE log 2 ... vs a / normal's two) gains weight
    assert loss_fn.q.argmax().item() == int(np.argmax(group_loss))
    # carried through a checkpoint: a new loss resumes with the same q
    again = FairnessLoss(loss_fn.cfg, groups, labels, 2)
    again.start({"fairness": loss_fn.state_dict()})
    assert torch.equal(again.q, loss_fn.q)


def test_parity_penalties_are_the_gaps_between_group_means():
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6]])
    group = torch.tensor([0, 0, 1, 1])
    # group means: (0.8, 0.2) vs (0.3, 0.7): the gap is 0.5
    assert float(parity_gap(probs, group)) == pytest.approx(0.5)
    assert float(parity_gap(probs, torch.zeros(4, dtype=torch.long))) == 0.0
    # equalized odds: per true class; DP penalty added with its weight to the mean CE
    cfg = FairnessConfig(objective="demographic_parity", group="g", weight=2.0)
    fl = FairnessLoss(cfg, ["a", "a", "b", "b"], np.array([0, 1, 0, 1]), 2)
    fl.set_batch([0, 1, 2, 3])
    logits = probs.log()
    ys = torch.tensor([0, 1, 0, 1])
    ce = torch.nn.functional.cross_entropy(logits, ys)
    assert float(fl(logits, ys)) == pytest.approx(float(ce) + 2 * 0.5, rel=1e-5)
    eo = FairnessLoss(FairnessConfig(objective="equalized_odds", group="g"), ["a", "a", "b", "b"],
                      np.array([0, 1, 0, 1]), 2)
    eo.set_batch([0, 1, 2, 3])
    # class 0: (0.9, 0.1) vs (0.2, 0.8) -> 0.7; class 1: (0.7, 0.3) vs (0.4, 0.6) -> 0.3; max 0.7
    assert float(eo(logits, ys)) == pytest.approx(float(ce) + 0.7, rel=1e-5)


def test_group_report_matches_hand_counts():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    p = np.array([0, 1, 1, 1, 0, 0, 0, 1])
    g = ["a"] * 4 + ["b"] * 4
    rep = group_report(y, p, g, ["normal", "opacity"], "site")
    assert rep.per_group == {"a": {"accuracy": 0.75, "n": 4}, "b": {"accuracy": 0.75, "n": 4}}
    assert rep.worst_cell == "a / normal" and rep.worst_group_accuracy == 0.5 and rep.worst_cell_n == 2
    # a: TPR 1, FPR 1/2; b: TPR 1/2, FPR 0 -> both gaps 1/2; positive rates 3/4 vs 1/4
    assert rep.eo_difference == pytest.approx(0.5) and rep.dp_difference == pytest.approx(0.5)
    assert group_report(y, p, ["a"] * 8, ["n", "o"], "site").eo_difference is None


def test_guard_threshold_is_max_drop_plus_z_binomial_standard_errors():
    thr, se = drop_threshold(0.02, 2.0, 0.95, 90)
    pt = (0.95 * 90 + 2) / 94
    assert se == pytest.approx(math.sqrt(2 * pt * (1 - pt) / 90))
    assert thr == pytest.approx(0.02 + 2 * se)
    # a reference of 100 % still carries noise; z = 0 is the plain max_drop
    assert drop_threshold(0.02, 2.0, 1.0, 30)[1] > 0
    assert drop_threshold(0.02, 0.0, 0.9, 100)[0] == pytest.approx(0.02)


def test_planted_group_leaves_the_phantom_unchanged_and_contradicts_the_label_in_minority_share():
    plain = make_phantom("A", 400, seed=1)
    planted = make_phantom("A", 400, seed=1, minority=0.1)
    portable = np.array([s == "portable" for s in planted.scanners])
    assert plain.scanners is None
    assert torch.equal(plain.images[~portable], planted.images[~portable])
    assert not torch.equal(plain.images[portable], planted.images[portable])
    contradicts = portable != (planted.labels == 1)
    assert 0.05 < contradicts.mean() < 0.15
    with pytest.raises(UserError, match="minority"):
        make_phantom("A", 10, minority=0.5)


# ----------------------------------------------------------------------------- end to end

TINY = {
    "name": "t",
    "seed": 1,
    # a large minority, so that every (scanner x class) cell of the validation split has ~13 images
    "data": {"source": {"kind": "phantom-cxr", "site": "A", "n": 300, "minority": 0.3},
             "target": {"kind": "phantom-cxr", "site": "B", "n": 60, "minority": 0.3},
             "image_size": 32, "split": {"train": 0.5, "val": 0.3, "test": 0.2}},
    "train": {"epochs": 3, "batch_size": 32, "lr": 0.003, "device": "cpu", "threads": 1, "patience": None},
    "method": {"runs": []},
    "diagnostics": {"enabled": False},
}


def write_recipe(tmp, name, patch):
    data = json.loads(json.dumps(TINY))
    for section, values in patch.items():
        data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
    data["output"] = {"dir": str(tmp), "name": name}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_guard_rolls_back_a_run_built_to_degrade(tmp_path):
    """DANN at weight 30 and lr 0.3 wrecks the source model in its first epoch: the guard
    (reference: the source model, "epoch 0") trips at epoch 1, names the group, and the
    run ends with the source model's weights; metrics.json records it."""
    guard = {"metric": "worst_group_accuracy", "group": "scanner", "max_drop": 0.02, "action": "rollback"}
    path = write_recipe(tmp_path, "hurt", {
        "train": {**TINY["train"], "guard": guard},
        "method": {"runs": [{"name": "hurt", "objective": "dann", "dann": {"weight": 30.0}, "lr": 0.3,
                             "epochs": 3}], "audit_run": "hurt"},
        "diagnostics": {"enabled": True, "permutations": 20, "max_samples": 40, "attribution": False,
                        "umap": False}})
    summary = run_recipe(load_recipe(path), progress=False)
    metrics = json.loads((tmp_path / "hurt" / "metrics.json").read_text())
    tripped = metrics["runs"]["hurt"]["fit"]["guard"]["tripped"]
    assert tripped is not None and tripped["metric"] == "worst_group_accuracy"
    assert tripped["epoch"] == 1 and tripped["reference_epoch"] == 0 and tripped["action"] == "rollback"
    assert " / " in tripped["group"] and tripped["drop"] > tripped["threshold"]
    assert metrics["runs"]["hurt"]["fit"]["epochs_run"] == 1
    # the source model's weights (its BatchNorm statistics then re-estimated on the target,
    # as every DANN run is deployed)
    src, hurt = dict(summary.source.model.named_parameters()), dict(summary.runs["hurt"].model.named_parameters())
    assert [k for k in src if not torch.equal(src[k], hurt[k])] == []
    # the source stage (a fresh model: epoch 0 is a random one) was not stopped
    assert metrics["source"]["fit"]["guard"]["tripped"] is None
    assert metrics["source"]["metrics"]["groups"]["column"] == "scanner"
    # the audit shows the guard's record and the per-group metrics
    audit = json.loads((tmp_path / "hurt" / "audit.json").read_text())
    assert audit["after"]["metrics"]["guard"]["tripped"] == tripped
    assert audit["after"]["metrics"]["groups"]["target_test"]["worst_cell"]
    html = (tmp_path / "hurt" / "audit.html").read_text()
    assert "Fairness and guard" in html and f"tripped at epoch 1 on group {tripped['group']}" in html


def test_group_dro_with_a_guard_resumes_exactly(tmp_path, monkeypatch):
    patch = {"train": {**TINY["train"], "fairness": {"objective": "group_dro", "group": "scanner",
                                                      "step_size": 0.1},
                       "guard": {"metric": "eo_difference", "group": "scanner", "action": "stop"}},
             "method": {"runs": [{"name": "dann", "objective": "dann", "epochs": 2}]}}
    straight_dir, resumed_dir = tmp_path / "a", tmp_path / "b"
    straight_dir.mkdir(), resumed_dir.mkdir()
    run_recipe(load_recipe(write_recipe(straight_dir, "r", patch)), progress=False)
    starts = run_with_kills(load_recipe(write_recipe(resumed_dir, "r", patch)), {("source", 0), ("dann", 0)},
                            monkeypatch)
    assert starts == 3
    assert_same(stage_facts(straight_dir / "r"), stage_facts(resumed_dir / "r"))
    ck = torch.load(straight_dir / "r" / "source" / "last.pt", weights_only=True)
    assert ck["state"]["fairness"]["q"] != [0.25] * 4  # group DRO's weights moved and were carried


@pytest.fixture(scope="module")
def csv_domain(tmp_path_factory):
    root = tmp_path_factory.mktemp("csv")
    write_phantom(root, "A", 40, seed=0, image_size=32)
    rows = (root / "manifest.csv").read_text().splitlines()
    sex = ["F" if i % 2 else "M" for i in range(len(rows) - 1)]
    (root / "groups.csv").write_text("\n".join([rows[0] + ",sex"] + [r + f",{s}" for r, s in zip(rows[1:], sex)]))
    lone = sex[:-1] + ["X"]
    (root / "lone.csv").write_text("\n".join([rows[0] + ",sex"] + [r + f",{s}" for r, s in zip(rows[1:], lone)]))
    return root


@pytest.mark.parametrize("source, fairness, culprit", [
    ("groups.csv:site,sex", {"objective": "group_dro", "group": "age"}, "train.fairness.group: .*no group column 'age'"),
    ("lone.csv:sex", {"objective": "equalized_odds", "group": "sex"}, "train.fairness.group: group 'X' .*one"),
    ("groups.csv:", {"objective": "demographic_parity", "group": "sex"}, "train.fairness.group: .*none"),
    ("groups.csv:sex", {"objective": "group_dro", "group": "sex", "weight": 2}, "train.fairness: weight"),
])
def test_bad_fairness_inputs_are_one_line_and_exit_2(csv_domain, tmp_path, capsys, source, fairness, culprit):
    import re

    name, cols = source.split(":")
    spec = {"kind": "csv", "path": str(csv_domain / name), "group_columns": [c for c in cols.split(",") if c]}
    path = write_recipe(tmp_path, "bad", {"data": {**TINY["data"], "source": spec,
                                                   "target": {"kind": "phantom-cxr", "site": "B", "n": 40}},
                                          "train": {**TINY["train"], "fairness": fairness}})
    assert adapt_main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(culprit, err[0]), err
    assert not (tmp_path / "bad").exists()


def test_a_guarded_per_domain_bn_run_measures_each_epoch_with_precise_bns_statistics(tmp_path, monkeypatch):
    """A DANN run (deployed on the source with source BatchNorm statistics) under a guard:
    the reference (epoch 0) is measured on a fresh source-statistics copy, each epoch after
    it on the model as precise BN has just left it (the same statistics, not estimated
    again: issue 20's "no work twice") — and each epoch's value equals a fresh estimate's."""
    import domaingap.fairness_run as fairness_run
    from adapt.guard import Guard

    estimates, checked = [], []
    real_adabn_on, real_measure = fairness_run.adabn_on, Guard.measure

    def adabn_spy(model, data, device):
        estimates.append(data)
        return real_adabn_on(model, data, device)

    def measure_spy(self, model, *prepared):
        got = real_measure(self, model, *prepared)
        prepare = prepared[0] if prepared else None
        if prepare is not None and prepare is not self.prepare:  # an epoch's shortcut
            before = len(estimates)
            fresh = real_measure(self, model, self.prepare)  # what estimating again gives
            del estimates[before:]
            checked.append((got["value"], got["group"], fresh["value"], fresh["group"]))
        return got

    monkeypatch.setattr(fairness_run, "adabn_on", adabn_spy)
    monkeypatch.setattr(Guard, "measure", measure_spy)
    guard = {"metric": "worst_group_accuracy", "group": "scanner", "max_drop": 1.0, "action": "rollback"}
    path = write_recipe(tmp_path, "g", {"train": {**TINY["train"], "epochs": 1, "guard": guard},
                                        "method": {"runs": [{"name": "dann", "objective": "dann", "epochs": 2}]}})
    run_recipe(load_recipe(path), progress=False, diagnostics=False)
    assert len(estimates) == 1  # the reference's copy; none after the two epochs
    assert len(checked) == 2 and all(a == c and b == d for a, b, c, d in checked), checked


@pytest.mark.timeout(3600)  # the whole quickstart (without its audit): minutes on a busy CPU
def test_the_quickstart_with_a_guard_does_not_trip(tmp_path):
    """recipes/xray_to_xray.yaml with a guard at max_drop 0.02 on the worst (site x class)
    cell: epoch-to-epoch noise and DANN's small cost on site A stay within max_drop + 2 SE,
    so neither the source stage nor the DANN run is stopped (the guard's record is there)."""
    guard = "train.guard={metric: worst_group_accuracy, group: site, max_drop: 0.02, action: rollback}"
    recipe = load_recipe("recipes/xray_to_xray.yaml", [guard, f"output.dir={tmp_path}", "train.device=cpu"])
    run_recipe(recipe, progress=False, diagnostics=False)
    metrics = json.loads((tmp_path / "xray_to_xray" / "metrics.json").read_text())
    fits = {"source": metrics["source"]["fit"], **{k: v["fit"] for k, v in metrics["runs"].items() if v["fit"]}}
    assert set(fits) == {"source", "dann+hist"}
    for name, fit in fits.items():
        assert fit["guard"]["metric"] == "worst_group_accuracy", name
        assert fit["guard"]["tripped"] is None, (name, fit["guard"])


def test_without_fairlearn_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "fairlearn.metrics", None)  # import fails
    path = write_recipe(tmp_path, "nofl", {"train": {**TINY["train"],
                                                     "fairness": {"objective": "group_dro", "group": "scanner"}}})
    assert adapt_main([str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "domaingap[fairness]" in err[0]


@pytest.mark.parametrize("action", ["rollback", "stop"])
def test_guard_trips_only_beyond_noise_and_acts(tmp_path, action):
    """Scripted measurements on 100 images: 0.90 (start), 0.92, 0.89 (a 3-point dip: within
    0.02 + 2 SE = 0.104), then 0.70 (trips). rollback: best.pt holds the reference epoch's
    weights; stop: the selection keeps its best epoch; the tripped epoch scores -inf."""
    from adapt.fairness_config import GuardConfig
    from adapt.guard import Guard

    guard = Guard(GuardConfig(metric="source_val_accuracy", action=action), [0] * 100, None, ["a", "b"], "cpu",
                  tmp_path)
    values = iter([0.90, 0.92, 0.89, 0.70])
    guard.measure = lambda model, prepare=None: (lambda v: {"value": v, "goodness": v, "group": "all", "n": 100})(next(values))
    net = torch.nn.Linear(2, 2)
    state = {"history": [], "best_epoch": -1}
    guard.start(state, net, net, True)
    said = []
    for epoch in range(3):
        with torch.no_grad():
            net.weight.fill_(epoch + 1.0)
        record = {"epoch": epoch + 1, "score": float(epoch)}
        score = guard.after_epoch(net, net, epoch, state, record, float(epoch), True, "t", said.append)
        state["history"].append(record)
        if epoch < 2:
            assert score == float(epoch) and state["guard"]["tripped"] is None
            state["best_epoch"] = epoch
    assert score == -math.inf
    trip = state["guard"]["tripped"]
    assert trip["epoch"] == 3 and trip["reference_epoch"] == 1 and trip["group"] == "all"
    assert trip["drop"] == pytest.approx(0.22) and trip["threshold"] == pytest.approx(drop_threshold(0.02, 2, 0.92, 100)[0])
    assert len(said) == 1 and "epoch 3" in said[0]
    if action == "rollback":
        best = torch.load(tmp_path / "best.pt", weights_only=True)["trainable"]
        assert torch.equal(best["weight"], torch.full((2, 2), 1.0)) and state["best_epoch"] == 0
    else:
        assert not (tmp_path / "best.pt").exists() and state["best_epoch"] == 1
