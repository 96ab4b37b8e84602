"""End to end on the phantom shift: adaptation raises target accuracy, a run made to hurt
gets the negative-transfer verdict and a sound one does not, the audit report is written,
and bad inputs stop with one line and exit code 2 without touching earlier results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from domaingap.adapt_run import main as adapt_main
from domaingap.pipeline import run_recipe
from adapt.recipe import load_recipe
from diagnostics.audit import StageResult, compute_verdicts

from tests.conftest import E2E_RECIPE as RECIPE


@pytest.fixture(scope="module")
def run(e2e):
    """The session's end-to-end run (tests/conftest.py), trained once and shared."""
    return e2e.summary


def acc(stage, split):
    m = stage.metrics.get(split)
    return None if m is None else m["accuracy"]


@pytest.mark.slow
def test_adaptation_raises_target_accuracy(run):
    src = run.source
    assert acc(src, "source_test") > 0.85, "the source model must learn site A"
    assert acc(src, "target_test") < acc(src, "source_test") - 0.1, "the phantom shift must be real"
    for name in ("adabn", "hist"):
        gain = acc(run.runs[name], "target_test") - acc(src, "target_test")
        assert gain >= 0.10, f"{name}: site-B accuracy gain {gain:+.3f}"
        # AdaBN keeps the weights: with site-A statistics, site A is as good as before
        assert acc(run.runs[name], "source_test") >= acc(src, "source_test") - 0.03


def stage(name, outcome):
    return StageResult(name=name, metrics={"source_test": outcome.metrics["source_test"],
                                           "target_test": outcome.metrics["target_test"]})


@pytest.mark.slow
def test_negative_transfer_verdict_for_a_run_made_to_hurt(run):
    before = stage("source-only", run.source)
    hurt = compute_verdicts(before, stage("hurt", run.runs["hurt"]))
    sound = compute_verdicts(before, stage("hist", run.runs["hist"]))
    nt_hurt = next(v for v in hurt if v.name == "negative_transfer")
    nt_sound = next(v for v in sound if v.name == "negative_transfer")
    assert nt_hurt.level == "fail", nt_hurt.summary
    assert nt_sound.level == "ok", nt_sound.summary


@pytest.mark.slow
def test_run_folder_and_audit(run):
    d = run.run_dir
    for f in ("recipe.yaml", "data.json", "metrics.json", "comparison.md", "audit.html", "audit.json",
              "source/model.pt", "methods/hist/model.pt", "methods/hist/selection.json"):
        assert (d / f).exists(), f
    metrics = json.loads((d / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"adabn", "hist", "hurt"}
    # target labels known: measured accuracies, no estimate beside them
    assert all(r["target_acc"] is not None and "target_acc_estimated" not in r for r in metrics["comparison"])
    assert "estimated" not in (d / "comparison.md").read_text()
    sel = json.loads((d / "methods/hist/selection.json").read_text())
    assert sel["selector"] == "im" and 1 <= sel["selected_epoch"] <= 2
    assert all("im" in e and "snd" in e for e in sel["epochs"])
    audit = json.loads((d / "audit.json").read_text())
    assert audit["after"]["name"] == "adapted (hist)"
    assert {v["name"] for v in audit["verdicts"]} >= {"negative_transfer", "gap", "spurious"}
    html = (d / "audit.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert (d / "audit.html").stat().st_size < 5_000_000


@pytest.mark.slow
def test_rerun_with_resume_loads_finished_stages(run, capsys):
    recipe_path = run.run_dir / "recipe.yaml"
    before = (run.run_dir / "source" / "model.pt").read_bytes()
    assert adapt_main([str(recipe_path), "--resume", "--quiet", "--no-diagnostics"]) == 0
    assert (run.run_dir / "source" / "model.pt").read_bytes() == before


def test_bad_data_path_is_one_line_exit_2_and_keeps_earlier_results(tmp_path):
    earlier = tmp_path / "runs" / "x" / "metrics.json"
    earlier.parent.mkdir(parents=True)
    earlier.write_text('{"kept": true}')
    recipe = tmp_path / "x.yaml"
    recipe.write_text(f"name: x\ndata:\n  source: {{kind: imagefolder, path: {tmp_path / 'nope'}}}\n"
                      f"output: {{dir: {tmp_path / 'runs'}}}\n")
    proc = subprocess.run([sys.executable, "-m", "domaingap.adapt_run", str(recipe), "--quiet"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in proc.stderr
    assert json.loads(earlier.read_text()) == {"kept": True}


def test_checkpoint_from_another_model_is_rejected(tmp_path):
    from adapt.models import build_model, save_checkpoint

    ckpt = tmp_path / "three_classes.pt"
    save_checkpoint(ckpt, build_model("small_cnn", 3, 1), classes=["a", "b", "c"], image_size=64)
    recipe = tmp_path / "x.yaml"
    recipe.write_text("name: x\ndata: {source: {kind: phantom-cxr, site: A, n: 40},"
                      " target: {kind: phantom-cxr, site: B, n: 40}}\n"
                      f"model: {{source_checkpoint: {ckpt}}}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    proc = subprocess.run([sys.executable, "-m", "domaingap.adapt_run", str(recipe), "--quiet"], capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (f"error: {ckpt}: checkpoint classes ['a', 'b', 'c'] differ from the data's "
                                   "['normal', 'opacity']")


@pytest.mark.slow
def test_diagnose_audit_rerenders_the_report(run):
    from domaingap.diagnose import main as diagnose_main

    html = run.run_dir / "audit.html"
    original = html.read_text()
    html.unlink()
    assert diagnose_main(["audit", str(run.run_dir)]) == 0
    again = html.read_text()
    assert "Adaptation audit" in again and again.count("<img") == original.count("<img")


def test_unlabelled_target_is_split_like_a_labelled_one(tmp_path):
    # An unlabelled target goes through the same splitter as a labelled one: disjoint
    # parts covering every image, sized by the recipe's fractions, seeded.
    from domaingap.runs import load_domains

    path = tmp_path / "u.yaml"
    path.write_text(RECIPE.replace("{kind: phantom-cxr, site: B, n: 400}",
                                   "{kind: phantom-cxr, site: B, n: 101, labeled: false}"))
    recipe = load_recipe(path, [])
    doms = load_domains(recipe)
    assert not doms.target.has_labels
    sizes = {k: len(ds) for k, ds in doms.target_split.items()}
    fr = recipe.data.split
    for k, f in (("train", fr.train), ("val", fr.val), ("test", fr.test)):
        assert abs(sizes[k] - f * 101) <= 1, (k, sizes)
    # disjoint and covering: every target image lands in exactly one part
    rows = lambda t: sorted(hash(r.numpy().tobytes()) for r in t.flatten(1))  # noqa: E731
    pooled = torch.cat([ds.images() for ds in doms.target_split.values()])
    assert rows(pooled) == rows(doms.target.images())
    again = load_domains(recipe)
    for k in sizes:
        torch.testing.assert_close(again.target_split[k].images(), doms.target_split[k].images())


EWC_DANN_RECIPE = """
name: de
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 160}
  target: {kind: phantom-cxr, site: B, n: 160}
  image_size: 32
model: {arch: small_cnn}
train: {epochs: 1, batch_size: 32, lr: 0.002, device: cpu, threads: 1}
method:
  selection: im
  runs:
    - {name: dann, objective: dann, epochs: 2}
    - {name: dann+ewc, objective: dann, epochs: 2, ewc: {lambda: 10000, fisher: true, samples: 50}}
diagnostics: {enabled: false}
"""


def test_ewc_during_dann_anchors_the_weights_the_source_needs(tmp_path):
    # EWC is a penalty of the one loop, so it rides along with DANN: the Fisher is
    # saved with the run, the penalty is logged every epoch, and the Fisher-weighted
    # distance to the source weights ends far smaller than without it.
    from adapt.methods.ewc import load_fisher
    from adapt.models import load_checkpoint

    path = tmp_path / "de.yaml"
    path.write_text(EWC_DANN_RECIPE)
    summary = run_recipe(load_recipe(path, [f"output.dir={tmp_path / 'runs'}"]), progress=False,
                         diagnostics=False)
    run_dir = tmp_path / "runs" / "de"
    fisher, meta = load_fisher(run_dir / "methods" / "dann+ewc" / "fisher.pt")
    assert meta["mode"] == "true" and meta["samples"] == 50
    assert not (run_dir / "methods" / "dann" / "fisher.pt").exists()
    history = json.loads((run_dir / "metrics.json").read_text())["runs"]["dann+ewc"]["fit"]["history"]
    assert len(history) == 2 and all(h["ewc_penalty"] > 0 for h in history)

    source, _ = load_checkpoint(run_dir / "source" / "model.pt")
    anchor = dict(source.named_parameters())

    def fisher_distance(run: str) -> float:
        model, _ = load_checkpoint(run_dir / "methods" / run / "model.pt")
        return sum(float((fisher[n] * (p.detach() - anchor[n].detach()) ** 2).sum())
                   for n, p in model.named_parameters() if n in fisher)

    assert fisher_distance("dann+ewc") < 0.2 * fisher_distance("dann")  # measured: 0.06x
    assert {r["model"] for r in summary.table} >= {"dann", "dann+ewc"}


@pytest.mark.slow
def test_source_val_score_is_measured_as_the_model_is_deployed_on_the_source(run):
    # AdaBN runs are deployed on the source with source BatchNorm statistics; the
    # per-epoch source-validation score (what `selection: source_val` picks by) must be
    # measured the same way, so for the selected epoch it equals the reported accuracy.
    for name in ("adabn", "hist"):
        stage = run.runs[name]
        sel = stage.selection
        chosen = next(e for e in sel["epochs"] if e["epoch"] == sel["selected_epoch"])
        assert chosen["source_val_accuracy"] == pytest.approx(acc(stage, "source_val"), abs=1e-9), name
