"""End to end without target labels: the audit of a run whose target is unlabelled shows
each model's estimated target accuracy with its measured band in the methods table and
judges the change with the label-free verdict (estimate ± band), not with IM/SND; the
estimates do no work twice (each run's kept source-statistics copy, one pass of each
audited model over each domain's held-out images)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from adapt.recipe import load_recipe
from tests.conftest import recorded_run

RECIPE = """
name: lf
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 300}
  target: {kind: phantom-cxr, site: B, n: 200, labeled: false}
  image_size: 32
train: {epochs: 2, batch_size: 64, lr: 0.002, device: cpu, patience: null, threads: 1}
method:
  selection: im
  runs:
    - {name: adabn, adabn: true, epochs: 0}
    - {name: dann, objective: dann, epochs: 1}
diagnostics: {enabled: true, permutations: 50, max_samples: 100, attribution: false, umap: false}
"""


@pytest.fixture(scope="module")
def lf(tmp_path_factory):
    """The run, with what it did recorded (tests/conftest.py: recorded_run)."""
    tmp = tmp_path_factory.mktemp("lf")
    path = tmp / "lf.yaml"
    path.write_text(RECIPE)
    return recorded_run(load_recipe(path, [f"output.dir={tmp / 'runs'}"]))


def test_unlabelled_target_audit_shows_estimates_with_measured_bands(lf):
    summary = lf.summary
    audit = json.loads((summary.run_dir / "audit.json").read_text())
    rows = {r["model"]: r for r in audit["methods_table"]}
    for name in ("source-only", "adabn", "dann"):
        assert rows[name]["target_acc_estimated"].startswith("estimated "), rows[name]
        assert "±" in rows[name]["target_acc_estimated"]
    v = next(v for v in audit["verdicts"] if v["name"] == "negative_transfer")
    assert v["evidence"]["labelfree_outcome"] in ("helped", "did not help", "negative transfer", "can't tell")
    assert "target labels unknown" in v["summary"] and "±" in v["summary"]
    est = audit["after"]["label_free"]["accuracy"]
    assert est["default"] in est["estimates"] and est["calibration"]["command"].startswith("python benchmarks/")
    html = (summary.run_dir / "audit.html").read_text()
    assert "estimated " in html


def test_label_free_estimates_use_each_runs_kept_source_copy(lf):
    # both runs are per-domain-BN: each meets the source with source statistics. Here precise
    # BN already holds them (untrained AdaBN copy; DANN trained on the source images with
    # precise BN), so the copy is taken from it and never re-estimated (deployed_on_source:
    # 0 calls); the estimates' ATC/DoC/COT read that one copy (was: a new one)
    summary, domains, calls = lf.summary, lf.domains, lf.calls
    made = Counter(id(m) for m in calls["on_source"])
    on_source_eval = [model for data, model in calls["features"] + calls["predict"] if data is domains.source_eval]
    for name in ("adabn", "dann"):
        stage = summary.runs[name]
        assert made[id(stage.model)] == 0, name
        assert stage.on_source is not None
        runs_there = [m for m in on_source_eval if m is stage.model or m is stage.on_source]
        assert runs_there and all(m is stage.on_source for m in runs_there), name


def test_each_audited_model_runs_over_each_held_out_domain_once(lf):
    # the deployed run (decided once, here by the label-free ranking: no method.audit_run) and
    # the source model: features, gap statistics, group metrics and label-free estimates
    # share one pass over each domain's held-out images (was: up to three)
    summary, domains, calls = lf.summary, lf.domains, lf.calls
    audit = json.loads((summary.run_dir / "audit.json").read_text())
    deployed = summary.runs[audit["after"]["name"].removeprefix("adapted (").removesuffix(")")]
    passes = Counter((id(data), id(model)) for data, model in calls["features"] + calls["predict"])
    for stage in (summary.source, deployed):
        on_source = stage.on_source if stage.on_source is not None else stage.model
        assert passes[(id(domains.target_eval), id(stage.model))] == 1, stage.name
        assert passes[(id(domains.source_eval), id(on_source))] == 1, stage.name
    # every other run: once on each (its estimates)
    for name, stage in summary.runs.items():
        if stage is not deployed:
            assert passes[(id(domains.target_eval), id(stage.model))] == 1, name
            assert passes[(id(domains.source_eval), id(stage.on_source))] == 1, name
    # the audit, the drift reference and the table read one decision
    assert len(calls["decided"]) == 1, len(calls["decided"])
    assert summary.deployment.stage is deployed


def test_each_models_cot_is_solved_once_and_the_audit_shows_the_rankings(lf):
    # the deployment ranking solves COT's transport problem for every model on the audit's
    # held-out images; the audit's estimates read the same probabilities and source labels,
    # so they take those values (was: every model solved twice)
    summary, calls = lf.summary, lf.calls
    ranking = summary.deployment.ranking
    assert ranking is not None and all("cot" in ranking.estimates[m] for m in ("source-only", "adabn", "dann"))
    assert len(calls["cot"]) == 3, len(calls["cot"])
    audit = json.loads((summary.run_dir / "audit.json").read_text())
    shown = {"source-only": audit["before"]["label_free"]["accuracy"],
             summary.deployment.audited: audit["after"]["label_free"]["accuracy"]}
    for name, section in shown.items():
        assert section["estimates"]["cot"]["accuracy"] == pytest.approx(ranking.estimates[name]["cot"], abs=1e-12)


def test_the_comparison_shows_each_models_estimate_with_its_band_when_target_labels_are_unknown(lf):
    # the printed table and comparison.md had "—" for every target accuracy: the user saw no
    # number at all without labels; now the ranking's estimate ± its measured band, marked
    from adapt.accuracy_estimation.calibration import measured_error

    summary = lf.summary
    ranking = summary.deployment.ranking
    band = measured_error(ranking.estimator, n_models=len(ranking.order)).accuracy_p90
    text = (summary.run_dir / "comparison.md").read_text()
    assert "estimated target acc % (no target labels)" in text.splitlines()[0]
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    for row in metrics["comparison"]:
        assert row["target_acc"] is None
        est = row["target_acc_estimated"]
        assert est["estimator"] == ranking.estimator
        assert est["accuracy"] == pytest.approx(ranking.estimates[row["model"]][ranking.estimator])
        assert est["band"] == pytest.approx(band)
        cell = f"| {100 * est['accuracy']:.0f} ± {100 * band:.0f} ({ranking.estimator}) |"
        assert any(line.startswith(f"| {row['model']} |") and line.endswith(cell) for line in text.splitlines())
