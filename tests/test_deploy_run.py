"""After a run: the recipe's output.onnx writes every model (the per-domain-BN run as its
target-statistics variant), the run folder holds a drift reference, and `diagnose drift`
flags phantom site B against the site-A reference of the run and stays quiet on held-out
site A; `diagnose export` exports any checkpoint; bad input is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from domaingap.pipeline import run_recipe
from adapt.recipe import load_recipe
from domaingap.diagnose import main as diagnose

ort = pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

RECIPE = """
name: dep
seed: 0
data:
  source: {kind: phantom-cxr, site: B, n: 240}
  target: {kind: phantom-cxr, site: A, n: 400}
  image_size: 32
train: {epochs: 2, batch_size: 32, device: cpu, patience: null}
method:
  runs:
    - {name: adabn, adabn: true, epochs: 0}
  audit_run: adabn   # the deployed run (the estimate ranking keeps the source model here)
diagnostics: {enabled: false}
output: {dir: OUT, onnx: true}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    path = tmp / "recipe.yaml"
    path.write_text(RECIPE.replace("OUT", str(tmp / "runs")))
    summary = run_recipe(load_recipe(path), progress=False)
    return summary.run_dir


def test_run_writes_onnx_models_and_a_drift_reference(run_dir):
    from adapt.export import read_onnx_metadata

    assert (run_dir / "source" / "model.onnx").is_file()
    variant = run_dir / "methods" / "adabn" / "model.target_bn.onnx"
    assert variant.is_file() and not (run_dir / "methods" / "adabn" / "model.onnx").exists()
    meta = read_onnx_metadata(variant)
    assert meta["batchnorm_statistics"].startswith("target") and meta["image_size"] == "32"
    assert json.loads(meta["classes"]) == ["normal", "opacity"]
    dep = json.loads((run_dir / "metrics.json").read_text())["deployment"]
    assert dep["drift_reference"]["model"] == "methods/adabn/model.pt"
    # the ONNX file of the deployed model is the drift reference's: one decision
    assert [e["path"] for e in dep["onnx"] if e["deployed"]] == ["methods/adabn/model.target_bn.onnx"]
    assert max(e["max_abs_diff"] for e in dep["onnx"]) <= 1e-4
    assert (run_dir / "drift_reference.npz").is_file()


def test_drift_flags_site_b_and_is_quiet_on_held_out_site_a(run_dir, tmp_path, capsys):
    out_b = tmp_path / "b.json"
    code = diagnose(["drift", str(run_dir), "--batch", "phantom-cxr:B:300", "--seed", "5", "--fail-on", "drift",
                     "--json", str(out_b), "--quiet"])
    text = capsys.readouterr().out
    assert code == 1, text
    assert "DRIFT" in text and "fail-on: drift>0 holds" in text
    b = json.loads(out_b.read_text())
    assert b["verdict"]["drift"] and b["mmd"]["p_adjusted"] <= 0.01 and b["classifier"]["p_adjusted"] <= 0.01

    code = diagnose(["drift", str(run_dir), "--batch", "phantom-cxr:A:300", "--seed", "5", "--fail-on", "drift",
                     "--quiet"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "no drift" in text
    written = sorted((run_dir / "drift").glob("*.json"))  # default JSON place: RUN_DIR/drift/
    a = json.loads(written[-1].read_text())
    assert not a["verdict"]["drift"] and a["n_batch"] == 300
    assert min(a[k]["p_adjusted"] for k in ("mmd", "classifier", "predictions", "confidence")) > 0.01


def test_diagnose_export_any_checkpoint(run_dir, tmp_path, capsys):
    out = tmp_path / "adabn.onnx"
    assert diagnose(["export", str(run_dir / "methods" / "adabn" / "model.pt"), str(out)]) == 0
    assert "target BatchNorm statistics variant" in capsys.readouterr().out
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    assert ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0].shape == (3, 2)


def test_bad_input_is_one_line_exit_2(run_dir, tmp_path, capsys):
    assert diagnose(["export", str(tmp_path / "missing.pt"), str(tmp_path / "m.onnx")]) == 2
    assert diagnose(["drift", str(tmp_path), "--batch", "phantom-cxr:A:50"]) == 2
    assert diagnose(["drift", str(run_dir), "--batch", "phantom-cxr:A:50", "--fail-on", "drfit"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "drift_reference.npz" in err[1] and "cannot read 'drfit'" in err[2]
