"""Several labelled sources (docs/multisource.md): ``data.sources``, msdann, m3sda, similarity
weights, the leave-one-source-out audit section, phantom site C, and their bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from adapt.data.phantom import make_phantom
from adapt.errors import UserError
from adapt.methods.multisource import DomainTagged, features_per_source, moment_distance
from adapt.recipe import validate_recipe
from domaingap.source_weights import sample_weights, similarity_weights
from tests.test_bad_inputs import image_folder, invoke

pytestmark = pytest.mark.usefixtures("one_thread")

A = {"name": "A", "kind": "phantom-cxr", "site": "A", "n": 40}
C = {"name": "C", "kind": "phantom-cxr", "site": "C", "n": 40}


def recipe_file(tmp: Path, data: dict, runs: list | None = None, **method) -> Path:
    raw = {"name": "ms", "data": {"target": {"kind": "phantom-cxr", "site": "B", "n": 40}, "image_size": 32, **data},
           "train": {"epochs": 1, "batch_size": 16, "threads": 1},
           "method": {"runs": runs or [{"name": "adabn", "adabn": True, "epochs": 0}], **method},
           "diagnostics": {"enabled": False}, "output": {"dir": str(tmp / "runs")}}
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ------------------------------------------------------------------------------- bad input

BAD = {
    "empty list": ({"sources": []}, None, "data.sources: the list is empty"),
    "duplicate names": ({"sources": [A, {**C, "name": "A"}]}, None, "data.sources: source names must be unique "
                                                                    "(repeated: A)"),
    "source and sources": ({"source": {"kind": "phantom-cxr", "site": "A"}, "sources": [A, C]}, None,
                           "give data.source or data.sources, not both"),
    "unnamed source": ({"sources": [A, {k: v for k, v in C.items() if k != "name"}]}, None,
                       "data.sources.1.name: is required"),
    "msdann on one source": ({"source": {"kind": "phantom-cxr", "site": "A", "n": 40}},
                             [{"name": "m", "objective": "msdann"}], "method.runs.m.objective: 'msdann' needs two"),
    "weights on one source": ({"sources": [A]}, [{"name": "w", "objective": "dann", "source_weights": "similarity"}],
                              "method.runs.w.source_weights"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_sources_are_one_error_line_exit_2(case, tmp_path, capsys):
    data, runs, culprit = BAD[case]
    code, out, err, _ = invoke("adapt", [str(recipe_file(tmp_path, data, runs)), "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and culprit in lines[0], err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_leave_one_out_needs_two_sources(tmp_path, capsys):
    path = recipe_file(tmp_path, {"sources": [A]}, leave_one_source_out=True)
    code, _, err, _ = invoke("adapt", [str(path), "--quiet"], capsys)
    assert code == 2 and "method.leave_one_source_out: needs two or more" in err


def test_a_source_whose_classes_differ_is_named(tmp_path, capsys):
    a = image_folder(tmp_path / "a", {"cat": 6, "dog": 6})
    b = image_folder(tmp_path / "b", {"cat": 6, "dog": 6}, seed=1)
    c = image_folder(tmp_path / "c", {"cat": 6, "dog": 6, "eel": 6}, seed=2)
    path = recipe_file(tmp_path, {"sources": [{"name": "good", "kind": "imagefolder", "path": str(a)},
                                              {"name": "odd", "kind": "imagefolder", "path": str(c)}],
                                  "target": {"kind": "imagefolder", "path": str(b)}})
    code, _, err, _ = invoke("adapt", [str(path), "--quiet"], capsys)
    assert code == 2 and err.count("\n") == 1 and "data.sources.1 (odd)" in err and "eel" in err, err


def test_one_source_in_the_list_is_the_single_source_case():
    r = validate_recipe({"data": {"sources": [A]}})
    assert r.data.sources is None and r.data.source.site == "A" and r.data.source.n == 40
    both = validate_recipe({"data": {"sources": [A, C]}})
    assert both.data.source is None and [s.name for s in both.data.sources] == ["A", "C"]
    # the resolved recipe validates again (overrides go through a dump)
    assert validate_recipe(both.model_dump(mode="json", by_alias=True)).data.sources == both.data.sources


# ------------------------------------------------------------------------------- phantom site C


def _digest(site: str) -> str:
    b = make_phantom(site, 40, seed=3, image_size=32)
    return hashlib.sha256((b.images.numpy() * 255).round().astype(np.uint8).tobytes()).hexdigest()[:16]


def test_site_c_leaves_sites_a_and_b_unchanged():
    # digests of main before site C existed (same seed, n, size)
    assert _digest("A") == "ecf74e8cf511fae1"
    assert _digest("B") == "a7a3c474c79b6133"
    c = make_phantom("C", 400, seed=0, image_size=64)
    a = make_phantom("A", 400, seed=0, image_size=64)
    assert not torch.equal(c.images, a.images)
    # its marker sits in the top-left corner and correlates weakly with the label (30% / 70%)
    has = c.marker_boxes[:, 0] >= 0
    assert (c.marker_boxes[has, 0] < 16).all()
    rates = [has[c.labels == k].mean() for k in (0, 1)]
    assert 0.2 < rates[0] < 0.4 and 0.6 < rates[1] < 0.8


def test_diagnose_phantom_writes_site_c(tmp_path, capsys):
    code, out, _, _ = invoke("diagnose", ["phantom", str(tmp_path / "c"), "--site", "C", "--n", "6",
                                          "--image-size", "32"], capsys)
    assert code == 0 and len(list((tmp_path / "c").rglob("C_*.png"))) == 6


# ------------------------------------------------------------------------------- the methods


def test_moment_distance_known_answer():
    d = 4
    ones, zeros = torch.ones(5, d), torch.zeros(5, d)
    # sources {1, 0}, target 0: per order, mean source-target distance (2 + 0) / 2 = 1 ... × √d/2;
    # the source pair √d; two orders alike -> 2 · (√d / 2 + √d) = 3√d
    assert moment_distance([ones, zeros], zeros, orders=2).item() == pytest.approx(3 * d ** 0.5)
    assert moment_distance([zeros, zeros], zeros).item() == 0.0


class _BNOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3, affine=False)

    def features(self, x):
        return self.bn(x)


def test_each_source_is_normalised_with_its_own_statistics():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(6, 3), 5 + 3 * torch.randn(6, 3)])
    domain = torch.tensor([0, 1] * 6)
    x = x[torch.tensor([0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11])]  # interleaved sources
    m = _BNOnly().train()
    out = features_per_source(m, x, domain)
    for d in (0, 1):
        part = x[domain == d]
        expect = (part - part.mean(0)) / torch.sqrt(part.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(out[domain == d], expect)


def test_domain_tagged_labels_carry_the_source():
    class DS(torch.utils.data.Dataset):
        classes = ["a", "b", "c"]
        labels = np.array([0, 2, 1])

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(1), int(self.labels[i])

    tagged = DomainTagged(DS(), np.array([1, 0, 1]))
    ys = [tagged[i][1] for i in range(3)]
    assert ys == [3, 2, 4] and [y // 3 for y in ys] == [1, 0, 1] and [y % 3 for y in ys] == [0, 2, 1]


# ------------------------------------------------------------------------------- the weights


def test_similarity_weights_sum_to_one_and_favour_the_closer_source():
    w = similarity_weights({"near": 0.01, "far": 0.5})
    assert sum(w.values()) == pytest.approx(1.0) and w["near"] > w["far"]
    assert similarity_weights({"x": 0.3, "y": 0.3}) == pytest.approx({"x": 0.5, "y": 0.5})


def test_a_source_identical_to_the_target_gets_the_larger_weight(tmp_path):
    """Known truth: source "same" is site B with the target's own seed — the very target
    images — and "other" is site A; the measured weights must favour "same"."""
    from adapt.models import build_model
    from domaingap.runs import load_domains
    from domaingap.source_weights import measure_sources

    same = {"name": "same", "kind": "phantom-cxr", "site": "B", "n": 60}
    other = {"name": "other", "kind": "phantom-cxr", "site": "A", "n": 60}
    recipe = validate_recipe({"data": {"sources": [same, other], "target": {"kind": "phantom-cxr", "site": "B",
                                                                            "n": 60}, "image_size": 32}})
    domains = load_domains(recipe)
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1).eval()
    rec = measure_sources(model, domains, torch.device("cpu"))
    assert rec["weights"]["same"] > rec["weights"]["other"] and rec["mmd2"]["same"] < rec["mmd2"]["other"]
    # drawing by the weights: each source's images together get its weight
    train = domains.source_split["train"]
    sw = sample_weights(train, ["same", "other"], rec["weights"])
    tags = np.array(train.groups["source"])
    assert sw[tags == "same"].sum() == pytest.approx(rec["weights"]["same"])


# ------------------------------------------------------------------------------- end to end


def test_two_sources_end_to_end(tmp_path, capsys):
    runs = [{"name": "adabn", "adabn": True, "epochs": 0},
            {"name": "msdann", "objective": "msdann", "epochs": 1},
            {"name": "m3sda", "objective": "m3sda", "epochs": 1},
            {"name": "dann+w", "objective": "dann", "epochs": 1, "source_weights": "similarity"}]
    path = recipe_file(tmp_path, {"sources": [A, C]}, runs, leave_one_source_out=True)
    raw = yaml.safe_load(path.read_text())
    raw["diagnostics"] = {"enabled": True, "max_samples": 20, "permutations": 10, "attribution": False,
                          "umap": False}
    path.write_text(yaml.safe_dump(raw))
    code, _, err, _ = invoke("adapt", [str(path), "--quiet"], capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "ms"
    metrics = json.loads((run / "metrics.json").read_text())
    src = metrics["sources"]
    assert src["names"] == ["A", "C"] and sum(src["weights"].values()) == pytest.approx(1.0)
    assert set(src["leave_one_out"]["contribution"]) == {"A", "C"}
    assert {"msdann", "m3sda", "dann+w"} <= set(metrics["runs"])
    data = json.loads((run / "data.json").read_text())
    assert data["source"]["sources"] == ["A", "C"]
    audit = json.loads((run / "audit.json").read_text())
    assert audit["sources"]["names"] == ["A", "C"]
    verdict = next(v for v in audit["verdicts"] if v["name"] == "sources")
    assert "A: weight" in verdict["evidence"] and "C: contribution (estimated accuracy)" in verdict["evidence"]


def test_sources_verdict_names_a_source_that_hurts():
    from diagnostics.audit import compute_verdicts

    def sources(rec):
        return {v.name: v for v in compute_verdicts({"name": "m"}, sources=rec)}.get("sources")

    rec = {"names": ["A", "C"], "mmd2": {"A": 0.1, "C": 0.4}, "weights": {"A": 0.7, "C": 0.3},
           "leave_one_out": {"measured_error": {"change_p90": 0.05},
                             "all": {"estimated_accuracy": 0.70},
                             "without": {"A": {"estimated_accuracy": 0.55}, "C": {"estimated_accuracy": 0.80}},
                             "contribution": {"A": 0.15, "C": -0.10}}}
    v = sources(rec)
    assert v.level == "warn" and v.evidence["C: contribution (estimated accuracy)"] == -0.10
    assert "C seems to hurt" in v.summary  # -0.10 lies beyond the measured change error 0.05
    rec["leave_one_out"]["contribution"]["C"] = 0.01
    assert sources(rec).level == "ok"
    assert sources({"names": ["A"]}) is None


def test_a_run_folder_inside_a_source_folder_is_refused(tmp_path, capsys):
    a = image_folder(tmp_path / "a", {"cat": 6, "dog": 6})
    c = image_folder(tmp_path / "c", {"cat": 6, "dog": 6}, seed=2)
    b = image_folder(tmp_path / "b", {"cat": 6, "dog": 6}, seed=1)
    path = recipe_file(tmp_path, {"sources": [{"name": "a", "kind": "imagefolder", "path": str(a)},
                                              {"name": "c", "kind": "imagefolder", "path": str(c)}],
                                  "target": {"kind": "imagefolder", "path": str(b)}})
    raw = yaml.safe_load(path.read_text())
    raw["output"] = {"dir": str(c), "name": "run"}
    path.write_text(yaml.safe_dump(raw))
    before = sorted(p.name for p in c.rglob("*"))
    code, _, err, _ = invoke("adapt", [str(path), "--quiet"], capsys)
    assert code == 2 and "data.sources" in err, err
    assert sorted(p.name for p in c.rglob("*")) == before
