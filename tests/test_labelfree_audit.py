"""End to end without target labels: the audit of a run whose target is unlabelled shows
each model's estimated target accuracy with its measured band in the methods table and
judges the change with the label-free verdict (estimate ± band), not with IM/SND."""

from __future__ import annotations

import json

from domaingap.pipeline import run_recipe
from adapt.recipe import load_recipe

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


def test_unlabelled_target_audit_shows_estimates_with_measured_bands(tmp_path):
    path = tmp_path / "lf.yaml"
    path.write_text(RECIPE)
    summary = run_recipe(load_recipe(path, [f"output.dir={tmp_path / 'runs'}"]), progress=False)
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
