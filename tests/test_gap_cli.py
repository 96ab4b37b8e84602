"""`diagnose gap` end to end: different sites are different, halves of one site are not,
the CI gate, one-line errors, the collapse section, the self-contained HTML report."""

from __future__ import annotations

import csv
import json
import re
import sys
import types

import numpy as np
import pytest
import torch

from adapt.data import load_domain, parse_domain_arg, write_phantom
from adapt.errors import UserError
from adapt.models import build_model, save_checkpoint
from domaingap.diagnose import main
from diagnostics.gap import fired_conditions, parse_fail_on

pytestmark = pytest.mark.usefixtures("one_thread")


FAST = ["--image-size", "32", "--permutations", "200", "--bootstrap", "30", "--quiet"]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """Site A written once to disk, its manifest split into two disjoint CSVs (alternate rows)."""
    root = write_phantom(tmp_path_factory.mktemp("phantom") / "site_a", "A", 400, seed=5, image_size=32)
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    paths = []
    for k in range(2):
        path = root / f"half{k}.csv"
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows[k::2])
        paths.append(str(path))
    return paths


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def sites_a_vs_b(tmp_path_factory):
    out = tmp_path_factory.mktemp("ab") / "gap.json"
    code = main(["gap", "--source", "phantom-cxr:A:400", "--target", "phantom-cxr:B:400",
                 "--json", str(out), "--fail-on", "mmd_p<0.01", *FAST])
    return code, json.loads(out.read_text())


def test_two_sites_are_different_and_the_gate_fires(sites_a_vs_b):
    code, doc = sites_a_vs_b
    gap = doc["gap"]
    assert gap["mmd"]["p_value"] < 0.01 and gap["mmd"]["mmd2"] > 0
    assert gap["domain_classifier"]["auc"] > 0.9
    assert code == 1  # --fail-on 'mmd_p<0.01' fired
    assert doc["fail_on"]["fired"] == ["mmd_p<0.01"]


def test_json_holds_the_report_gap_shape_and_the_extractor(sites_a_vs_b):
    _, doc = sites_a_vs_b
    gap = doc["gap"]
    assert set(gap) == {"mmd", "frechet", "domain_classifier", "classifier_test", "transport"}
    assert set(gap["mmd"]) == {"mmd2", "p_value", "bandwidth", "permutations", "method", "test", "decidable",
                               "n_x", "n_y"}
    assert set(gap["frechet"]) == {"distance", "ci_low", "ci_high", "ci_centre", "ci_kind", "n_source",
                                   "n_target", "dim", "extractor"}
    assert set(gap["classifier_test"]) == {"auc", "p_value", "permutations", "decidable"}
    assert gap["classifier_test"]["p_value"] < 0.01 and gap["classifier_test"]["auc"] > 0.9
    assert gap["frechet"]["ci_low"] <= gap["frechet"]["ci_centre"] <= gap["frechet"]["ci_high"]
    assert set(gap["domain_classifier"]) == {"auc", "accuracy", "proxy_a_distance"}
    assert set(gap["transport"]) == {"distance", "method", "n_points"}
    assert gap["mmd"]["n_x"] == gap["mmd"]["n_y"] == 400 and gap["mmd"]["permutations"] == 200
    assert gap["frechet"]["ci_low"] <= gap["frechet"]["ci_high"] and gap["frechet"]["distance"] > 0
    assert gap["frechet"]["dim"] == 256 and "model-free" in gap["frechet"]["extractor"]
    assert doc["collapse"] is None  # no model: no collapse check


def test_two_disjoint_halves_of_one_site_are_not_different(halves, capsys):
    code, out, err = _run(["gap", "--source", halves[0], "--target", halves[1],
                           "--fail-on", "mmd_p<0.01", *FAST], capsys)
    assert code == 0, err
    m = re.search(r"MMD².*?p=([0-9.]+)", out)
    assert m and float(m.group(1)) > 0.05
    assert "not distinguishable" in out
    assert "fail-on" not in out


def test_one_folder_against_itself_is_no_evidence(halves, tmp_path, capsys):
    out = tmp_path / "self.json"
    code, text, err = _run(["gap", "--source", halves[0], "--target", halves[0], "--json", str(out),
                            *FAST[:-1]], capsys)
    assert code == 0, err
    gap = json.loads(out.read_text())["gap"]
    assert gap["domain_classifier"]["auc"] < 0.5  # duplicated images: below chance, by construction
    assert 0.0 <= gap["domain_classifier"]["proxy_a_distance"] <= 2.0
    assert gap["classifier_test"]["p_value"] > 0.05 and gap["mmd"]["p_value"] > 0.05
    assert "easily told apart" not in text and "no evidence of a difference" in text


def test_too_few_permutations_is_refused(capsys):
    code, out, err = _run(["gap", "--source", "phantom-cxr:A:20", "--target", "phantom-cxr:B:20",
                           "--permutations", "1", "--quiet"], capsys)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "--permutations" in err and "19" in err


def test_halves_json_p_value_and_auc_near_chance(halves, tmp_path):
    out = tmp_path / "halves.json"
    assert main(["gap", "--source", halves[0], "--target", halves[1], "--json", str(out), *FAST]) == 0
    gap = json.loads(out.read_text())["gap"]
    assert gap["mmd"]["p_value"] > 0.05
    assert gap["domain_classifier"]["auc"] < 0.75
    assert gap["mmd"]["n_x"] == gap["mmd"]["n_y"] == 200


@pytest.mark.parametrize("expr", ["mmd_p<<0.01", "foo<1", "mmd_p<abc", "", "mmd_p<0.01 and auc>0.9",
                                  "__import__('os').system('x')<1", "mmd_p<0.01,", "auc>1e999"])
def test_bad_fail_on_expressions_are_user_errors(expr):
    with pytest.raises(UserError) as err:
        parse_fail_on(expr)
    assert "\n" not in str(err.value) and "--fail-on" in str(err.value)


def test_fail_on_grammar_any_condition_fires():
    conds = parse_fail_on("mmd_p<0.01, FID>=3 or auc > 0.9,wasserstein<=-1e-3")
    assert [str(c) for c in conds] == ["mmd_p<0.01", "fid>=3", "auc>0.9", "wasserstein<=-0.001"]
    gap = {"mmd": {"p_value": 0.2}, "frechet": {"distance": 3.0}, "domain_classifier": {"auc": 0.5},
           "transport": {"distance": 1.0}}
    assert [(str(c), v) for c, v in fired_conditions(conds, gap)] == [("fid>=3", 3.0)]
    gap["frechet"]["distance"] = 2.99
    assert fired_conditions(conds, gap) == []


def test_bad_fail_on_exits_2_before_any_work(capsys):
    code, out, err = _run(["gap", "--source", "phantom-cxr:A", "--target", "phantom-cxr:B",
                           "--fail-on", "mmd_p=0.01"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --fail-on") and err.count("\n") == 1


def test_missing_folder_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "no_such_site"
    code, out, err = _run(["gap", "--source", str(missing), "--target", "phantom-cxr:B"], capsys)
    assert code == 2
    assert err.startswith("error: ") and str(missing) in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_file_that_is_not_a_checkpoint_exits_2(tmp_path, capsys):
    bogus = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, bogus)
    code, _, err = _run(["gap", "--source", "phantom-cxr:A:40", "--target", "phantom-cxr:B:40",
                         "--model", str(bogus)], capsys)
    assert code == 2 and "not a domaingap checkpoint" in err and err.count("\n") == 1


def test_model_features_need_a_model(capsys):
    code, _, err = _run(["gap", "--source", "phantom-cxr:A:40", "--target", "phantom-cxr:B:40",
                         "--features", "model"], capsys)
    assert code == 2 and "--model" in err


@pytest.fixture(scope="module")
def one_class_model(tmp_path_factory):
    """A small CNN whose head says 'normal' for every image: a collapsed model by construction."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 2)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([6.0, -6.0]))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, classes=["normal", "opacity"], image_size=32)
    return path


def test_with_a_model_the_json_has_a_collapse_section_and_the_html_is_self_contained(
        one_class_model, tmp_path, capsys):
    out, html = tmp_path / "gap.json", tmp_path / "gap.html"
    code, stdout, err = _run(["gap", "--source", "phantom-cxr:A:200", "--target", "phantom-cxr:B:200",
                              "--model", str(one_class_model), "--json", str(out), "--html", str(html),
                              "--permutations", "200", "--bootstrap", "20", "--quiet"], capsys)
    assert code == 0, err
    doc = json.loads(out.read_text())
    assert doc["features"]["kind"] == "model" and doc["gap"]["frechet"]["dim"] == 128
    assert str(one_class_model) in doc["gap"]["frechet"]["extractor"]
    col = doc["collapse"]
    assert col["target"]["histogram"] == pytest.approx({"normal": 1.0, "opacity": 0.0})
    assert col["source"]["histogram"] == pytest.approx({"normal": 1.0, "opacity": 0.0})
    assert col["target"]["largest_share"] == pytest.approx(1.0)
    assert col["collapsed"] is True and col["reason"]
    assert col["source_prior"] == pytest.approx({"normal": 0.5, "opacity": 0.5})
    assert doc["metrics"]["target_test"]["accuracy"] == pytest.approx(0.5)
    assert "COLLAPSED" in stdout

    text = html.read_text()
    assert "collapse" in text.lower() and "MMD" in text
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*//""", text, re.I)
    # --json is the HTML's default JSON name here, so the report's JSON goes elsewhere
    assert (tmp_path / "gap.audit.json").is_file()


def test_flat_folder_of_images_is_an_unlabelled_domain(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, shift in (("src", 0), ("tgt", 90)):
        d = tmp_path / name
        d.mkdir()
        for i in range(30):
            img = np.clip(rng.normal(80 + shift, 20, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(img, mode="L").save(d / f"{i}.png")
    code, out, err = _run(["gap", "--source", str(tmp_path / "src"), "--target", str(tmp_path / "tgt"), *FAST],
                          capsys)
    assert code == 0, err
    assert "different (p<0.01)" in out


def test_max_samples_subsamples_each_domain(tmp_path):
    out = tmp_path / "g.json"
    assert main(["gap", "--source", "phantom-cxr:A:300", "--target", "phantom-cxr:B:300", "--max-samples", "60",
                 "--json", str(out), *FAST]) in (0, 1)
    doc = json.loads(out.read_text())
    assert doc["source"]["n"] == doc["target"]["n"] == 60
    assert doc["gap"]["mmd"]["n_x"] == 60 and doc["gap"]["frechet"]["n_source"] == 60


def test_phantom_command_writes_a_loadable_folder(tmp_path, capsys):
    code, out, _ = _run(["phantom", str(tmp_path / "b"), "--site", "b", "--n", "20", "--image-size", "32"], capsys)
    assert code == 0 and "manifest.csv" in out
    ds = load_domain(parse_domain_arg(str(tmp_path / "b")), image_size=32)
    assert len(ds) == 20 and ds.classes == ["normal", "opacity"]
    assert (tmp_path / "b" / "manifest.csv").is_file()


def test_audit_command_forwards_to_run_audit_rerender(tmp_path, monkeypatch, capsys):
    calls = []
    standin = types.ModuleType("domaingap.run_audit")
    standin.rerender = lambda run_dir: calls.append(run_dir) or tmp_path / "audit.html"
    monkeypatch.setitem(sys.modules, "domaingap.run_audit", standin)
    code, out, _ = _run(["audit", str(tmp_path)], capsys)
    assert code == 0 and calls == [str(tmp_path)] and "audit.html" in out
