"""The truth suite's label-hidden mode (``benchmarks/truth_suite.py --hide-labels``): the
tool gets the target as a flat folder of unlabelled images and never a label; the table's
true figures come from the hidden key, and the key is the truth of the labelled folder."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hide_labels_writes_a_flat_folder_and_a_key_outside_it(tmp_path):
    hidden = _load("truth_suite_hidden")
    labelled = tmp_path / "labelled"
    truth = {}
    for cls, n in (("cat", 3), ("dog", 4)):
        (labelled / cls).mkdir(parents=True)
        for i in range(n):
            (labelled / cls / f"{i}.png").write_bytes(f"{cls}-{i}".encode())  # distinct contents
            truth[f"{cls}-{i}"] = cls
    flat, key = tmp_path / "flat", tmp_path / "keys" / "k.json"
    hidden.hide_labels(labelled, flat, key)
    assert not [p for p in flat.iterdir() if p.is_dir()]
    assert sorted(p.name for p in flat.iterdir()) == [f"{k:05d}.png" for k in range(7)]
    labels = json.loads(key.read_text())["labels"]
    assert {n: truth[(flat / n).read_text()] for n in labels} == labels  # every file's true class
    assert [labels[f"{k:05d}.png"] for k in range(7)] != ["cat"] * 3 + ["dog"] * 4  # the order is shuffled
    with pytest.raises(ValueError, match="outside"):
        hidden.hide_labels(labelled, flat, flat / "key.json")


def test_verdict_wrong_follows_the_issue_rules():
    hidden = _load("truth_suite_hidden")
    assert hidden.verdict_wrong("negative transfer", 0.10) and not hidden.verdict_wrong("negative transfer", 0.09)
    assert hidden.verdict_wrong("helped", -0.03) and not hidden.verdict_wrong("helped", -0.02)
    assert not any(hidden.verdict_wrong("can't tell", d) for d in (-0.9, 0.0, 0.9))


@pytest.mark.slow
def test_label_hidden_case_never_reads_the_labels_and_is_scored_with_them(tmp_path, capsys):
    suite = _load("truth_suite")
    work = tmp_path / "truth"
    code = suite.main(["--hide-labels", "--in-process", "--cases", "same_distribution", "--out", str(work)])
    out = capsys.readouterr().out
    assert code == 0, out
    for column in ("true change", "estimated change ± band", "label-free verdict", "regret of the pick"):
        assert column in out
    # what the tool was given: a flat folder, labeled: false, the key outside it
    flat = work / "hidden" / "targets" / "tgt_clean"
    assert not [p for p in flat.iterdir() if p.is_dir()]
    recipe = (work / "hidden" / "same_distribution_hidden.yaml").read_text()
    assert f"path: {flat}" in recipe and "labeled: false" in recipe
    key = json.loads((work / "hidden" / "keys" / "tgt_clean.json").read_text())["labels"]
    # the key is the truth of the labelled folder the suite built (same image bytes)
    labelled = {_digest(p): p.parent.name for p in (work / "data" / "tgt_clean").glob("*/*.png")}
    assert all(labelled[_digest(flat / name)] == cls for name, cls in key.items())
    # the table's true change is recomputed here from the saved predictions and the key
    scores = json.loads((work / "hidden" / "same_distribution_hidden_scores.json").read_text())
    truth = np.array([key[f] for f in scores["files"]])
    acc = {m: float(np.mean(np.array(s["predictions"]) == truth)) for m, s in scores["models"].items()}
    assert acc == pytest.approx({m: s["accuracy"] for m, s in scores["models"].items()})
    assert set(acc) >= {"source-only", "adabn", "peer-tent"}
    row = next(line for line in out.splitlines() if line.startswith("| same_distribution |"))
    assert f"| {100 * (acc['adabn'] - acc['source-only']):+.1f} |" in row
    best, pick = max(acc.values()), row.split(" | ")[-3]
    assert f"| {100 * (best - acc[pick]):.1f} |" in row
    # the pick is the tool's own deployment ranking (method.deploy: estimate), shown beside
    # the case's audit_run, and every run selector is scored against the key
    audit = json.loads((work / "hidden" / "runs" / "same_distribution_hidden" / "audit.json").read_text())
    dep = audit["deployment"]
    assert dep["rule"] == "audit_run" and dep["model"] == "adabn" and dep["audited"] == "adabn"
    ranked = [r["model"] for r in dep["ranking"]]
    assert sorted(ranked) == sorted(acc)
    assert [r["model"] for r in audit["methods_table"] if r.get("label_free_rank") == 1] == ranked[:1]
    assert "| estimate |" in out and "| im |" in out
    # one distribution on both sides: the label-free reading of the source model does not
    # claim a label shift (it did, from BBSE's sampling noise alone, before the χ² gate)
    assert dep["source_reading"]["verdict"] == audit["before"]["collapse"]["verdict"] == "no_shift"
