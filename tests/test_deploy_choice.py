"""Which model a run deploys without target labels (``method.deploy``).

The truth is known by construction: three classes, each lighting one band of an 8×8
image under noise; the models read the bands through fixed linear heads — one reads every
pixel of a band (the best), two read one or two pixels (noisier), one reads the bands
through a permutation at a large scale: confident, balanced and always wrong, which is
what information maximisation (IM) rewards and what the issue saw deployed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adapt.data.domain import DomainDataset
from adapt.recipe import validate_recipe
from adapt.selection import label_free_scores
from diagnostics.ranking import rank_by_estimate
from domaingap.runs import Domains, RunSummary, StageOutcome, decide_deployment

K, SIZE = 3, 8


class BandReader(nn.Module):
    """Logits = scale · P · (mean of the chosen pixels of each class's band)."""

    def __init__(self, pixels: slice, scale: float, permute: bool = False):
        super().__init__()
        self.pixels = pixels
        self.head = nn.Linear(K, K, bias=False)
        perm = torch.roll(torch.eye(K), 1, dims=0) if permute else torch.eye(K)
        self.head.weight.data = scale * perm

    def features(self, x: torch.Tensor) -> torch.Tensor:
        band = (SIZE * SIZE) // K
        bands = x.reshape(len(x), -1)[:, : K * band].reshape(len(x), K, band)  # [B, K, pixels of a band]
        return bands[:, :, self.pixels].mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _images(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % K
    x = 0.5 + 0.25 * torch.randn(n, 1, SIZE * SIZE, generator=g)
    band = (SIZE * SIZE) // K
    for c in range(K):
        x[y == c, 0, c * band:(c + 1) * band] += 0.3
    return x.reshape(n, 1, SIZE, SIZE).clamp(0, 1), y.numpy()


def _domain(name: str, x: torch.Tensor, labels: np.ndarray) -> DomainDataset:
    return DomainDataset(name=name, classes=[f"c{i}" for i in range(K)], labels=labels,
                         ids=[f"{name}/{i}" for i in range(len(x))], channels=1, image_size=SIZE, images=x)


MODELS = {"source-only": BandReader(slice(0, 2), 20.0), "good": BandReader(slice(0, None), 20.0),
          "noisy": BandReader(slice(2, 3), 20.0), "confident-wrong": BandReader(slice(0, None), 400.0, permute=True)}


@pytest.fixture(scope="module")
def case():
    xs, ys = _images(300, 1)
    xt, yt = _images(300, 2)
    # the truth, independent of any estimator: each model's accuracy on the target images
    with torch.no_grad():
        probs = {n: torch.softmax(m(xt), 1).numpy() for n, m in MODELS.items()}
    truth = {n: float((p.argmax(1) == yt).mean()) for n, p in probs.items()}
    target = _domain("target", xt, np.full(len(xt), -1))  # labels hidden from the tool
    source = _domain("source", xs, ys)
    domains = Domains(source, target, {"train": source}, {}, None, source_eval=source, target_eval=target)

    def stage(name):
        # the checkpoint selector's record of its chosen epoch: IM of the model's target predictions
        im = label_free_scores(probs[name])["im"]
        return StageOutcome(name, MODELS[name], {}, selection={"selected_epoch": 1, "epochs": [{"epoch": 1, "im": im}]})

    summary = RunSummary(run_dir=None, source=stage("source-only"),
                         runs={n: stage(n) for n in MODELS if n != "source-only"})
    return summary, domains, probs, truth, ys


def _recipe(**method):
    runs = [{"name": n, "objective": "source_only", "epochs": 0} for n in MODELS if n != "source-only"]
    return validate_recipe({"name": "t", "data": {"source": {"kind": "phantom-cxr", "site": "A"},
                                                  "target": {"kind": "phantom-cxr", "site": "B"}},
                            "method": {"runs": runs, **method}}, "test recipe")


def test_the_constructed_truth(case):
    _, _, probs, truth, _ = case
    assert max(truth, key=truth.get) == "good" and truth["good"] > 0.9
    assert truth["confident-wrong"] < 0.05 and truth["source-only"] < truth["good"] - 0.1
    im = {n: label_free_scores(p)["im"] for n, p in probs.items()}
    assert max(im, key=im.get) == "confident-wrong"  # what IM rewards: confident and balanced


def test_estimate_deploys_the_best_model_where_im_deploys_a_confidently_wrong_one(case):
    summary, domains, _, truth, _ = case
    cpu = torch.device("cpu")
    old = decide_deployment(summary, _recipe(deploy="selection"), domains, cpu, target_features=False)
    assert old.name == "confident-wrong" and old.rule == "selection"  # the rule before: IM's first run
    new = decide_deployment(summary, _recipe(), domains, cpu, target_features=False)  # the default
    assert new.rule == "estimate" and new.name == "good" == new.audited
    assert new.ranking.estimator == "agreement"  # four models: the median agreement
    assert new.ranking.order[-1] == "confident-wrong"
    # what is recorded: the deployed model, the rule, every model's estimate
    d = new.to_dict()
    assert d["model"] == "good" and [r["model"] for r in d["ranking"]][0] == "good"
    # method.audit_run still decides when the recipe names it
    named = decide_deployment(summary, _recipe(audit_run="noisy"), domains, cpu, target_features=False)
    assert named.name == "noisy" and named.rule == "audit_run" and named.audited == "noisy"
    assert named.ranking.order[0] == "good"  # still shown: the methods table's ★ recommended


def test_reverse_validation_deploys_the_best_and_sees_the_confidently_wrong(case):
    """``deploy: reverse_validation``: a small network learns the target as each model
    labels it and is tested on the labelled source. The confidently wrong model's labels are
    a permutation of the truth: the network learns the permutation and the source
    contradicts it — the case COT reads as right (below)."""
    summary, domains, _, truth, _ = case
    dep = decide_deployment(summary, _recipe(deploy="reverse_validation"), domains, torch.device("cpu"),
                            target_features=False)
    assert dep.rule == "reverse_validation" and dep.name == "good" == max(truth, key=truth.get)
    rv = dep.ranking.reverse_validation
    assert dep.ranking.order[-1] == "confident-wrong" and rv["confident-wrong"] < 0.1
    assert rv["good"] > 0.9
    d = dep.to_dict()
    assert d["rule"] == "reverse_validation" and d["ranking"][0]["reverse_validation"] == pytest.approx(rv["good"], abs=1e-6)
    assert "agreement" in d["ranking"][0]  # the estimates stay beside it (the audit shows them)


def test_reverse_validation_reorders_and_keeps_the_label_shift_rule(case):
    from diagnostics.ranking import by_reverse_validation

    _, _, probs, _, ys = case
    three = {"source-only": probs["source-only"], "good": probs["good"], "noisy": probs["noisy"]}
    r = rank_by_estimate(three, ys)
    tied = by_reverse_validation(r, {n: 0.5 for n in three})
    assert tied.order == r.order  # ties: the estimate's order
    assert by_reverse_validation(r, {"source-only": 0.2, "good": 0.9, "noisy": 0.6}).order == [
        "good", "noisy", "source-only"]
    shifted = rank_by_estimate(three, ys, source_reading={"verdict": "label_shift", "reason": "r"})
    kept = by_reverse_validation(shifted, {"source-only": 0.2, "good": 0.9, "noisy": 0.6})
    assert kept.order[0] == "source-only" and kept.order[1:] == ["good", "noisy"]
    with pytest.raises(ValueError, match="no score for noisy"):
        by_reverse_validation(r, {"source-only": 0.2, "good": 0.9})


def test_the_source_model_is_kept_when_no_run_is_estimated_higher(case):
    summary, domains, probs, _, ys = case
    same = {"source-only": probs["source-only"], "run": probs["source-only"].copy()}
    r = rank_by_estimate(same, ys)
    assert r.order == ["source-only", "run"]  # a tie: a run must be estimated *higher*
    collapsed = np.zeros_like(probs["good"])
    collapsed[:, 0] = 1.0  # every image called class 0: a third of them right
    worse = {"source-only": probs["good"], "collapsed": collapsed, "noisy": probs["noisy"]}
    r = rank_by_estimate(worse, ys)
    assert r.order[0] == "source-only" and r.estimator == "cot"  # three models: COT
    assert r.order[-1] == "collapsed"
    # COT's blind spot (docs/labelfree.md): it compares the predictions with the source
    # label mix only, so a confidently wrong model with balanced predictions reads as right
    blind = rank_by_estimate({"source-only": probs["good"], "wrong": probs["confident-wrong"],
                              "noisy": probs["noisy"]}, ys)
    assert blind.order[0] == "wrong"
    wrecked = BandReader(slice(0, None), 0.0)
    wrecked.head = nn.Linear(K, K)
    nn.init.zeros_(wrecked.head.weight)
    wrecked.head.bias.data = torch.tensor([8.0, 0.0, 0.0])  # a run that collapsed onto class 0
    one_run = RunSummary(run_dir=None, source=StageOutcome("source-only", MODELS["good"], {}),
                         runs={"collapsed": StageOutcome("collapsed", wrecked, {})})
    recipe = validate_recipe({"name": "t", "data": {"source": {"kind": "phantom-cxr", "site": "A"},
                                                    "target": {"kind": "phantom-cxr", "site": "B"}},
                              "method": {"runs": [{"name": "collapsed", "objective": "source_only",
                                                   "epochs": 0}]}}, "test recipe")
    dep = decide_deployment(one_run, recipe, domains, torch.device("cpu"), target_features=False)
    # the source model is deployed; the audit still compares the run with it
    assert dep.name == "source-only" and dep.run is None and dep.audited == "collapsed"
    assert dep.ranking.estimator == "cot"  # two models: COT


@pytest.mark.parametrize("n_models", [2, 3, 4, 7])
def test_the_ranking_reads_the_estimator_the_audit_shows(case, n_models):
    from diagnostics.labelfree_estimates import accuracy_estimates

    _, _, probs, _, ys = case
    names = list(probs)
    p = {f"m{i}": probs[names[i % len(names)]] for i in range(n_models)}
    r = rank_by_estimate(p, ys)
    preds = [q.argmax(1) for q in p.values()]
    shown = accuracy_estimates(p["m0"], p["m0"], ys, preds[1:])
    assert r.estimator == shown["default"]


def test_the_report_says_which_model_is_deployed_and_the_spread_of_copies():
    from diagnostics.audit import build_audit
    from diagnostics.audit.contract import Audit
    from diagnostics.report import render_html

    dep = {"model": "source-only", "rule": "estimate", "audited": "dann", "estimator": "cot",
           "corroborating": "agreement", "images": 120,
           "ranking": [{"model": "source-only", "rank": 1, "cot": 0.8}, {"model": "dann", "rank": 2, "cot": 0.7},
                       {"model": "dann-2", "rank": 3, "cot": 0.6}],
           "copies": [{"runs": ["dann", "dann-2"], "seeds": [0, 1], "estimator": "cot",
                       "estimated": {"min": 0.6, "max": 0.7}, "true": {"min": 0.475, "max": 0.718},
                       "disagreement": {"mean": 0.21, "max": 0.21}}]}
    stage = {"name": "source-only", "metrics": {}}
    audit = build_audit(stage, {"name": "adapted (dann)", "metrics": {}}, classes=["a", "b"],
                        methods_table=[{"model": "source-only"}, {"model": "dann"}], deployment=dep)
    again = Audit.from_dict(audit.to_dict())  # audit.json keeps it: `diagnose audit` re-renders it
    assert again.deployment == dep
    html = render_html(again)
    assert "Deployed: source-only — the highest estimated target accuracy of the 3 models (cot" in html
    assert "the audit compares the best-ranked run, dann." in html
    from diagnostics.report.deployment_text import deployment_text

    rv = {**dep, "rule": "reverse_validation", "model": "dann", "audited": "dann",
          "ranking": [{"model": "dann", "rank": 1, "cot": 0.7, "reverse_validation": 0.93},
                      {"model": "source-only", "rank": 2, "cot": 0.8, "reverse_validation": 0.61}], "copies": []}
    assert deployment_text(rv) == ("Deployed: dann — the highest reverse-validation score of the 2 models: a small "
                                   "network that learns the 120 held-out target images as dann labels them is right "
                                   "on 93 % of the labelled source images (ties broken by cot).")
    assert "Run to run — dann, dann-2 (seeds 0, 1): estimated 60–70 % (cot); measured 47.5–71.8 %" in html
    assert "disagree on 21 % of the held-out target images" in html


def test_the_usability_verdict_judges_the_model_that_is_deployed():
    from diagnostics.audit import compute_verdicts

    def stage(name, acc):
        return {"name": name, "metrics": {"target_test": {"accuracy": acc, "per_class_recall": {"a": acc, "b": acc}}}}

    before, after = stage("source-only", 0.5), stage("adapted (dann)", 0.95)
    verdicts = {v.name: v for v in compute_verdicts(before, after)}
    assert "usability" not in verdicts  # the adapted model is deployed and usable
    kept = {v.name: v for v in compute_verdicts(before, after, deployed_before=True)}
    assert kept["usability"].title == "Still unusable on the target"
    assert kept["usability"].summary.startswith("The source model, deployed")


def test_without_source_labels_two_models_are_not_ranked(case):
    # a source-free recipe with one run: only agreement applies, and two models agree with
    # each other equally — no ranking (the run is deployed by the selector rule instead of
    # the source model winning a tie that carries no information)
    _, _, probs, _, ys = case
    assert rank_by_estimate({"source-only": probs["noisy"], "run": probs["good"]}, None) is None
    three = rank_by_estimate({"source-only": probs["noisy"], "run": probs["good"], "b": probs["source-only"]}, None)
    assert three is not None and three.estimator == "agreement"


# ------------------------------------------------------------ a pure label shift
class Rebalanced(BandReader):
    """The full-band reader with a bias against class 0: its predictions are pulled back
    towards the source's even class mix — what aligning the marginals does under a label
    shift."""

    def __init__(self):
        super().__init__(slice(0, None), 20.0)
        self.head.bias = nn.Parameter(torch.tensor([-4.0, 2.0, 2.0]))


def _mixed_images(n: int, seed: int, mix: list[float]) -> tuple[torch.Tensor, np.ndarray]:
    """:func:`_images` with the classes drawn from ``mix``: the same images of each class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.multinomial(torch.tensor(mix), n, replacement=True, generator=g)
    x = 0.5 + 0.25 * torch.randn(n, 1, SIZE * SIZE, generator=g)
    band = (SIZE * SIZE) // K
    for c in range(K):
        x[y == c, 0, c * band:(c + 1) * band] += 0.3
    return x.reshape(n, 1, SIZE, SIZE).clamp(0, 1), y.numpy()


def test_under_a_pure_label_shift_the_source_model_is_deployed_where_the_estimates_prefer_a_rebalanced_run():
    """Known truth: the target holds the source's images of each class in another mix
    (70 / 20 / 10 % instead of a third each). The rebalanced run is less accurate there
    (measured below with the hidden labels), yet COT — which compares predictions with the
    source label mix — rates it higher. The audit's label-free reading of the source model
    says "label_shift", so the source model is deployed, and the report says why."""
    from diagnostics.report.deployment_text import deployment_text

    xs, ys = _images(300, 1)
    xt, yt = _mixed_images(300, 2, [0.7, 0.2, 0.1])
    source, target = _domain("source", xs, ys), _domain("target", xt, np.full(len(xt), -1))
    domains = Domains(source, target, {"train": source}, {}, None, source_eval=source, target_eval=target)
    models = {"source-only": BandReader(slice(0, None), 20.0), "rebalanced": Rebalanced()}
    with torch.no_grad():
        probs = {n: torch.softmax(m(xt), 1).numpy() for n, m in models.items()}
    truth = {n: float((p.argmax(1) == yt).mean()) for n, p in probs.items()}
    assert truth["source-only"] > truth["rebalanced"] + 0.05  # the truth, from the hidden labels
    assert rank_by_estimate(probs, ys).order[0] == "rebalanced"  # what the estimate alone deploys
    summary = RunSummary(run_dir=None, source=StageOutcome("source-only", models["source-only"], {}),
                         runs={"rebalanced": StageOutcome("rebalanced", models["rebalanced"], {})})
    recipe = validate_recipe({"name": "t", "data": {"source": {"kind": "phantom-cxr", "site": "A"},
                                                    "target": {"kind": "phantom-cxr", "site": "B"}},
                              "method": {"runs": [{"name": "rebalanced", "objective": "source_only", "epochs": 0}]}},
                             "test recipe")
    dep = decide_deployment(summary, recipe, domains, torch.device("cpu"), target_features=False)
    assert dep.ranking.source_reading["verdict"] == "label_shift", dep.ranking.source_reading
    assert dep.name == "source-only" and dep.audited == "rebalanced"
    # the reading is kept for the audit's before stage, with the features it read
    assert dep.source_features is not None and dep.source_reading["verdict"] == "label_shift"
    record = dep.to_dict()
    assert record["source_reading"]["verdict"] == "label_shift"
    assert "pure label shift" in deployment_text(record)


def test_without_a_label_shift_the_reading_changes_nothing(case):
    """The four-model case (the same class mix on both domains): the reading is not a label
    shift and the ranking is the estimate's alone."""
    summary, domains, _, _, _ = case
    dep = decide_deployment(summary, _recipe(), domains, torch.device("cpu"), target_features=False)
    assert dep.ranking.source_reading["verdict"] != "label_shift"
    assert dep.name == "good"


def test_without_labelled_source_images_the_ranking_stays_by_estimate(case):
    from domaingap.runs import reverse_validation_scores

    summary, domains, _, _, _ = case
    no_source = Domains(None, domains.target, {}, {}, None, source_eval=None, target_eval=domains.target_eval)
    feats = {"source-only": None}
    recipe = _recipe(deploy="reverse_validation")
    assert reverse_validation_scores(feats, domains.target_eval, recipe, no_source, torch.device("cpu")) is None


def test_the_ranking_rows_carry_the_score_that_ordered_them(case):
    from diagnostics.ranking import by_reverse_validation

    _, _, probs, _, ys = case
    three = {"source-only": probs["source-only"], "good": probs["good"], "noisy": probs["noisy"]}
    r = rank_by_estimate(three, ys)
    assert [row["score"] for row in r.rows()] == [r.estimates[n][r.estimator] for n in r.order]
    rv = by_reverse_validation(r, {"source-only": 0.2, "good": 0.9, "noisy": 0.6})
    assert [(row["run"], row["score"]) for row in rv.rows()] == [("good", 0.9), ("noisy", 0.6), ("source-only", 0.2)]


def test_a_run_with_deploy_reverse_validation_records_it(tmp_path):
    """End to end: ``method.deploy: reverse_validation`` decides and metrics.json records the
    rule and every model's score, highest first."""
    import json

    from adapt.recipe import load_recipe
    from domaingap.pipeline import run_recipe

    path = tmp_path / "rv.yaml"
    path.write_text(
        "name: rv\nseed: 0\n"
        "data: {source: {kind: phantom-cxr, site: A, n: 160}, target: {kind: phantom-cxr, site: B, n: 100},"
        " image_size: 32}\n"
        "train: {epochs: 2, batch_size: 32, device: cpu, patience: null, threads: 1}\n"
        "method: {deploy: reverse_validation, runs: [{name: adabn, adabn: true, epochs: 0}]}\n"
        f"diagnostics: {{enabled: false}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    run_recipe(load_recipe(path), progress=False, diagnostics=False)
    dep = json.loads((tmp_path / "runs" / "rv" / "metrics.json").read_text())["deployment"]
    assert dep["rule"] == "reverse_validation"
    scores = {r["model"]: r["reverse_validation"] for r in dep["ranking"]}
    assert set(scores) == {"source-only", "adabn"} and all(0.0 <= v <= 1.0 for v in scores.values())
    ordered = [r["reverse_validation"] for r in dep["ranking"]]
    assert dep["model"] == dep["ranking"][0]["model"] and ordered == sorted(ordered, reverse=True)
