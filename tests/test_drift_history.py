"""``diagnose drift-report RUN``: every drift check recorded for a run on one self-contained
page — the checks in the order they were made, each with the verdict its JSON records, the
adjusted p-values against the level alpha and the --fail-on gate it was held to — which
opens in headless Chromium without an error; a damaged file is left out, not fatal; a
hostile batch name is escaped; bad input is one line, exit 2."""

from __future__ import annotations

import html as _html
import json
import re

import pytest

from adapt.recipe import load_recipe
from domaingap.diagnose import main as diagnose
from domaingap.pipeline import run_recipe
from tests.test_report import _chromium, _chromium_or_skip, probe_in_chromium

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

RECIPE = """
name: dh
seed: 0
data:
  source: {kind: phantom-cxr, site: A, n: 160}
  target: {kind: phantom-cxr, site: A, n: 240}
  image_size: 32
train: {epochs: 1, batch_size: 32, device: cpu, patience: null}
method:
  runs:
    - {name: adabn, adabn: true, epochs: 0}
diagnostics: {enabled: false}
output: {dir: OUT}
"""
#: (batch, verdict): held-out site A, site B (the shifted scanner), a batch too small to judge
BATCHES = [("phantom-cxr:A:200", "no drift"), ("phantom-cxr:B:200", "drift"), ("phantom-cxr:A:40", "inconclusive")]
GATE = "drift, conf_drop>0.2"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift_history")
    path = tmp / "recipe.yaml"
    path.write_text(RECIPE.replace("OUT", str(tmp / "runs")))
    run = run_recipe(load_recipe(path), progress=False).run_dir
    for batch, _ in BATCHES:
        assert diagnose(["drift", str(run), "--batch", batch, "--permutations", "200", "--seed", "5", "--quiet",
                         "--fail-on", GATE]) in (0, 1)
    return run


def _rows(page: str) -> list[str]:
    return re.findall(r'<tr id="check-\d+">(.*?)</tr>', page, re.S)


def test_the_page_shows_every_check_in_order_with_its_verdict_and_thresholds(run_dir, capsys):
    checks = [json.loads(p.read_text()) for p in sorted((run_dir / "drift").glob("*.json"))]  # names: times
    assert [c["checked_at"] for c in checks] == sorted(c["checked_at"] for c in checks)
    assert [c["verdict"]["drift"] for c in checks] == [v == "drift" for _, v in BATCHES]
    assert diagnose(["drift-report", str(run_dir)]) == 0
    assert "3 drift checks (1 drift, 1 inconclusive, 1 no drift); latest: inconclusive" in capsys.readouterr().out
    page = (run_dir / "drift_history.html").read_text(encoding="utf-8")
    rows = _rows(page)
    assert len(rows) == 3
    for row, (batch, verdict), check in zip(rows, BATCHES, checks):
        assert batch in row and f'<span class="pill' in row and f">{verdict}</span>" in row
        assert f"<code>{_html.escape(GATE)}</code>" in row  # the gate it was held to
        fired = [k for k in ("mmd", "classifier", "predictions", "confidence")
                 if check[k]["p_adjusted"] <= check["verdict"]["alpha"]]
        assert row.count(' fires"') == len(fired)  # the tests below alpha, marked
    assert "alpha = 0.01" in page and 'id="timeline"' in page
    # self-contained: the stylesheet and the figure inline, no script, nothing fetched
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)
    shown = json.loads((run_dir / "drift_history.json").read_text())
    assert [c["verdict"] for c in shown["checks"]] == [v for _, v in BATCHES]


def test_a_damaged_file_is_left_out_and_a_hostile_batch_name_is_escaped(run_dir, tmp_path, capsys):
    drift = run_dir / "drift"
    (drift / "garbage.json").write_text("{not json")
    latest = json.loads(sorted(drift.glob("2*.json"))[-1].read_text())
    latest["batch"]["domain"] = "<script>alert(1)</script>"
    latest["checked_at"] = "2999-01-01T00:00:00.000+00:00"
    (drift / "zz_hostile.json").write_text(json.dumps(latest))
    try:
        out = tmp_path / "page.html"
        assert diagnose(["drift-report", str(run_dir), "--out", str(out)]) == 0
        assert "note: left out garbage.json" in capsys.readouterr().out
        page = out.read_text(encoding="utf-8")
        assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert len(_rows(page)) == 4 and "garbage.json" in page
        assert "&lt;script&gt;" in _rows(page)[-1]  # sorted by the time of the check
    finally:
        (drift / "garbage.json").unlink()
        (drift / "zz_hostile.json").unlink()


def test_bad_input_is_one_line_exit_2(run_dir, tmp_path, capsys):
    assert diagnose(["drift-report", str(tmp_path)]) == 2  # a folder without checks
    assert diagnose(["drift-report", str(run_dir), "--out", str(run_dir / "drift" / "page.html")]) == 2
    assert diagnose(["drift-report", str(run_dir), "--out", str(tmp_path / "page.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err), err
    assert "no drift checks recorded" in err[0]


def test_the_page_renders_in_headless_chromium(run_dir, tmp_path):
    binary = _chromium_or_skip()
    assert diagnose(["drift-report", str(run_dir), "--out", str(tmp_path / "history.html")]) == 0
    page = (tmp_path / "history.html").read_text(encoding="utf-8")
    probe = probe_in_chromium(binary, page, tmp_path)
    assert probe["images"] == page.count("<img ") == 1
    assert probe["broken"] == [] and probe["errors"] == [] and probe["xss"] is False, probe
    shot = tmp_path / "shot.png"
    run = _chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2200",
                    (tmp_path / "history.html").as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000, run.stderr[-3000:]


def test_two_checks_in_the_same_second_keep_both_files_in_time_order(tmp_path):
    from diagnostics.drift_history import check_path

    first = check_path(tmp_path)
    first.parent.mkdir(parents=True)
    first.write_text("{}")
    second = check_path(tmp_path)
    if second.stem[:16] == first.stem[:16]:  # the same second (almost always)
        assert second != first and sorted([second.name, first.name]) == [first.name, second.name]
