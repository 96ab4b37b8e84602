"""The data audit (``diagnose data``, issue 24) against planted truth: flipped labels are
found by confident learning, near-duplicates planted across train/test are found with no
false pair among clean images; plus the report and the one-line errors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

# skipped without the extra; found, not imported: cleanlab and scikit-learn take ~2 s to
# import, which both test workers would pay at collection for the one that runs this file
if any(importlib.util.find_spec(name) is None for name in ("cleanlab", "imagehash")):
    pytest.skip("the data-audit extra (pip install 'domaingap[data]')", allow_module_level=True)

from adapt.data import DomainDataset, make_phantom, stratified_split, write_phantom  # noqa: E402
from adapt.models import build_model, save_checkpoint  # noqa: E402
from diagnostics.audit import StageResult, build_audit  # noqa: E402
from diagnostics.report import render_html  # noqa: E402
from domaingap.data_audit_run import audit_data  # noqa: E402
from domaingap.diagnose import main  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}
ROOT = Path(__file__).resolve().parents[1]


def _domain(images: torch.Tensor, labels: np.ndarray, name: str = "site") -> DomainDataset:
    return DomainDataset(name=name, classes=["normal", "opacity"], labels=labels,
                         ids=[f"{name}/{i}" for i in range(len(labels))], channels=1,
                         image_size=images.shape[-1], images=images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flipped_labels_are_found_with_recall_and_precision_over_0_8(seed):
    batch = make_phantom("A", 1200, seed=seed, image_size=64)
    labels = batch.labels.copy()
    flipped = np.random.default_rng(100 + seed).choice(len(labels), 60, replace=False)  # 5 %
    labels[flipped] = 1 - labels[flipped]
    ds = _domain(batch.images, labels)
    section = audit_data([ds], [stratified_split(labels, SPLIT, seed)], seed=seed, progress=False)
    found = {int(it["id"].split("/")[1]) for it in section["label_issues"]["site"]["issues"]}
    hits = len(found & set(flipped.tolist()))
    recall, precision = hits / len(flipped), hits / max(1, len(found))
    assert recall >= 0.8 and precision >= 0.8, (recall, precision)
    # the suggested label of a flipped image is its true one
    for it in section["label_issues"]["site"]["issues"]:
        i = int(it["id"].split("/")[1])
        if i in flipped:
            assert it["suggested"] == ["normal", "opacity"][batch.labels[i]]


def _load_bench_duplicates():
    spec = importlib.util.spec_from_file_location("bench_duplicates", ROOT / "benchmarks" / "bench_duplicates.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


#: the planted copies' family (resized up and back, shifted by 1-2 pixels, JPEG at quality
#: 80), as benchmarks/bench_duplicates.py builds it: one definition for tests and benchmark
_near_copy = _load_bench_duplicates().near_copy


@pytest.mark.parametrize("site, seed", [("A", 3), ("B", 0)])  # B: dimmer, blurred, noisier
def test_near_duplicates_across_train_and_test_are_all_found_and_nothing_else(site, seed):
    n_clean, n_dup = 1000, 20
    batch = make_phantom(site, n_clean + n_dup, seed=seed, image_size=64)
    labels = batch.labels.copy()
    parts = stratified_split(labels, SPLIT, seed=0)
    pixels = (batch.images[:, 0].numpy() * 255 + 0.5).astype(np.uint8)
    # 20 test images become near copies of 20 train images of the same class
    test, train = parts["test"], parts["train"]
    planted = {}
    for k, t in enumerate(test[:n_dup]):
        src = next(int(i) for i in train if labels[i] == labels[t] and int(i) not in planted.values())
        pixels[t] = _near_copy(pixels[src], k)
        planted[int(t)] = src
    images = torch.from_numpy(pixels).float()[:, None] / 255
    section = audit_data([_domain(images, labels)], [parts], seed=0, progress=False)
    pairs = section["duplicates"]["pairs"]
    found = {(int(p["a"]["id"].split("/")[1]), int(p["b"]["id"].split("/")[1])) for p in pairs}
    expected = {tuple(sorted((t, s))) for t, s in planted.items()}
    assert found == expected  # all 20, and no pair among the 1,000 clean images
    assert all(p["where"] == "across splits" and p["kind"] == "near" for p in pairs)
    leak = next(f for f in section["findings"] if f["title"] == "Duplicate images across splits")
    assert leak["level"] == "fail" and "leakage" in leak["summary"] and leak["thumbs"]


def test_copies_whose_hashes_differ_by_more_than_16_bits_are_found():
    """The hash is only a candidate gate: among 2,000 planted copies (20 phantom sets) 1.7 %
    differ from their original by more than 16 of the 64 phash bits (up to 22). Site B,
    seed 0, the first 40 images copied to the end (``_near_copy``): one copy lies at 22
    bits and was missed under a 16-bit gate; all 40 are found now, and no other pair."""
    from diagnostics.data_audit.duplicates import find_duplicates, perceptual_hashes

    pixels = (make_phantom("B", 1000, seed=0, image_size=64).images[:, 0].numpy() * 255 + 0.5).astype(np.uint8)
    n, copies = len(pixels), 40
    for k in range(copies):
        pixels[n - 1 - k] = _near_copy(pixels[k], k)
    bits = perceptual_hashes(pixels)
    assert max(int((bits[k] != bits[n - 1 - k]).sum()) for k in range(copies)) > 16  # the case is the one meant
    found = {(p.i, p.j) for p in find_duplicates(pixels)}
    assert found == {(k, n - 1 - k) for k in range(copies)}



@pytest.mark.parametrize("gate", [0.12, 0.2, 0.3])
def test_the_pooled_lower_bound_loses_no_pair_that_the_full_distances_find(gate):
    """The default route drops a pair when k² · (its distance on k x k block means) is over the
    gate; that is a lower bound of its full distance, so it may only drop pairs the full
    distances drop too. At relative-RMSE gates of 0.2 and 0.3 distinct phantom images pass
    too (35 and 1,809 pairs, many near the gate) — the same pairs, the same
    evidence as every pair's full distance (to 1e-3: the full route's float32 products lose
    ~1e-4 of a near copy's RMSE to cancellation, the default's exact stage is float64)."""
    from diagnostics.data_audit.duplicates import find_duplicates

    pixels = (make_phantom("A", 300, seed=5, image_size=64).images[:, 0].numpy() * 255 + 0.5).astype(np.uint8)
    for k in range(10):
        pixels[299 - k] = _near_copy(pixels[k], k)
    pixels[150] = pixels[3]  # an exact copy
    full = find_duplicates(pixels, max_relative_rmse=gate, bound_pool=1)
    pruned = find_duplicates(pixels, max_relative_rmse=gate)
    assert len(full) >= {0.12: 12, 0.2: 30, 0.3: 1000}[gate]  # the case is the one meant
    assert [(p.i, p.j, p.kind, p.hash_distance) for p in pruned] == [(p.i, p.j, p.kind, p.hash_distance) for p in full]
    for a, b in zip(pruned, full):
        assert a.rmse == pytest.approx(b.rmse, rel=1e-3) and a.relative_rmse == pytest.approx(b.relative_rmse, rel=1e-3)

@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    site = write_phantom(root / "site_a", "A", 60, seed=1, image_size=32)
    # an exact copy of one image inside the domain, under another name
    first = sorted((site / "normal").glob("*.png"))[0]
    (site / "normal" / "copy_<b>.png").write_bytes(first.read_bytes())
    return root, site


def test_cli_writes_json_and_a_self_contained_html_with_thumbnails(written, capsys):
    root, site = written
    out_json, out_html = root / "audit.json", root / "page.html"
    code = main(["data", str(site), "phantom-cxr:B:40", "--json", str(out_json), "--html", str(out_html),
                 "--image-size", "32", "--quiet"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out_json.read_text())
    exact = [p for p in doc["duplicates"]["pairs"] if p["kind"] == "exact"]
    assert len(exact) == 1 and "copy_<b>.png" in exact[0]["b"]["id"] + exact[0]["a"]["id"]
    assert {d["name"] for d in doc["domains"]} == {str(site), "phantom-cxr:B"}
    html = out_html.read_text()
    assert "data:image/png;base64," in html and "copy_&lt;b&gt;.png" in html and "<script" not in html
    assert "http://" not in html and "https://" not in html


def test_with_a_model_label_issues_use_its_features(tmp_path, capsys):
    ckpt = tmp_path / "phantom.pt"
    save_checkpoint(ckpt, build_model("small_cnn", 2, 1), classes=["normal", "opacity"], image_size=32)
    out = tmp_path / "d.json"
    code = main(["data", "phantom-cxr:A:60", "--model", str(ckpt), "--json", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert str(ckpt) in doc["label_issues"]["phantom-cxr:A"]["model"]


def test_an_unlabelled_copy_is_no_label_conflict():
    batch = make_phantom("A", 20, seed=0, image_size=32)
    labelled = _domain(batch.images, batch.labels, "labelled")
    unlabelled = _domain(batch.images[:5], np.full(5, -1), "unlabelled")
    section = audit_data([labelled, unlabelled], [{"all": np.arange(20)}, {"all": np.arange(5)}], progress=False)
    finding = next(f for f in section["findings"] if f["title"] == "Duplicate images across domains")
    assert finding["evidence"]["pairs"] == 5 and finding["evidence"]["exact"] == 5
    assert finding["evidence"]["label_conflicts"] == 0


def test_the_run_audit_shows_a_data_section():
    batch = make_phantom("A", 40, seed=0, image_size=32)
    ds = _domain(batch.images, batch.labels)
    section = audit_data([ds], [{"all": np.arange(40)}], progress=False)
    audit = build_audit(StageResult(name="m"), classes=ds.classes)
    audit.data = section
    html = render_html(json.loads(audit.to_json()))  # survives the JSON round trip (diagnose audit)
    assert 'id="data"' in html and "Class balance" in html


def test_the_run_audit_data_section_uses_the_runs_splits():
    from adapt.recipe import Recipe
    from domaingap.data_audit_run import run_data_section
    from domaingap.runs import load_domains

    recipe = Recipe.model_validate({"data": {"source": {"kind": "phantom-cxr", "site": "A", "n": 60},
                                             "target": {"kind": "phantom-cxr", "site": "B", "n": 60},
                                             "image_size": 32}, "diagnostics": {"data_audit": True}})
    domains = load_domains(recipe)
    section = run_data_section(domains, recipe.seed, progress=False)
    split = section["domains"][1]["splits"]
    assert {k: v["n"] for k, v in split.items()} == {k: len(v) for k, v in domains.target_split.items()}


def test_bad_input_is_one_line_and_exit_2(written, tmp_path, capsys):
    root, site = written
    ckpt = tmp_path / "other.pt"
    save_checkpoint(ckpt, build_model("small_cnn", 3, 1), classes=["cat", "dog", "bird"], image_size=32)
    one = tmp_path / "one" / "normal"
    one.mkdir(parents=True)
    (one / "a.png").write_bytes(next((site / "normal").glob("*.png")).read_bytes())
    for argv, culprit in (([str(tmp_path / "missing")], "missing"),
                          ([str(site), "--model", str(ckpt)], "other.pt"),
                          ([str(one.parent)], "1 image")):
        code = main(["data", *argv, "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("error:") and culprit in err[0], err


def test_a_missing_extra_names_it(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab now fails
    code = main(["data", "phantom-cxr:A:20", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "error: the data audit needs cleanlab: pip install 'domaingap[data]'"
