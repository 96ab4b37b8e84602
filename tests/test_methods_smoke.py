"""Every issue-12 objective runs through the one loop from a recipe (phantom, small_cnn,
32×32, a few batches): CDAN+E (randomised map), MCC, DeepCORAL, DAN, SHOT, TENT with DEV
selection; selection.json keeps every selector's pick; SHOT keeps the head, TENT changes
only BatchNorm affine parameters; and SHOT/TENT adapt from the source checkpoint with the
source images deleted from disk."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from adapt.data.phantom import write_phantom
from domaingap.pipeline import run_recipe
from adapt.recipe import validate_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

RUNS = [
    {"name": "cdan_e", "objective": "cdan", "epochs": 1,
     "cdan": {"entropy": True, "randomized_dim": 64, "max_multilinear_dim": 100, "weight": 0.5}},
    {"name": "mcc", "objective": "mcc", "epochs": 1},
    {"name": "coral", "objective": "coral", "epochs": 1, "coral": {"layers": ["features", "logits"]}},
    {"name": "dan", "objective": "dan", "epochs": 1},
    {"name": "shot", "objective": "shot", "epochs": 2},
    {"name": "tent", "objective": "tent"},
]


def _recipe(root, source, runs, selection="dev", diagnostics=None, **model):
    data = {"target": {"kind": "imagefolder", "path": str(root / "B")}, "image_size": 32}
    if source:
        data["source"] = {"kind": "imagefolder", "path": str(root / "A")}
    return validate_recipe({
        "name": "smoke", "seed": 0, "data": data, "model": {"arch": "small_cnn", **model},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.002, "device": "cpu", "patience": None, "threads": 1},
        "method": {"selection": selection, "runs": runs},
        "diagnostics": diagnostics or {"enabled": False}, "output": {"dir": str(root / "runs"), "name": "sf" if not source else None},
    })


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    write_phantom(root / "A", "A", n=160, seed=0, image_size=32)
    write_phantom(root / "B", "B", n=120, seed=1, image_size=32)
    return root, run_recipe(_recipe(root, True, RUNS), progress=False)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_every_method_trains_and_is_scored(smoke):
    root, summary = smoke
    for run in RUNS:
        stage = summary.runs[run["name"]]
        tt = stage.metrics["target_test"]["accuracy"]
        assert 0.0 <= tt <= 1.0 and np.isfinite(stage.metrics["source_test"]["accuracy"])
        losses = [h["loss"] for h in stage.fit["history"]]
        assert all(np.isfinite(losses)), run["name"]
        sel = json.loads((root / "runs" / "smoke" / "methods" / run["name"] / "selection.json").read_text())
        assert sel["selector"] == "dev" and {"im", "snd", "dev", "source_val", "last"} <= sel["picks"].keys()
        assert all("dev" in e for e in sel["epochs"])
    assert summary.runs["tent"].fit["epochs_run"] == 1  # online: one pass by default
    assert "pseudo_label_agreement" in summary.runs["shot"].fit["history"][0]
    assert "cdan_e" in summary.runs and summary.runs["cdan_e"].fit["history"][0]["lambda"] >= 0


@pytest.mark.slow
def test_shot_keeps_head_and_tent_changes_only_batchnorm_affine(smoke):
    _, summary = smoke
    src = summary.source.model.state_dict()
    shot = summary.runs["shot"].model.state_dict()
    head = [k for k in src if k.startswith("head.")]
    assert head and all(torch.equal(src[k], shot[k]) for k in head)
    tent = summary.runs["tent"].model
    bn_affine = {f"{n}.{p}" for n, m in tent.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 for p in ("weight", "bias")}
    changed = {n for n, p in tent.named_parameters() if not torch.equal(p.detach(), src[n])}
    assert changed and changed <= bn_affine


@pytest.mark.slow
def test_source_augmentation_never_touches_shot_or_finetune_batches(smoke):
    """data.augment is for source batches: SHOT trains on unaugmented target images (its
    pseudo-labels are the unaugmented images'), fine-tuning on unaugmented labelled target
    images; with and without data.augment they end with the same weights."""
    root, _ = smoke
    ckpt = root / "runs" / "smoke" / "source" / "model.pt"
    runs = [{"name": "shot", "objective": "shot", "epochs": 1}, {"name": "ft", "objective": "finetune", "epochs": 1}]
    weights = []
    for augment in ([], ["invert", "colour"]):
        raw = _recipe(root, True, [], selection="im", source_checkpoint=str(ckpt)).model_dump(mode="json", by_alias=True)
        raw["data"]["augment"] = augment
        raw["data"]["target"]["labeled_per_class"] = 5
        raw["method"]["runs"] = runs
        raw["output"]["name"] = f"aug{len(augment)}"
        summary = run_recipe(validate_recipe(raw), progress=False)
        weights.append({n: summary.runs[n].model.state_dict() for n in ("shot", "ft")})
    for name in ("shot", "ft"):
        for k, v in weights[0][name].items():
            assert torch.equal(v, weights[1][name][k]), (name, k)


@pytest.mark.slow
def test_source_free_runs_without_source_images_on_disk(smoke):
    root, summary = smoke
    ckpt = root / "runs" / "smoke" / "source" / "model.pt"
    shutil.rmtree(root / "A")  # hospital B cannot see hospital A's data
    recipe = _recipe(root, False, [{"name": "shot", "objective": "shot", "epochs": 1},
                                   {"name": "tent", "objective": "tent"}], selection="im",
                     source_checkpoint=str(ckpt),
                     diagnostics={"enabled": True, "permutations": 20, "max_samples": 40, "attribution_samples": 10,
                                  "attribution_steps": 2, "umap": False})
    assert recipe.data.source is None
    sf = run_recipe(recipe, progress=False)
    for name in ("shot", "tent"):
        m = sf.runs[name].metrics
        assert m["source_test"] is None and 0 <= m["target_test"]["accuracy"] <= 1
    assert sf.source.metrics["source_test"] is None
    data = json.loads((root / "runs" / "sf" / "data.json").read_text())
    assert data["source"] is None
    table = (root / "runs" / "sf" / "comparison.md").read_text()
    assert "| shot | — |" in table
    # the audit measures the target and says what it could not
    audit = json.loads((root / "runs" / "sf" / "audit.json").read_text())
    first = audit["verdicts"][0]
    assert first["name"] == "source_free" and "domain gap" in first["summary"]
    assert audit["after"]["gap"] == {} and audit["after"]["collapse"]["target"]["n"] > 0
    assert audit["after"]["collapse"]["source"] is None and "target" in audit["after"]["spurious"]
    assert "Source-free run" in (root / "runs" / "sf" / "audit.html").read_text()


@pytest.mark.slow
def test_audit_shows_every_selectors_pick_and_disagreement(smoke, tmp_path):
    from diagnostics.audit import StageResult, build_audit
    from diagnostics.report import write_report

    root, summary = smoke
    rows = {r["model"]: r for r in summary.table}
    for run in RUNS:
        r = rows[run["name"]]
        sel = summary.runs[run["name"]].selection
        for name, pick in sel["picks"].items():
            assert f"{name} {pick['epoch']}" in r["selector_picks"]
        assert r["selectors"] == ("agree" if sel["selectors_agree"] else "disagree")
    table = [{**r, "seed": 0, "selector": "dev"} for r in summary.table]
    table[1] = {**table[1], "selector_picks": "im 1 · snd 2 · dev 1 · source_val 1 · last 2", "selectors": "disagree"}
    audit = build_audit(StageResult(name="source-only", metrics={"source_test": summary.source.metrics["source_test"]}),
                        classes=["normal", "opacity"], methods_table=table)
    html, _ = write_report(audit, tmp_path / "audit.html", tmp_path / "audit.json")
    text = html.read_text()
    assert "im 1 · snd 2 · dev 1 · source_val 1 · last 2" in text and "disagree" in text
