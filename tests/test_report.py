"""The HTML audit report: self-contained, small, escaped, and it really renders in a browser."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from diagnostics.audit import Audit, build_audit
from diagnostics.report import render_html, write_report

XSS = "<img src=x onerror=alert(1)>"
CHROMIUM = "/usr/bin/chromium"


# --------------------------------------------------------------------------- synthetic audit


def _metrics(rng, classes, acc, n=200):
    k = len(classes)
    per = n // k
    cm = np.zeros((k, k), dtype=int)
    for i in range(k):
        right = int(round(per * acc))
        cm[i, i] = right
        wrong = rng.multinomial(per - right, np.ones(k - 1) / (k - 1)) if k > 1 else []
        cm[i, [j for j in range(k) if j != i]] = wrong
    recall = {c: float(cm[i, i] / cm[i].sum()) for i, c in enumerate(classes)}
    return {"accuracy": float(np.trace(cm) / cm.sum()), "macro_f1": float(acc - 0.01),
            "per_class_recall": recall, "confusion": cm.tolist(), "n": int(cm.sum())}


def _gallery(rng, classes, n=6, size=32):
    items = []
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = 0.3 + 0.4 * np.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 90.0) + 0.05 * rng.standard_normal((size, size))
        img[2:7, 2:7] = 1.0  # the planted corner marker
        amap = np.exp(-((xx - 4) ** 2 + (yy - 4) ** 2) / 8.0) + 0.05 * rng.random((size, size))
        item = {"map": amap.tolist(), "label": classes[i % len(classes)], "pred": classes[(i + i // 3) % len(classes)]}
        if i == 0:  # one item as a PNG, the rest as pixel lists
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, format="PNG")
            item["image_png_b64"] = base64.b64encode(buf.getvalue()).decode("ascii")
        else:
            item["image"] = np.clip(img, 0, 1)[None].tolist()  # [1,H,W]
        items.append(item)
    return items


def _stage(name, rng, classes, *, src_acc, tgt_acc, mmd2, auc, collapsed, marker_share):
    k = len(classes)
    hist = {c: 1.0 / k for c in classes}
    if collapsed:
        hist = {c: (0.94 if i == 0 else 0.06 / (k - 1)) for i, c in enumerate(classes)}
    n_pts = 300
    domain = ["source"] * (n_pts // 2) + ["target"] * (n_pts // 2)
    label = [classes[i % k] for i in range(n_pts)]
    coords = rng.standard_normal((n_pts, 2)) + np.array([[3.0 if d == "target" else 0.0, 0.0] for d in domain])
    size = 32
    yy, xx = np.mgrid[0:size, 0:size]
    mean_map = np.exp(-((xx - 4) ** 2 + (yy - 4) ** 2) / 10.0)
    return {
        "name": name,
        "metrics": {"source_test": _metrics(rng, classes, src_acc), "target_test": _metrics(rng, classes, tgt_acc)},
        "label_free": {"im_score": 0.4 + 0.2 * tgt_acc, "snd": 1.1 + tgt_acc},
        "gap": {
            "mmd": {"mmd2": mmd2, "p_value": 0.0009 if mmd2 > 0.05 else 0.21, "bandwidth": 3.2,
                    "permutations": 1000, "n_x": 400, "n_y": 400},
            "frechet": {"distance": 200 * mmd2, "ci_low": 180 * mmd2, "ci_high": 230 * mmd2,
                        "n_source": 400, "n_target": 400, "dim": 512, "extractor": "model:penultimate"},
            "domain_classifier": {"auc": auc, "accuracy": auc - 0.05, "proxy_a_distance": 2 * (1 - 2 * (1 - auc))},
            "transport": {"distance": 10 * mmd2, "method": "emd2", "n_points": 800},
        },
        "collapse": {
            "source": {"histogram": {c: 1.0 / k for c in classes}, "marginal_entropy": float(np.log(k)),
                       "log_k": float(np.log(k)), "largest_share": 1.0 / k, "im_score": 0.6, "mean_confidence": 0.93},
            "target": {"histogram": hist, "marginal_entropy": 0.3 if collapsed else float(np.log(k)),
                       "log_k": float(np.log(k)), "largest_share": max(hist.values()), "im_score": 0.2,
                       "mean_confidence": 0.88},
            "bbse_target_mix": {c: 1.0 / k for c in classes},
            "collapsed": collapsed,
            "reason": "94% of target predictions in one class while BBSE estimates a balanced mix" if collapsed else "",
        },
        "spurious": {
            dom: {
                "verdict": {"level": "fail" if marker_share > 0.3 else "ok", "flagged": marker_share > 0.3,
                            "region": "top-left corner", "share": marker_share, "flips": int(100 * marker_share),
                            "reason": f"{100 * marker_share:.0f}% of attribution in a corner holding 3% of the image"},
                "hot_box": [2, 2, 7, 7],
                "border_share": marker_share + 0.05,
                "border_area_share": 0.23,
                "occlusion": {"n": 200, "flips": int(100 * marker_share), "flip_rate": marker_share / 2,
                              "accuracy_before": 0.9, "accuracy_after": 0.9 - marker_share / 2},
                "mean_maps": {c: (mean_map * (1 + i)).tolist() for i, c in enumerate(classes)},
                "gallery": _gallery(rng, classes),
            }
            for dom in ("source", "target")
        },
        "embedding": {"coords": coords.tolist(), "domain": domain, "label": label},
        "groups": {
            "sex": {"female": {"accuracy": tgt_acc - 0.04, "macro_f1": tgt_acc - 0.05, "n": 90},
                    "male": {"accuracy": tgt_acc + 0.03, "macro_f1": tgt_acc + 0.02, "n": 110},
                    XSS: {"accuracy": tgt_acc, "macro_f1": tgt_acc, "n": 3}},
        },
    }


def full_audit(classes=("normal", "opacity", XSS)) -> Audit:
    """A synthetic audit with every section filled, user strings hostile on purpose."""
    rng = np.random.default_rng(0)
    classes = list(classes)
    before = _stage("source-only", rng, classes, src_acc=0.96, tgt_acc=0.712, mmd2=0.31, auc=0.97,
                    collapsed=True, marker_share=0.62)
    after = _stage("adapted (dann+histogram)", rng, classes, src_acc=0.951, tgt_acc=0.885, mmd2=0.04, auc=0.61,
                   collapsed=False, marker_share=0.12)
    run = {
        "name": f"xray {XSS}",
        "recipe_text": f"# recipe\nsource: phantom-cxr:A\ntarget: {XSS}\nurl: https://example.org/x\n"
                       "method: {name: dann, lambda: 1.0}\n",
        "seed": 0, "device": "cpu", "versions": {"torch": "2.x", XSS: "1.0"}, "created": "2025-01-01 00:00 UTC",
    }
    table = [
        {"method": "source_only", "seed": 0, "source_acc": 0.96, "target_acc": 0.712, "selected_epoch": 7, "selector": "val"},
        {"method": XSS, "seed": 0, "source_acc": 0.951, "target_acc": 0.885, "selected_epoch": 11, "selector": "im"},
    ]
    return build_audit(before, after, classes=classes, run=run, methods_table=table)


@pytest.fixture(scope="module")
def audit() -> Audit:
    return full_audit()


@pytest.fixture(scope="module")
def html(audit) -> str:
    return render_html(audit)


# --------------------------------------------------------------------------- static checks


def test_report_is_self_contained_small_and_states_the_verdict(html, audit):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    assert "@import" not in html and "url(" not in html
    assert len(html.encode("utf-8")) < 5 * 1024 * 1024
    # the transfer verdict's sentence, with its numbers, is on the page
    transfer = next(v for v in audit.verdicts if v.name == "negative_transfer")
    assert transfer.level == "ok"
    tb, ta = (s.metrics["target_test"]["accuracy"] for s in (audit.before, audit.after))
    assert transfer.summary.startswith(f"Adaptation helped: target accuracy {100 * tb:.1f}% → {100 * ta:.1f}%")
    assert transfer.summary in html
    # every section made it in; figures are inline PNGs
    for section in ("verdict", "accuracy", "gap", "collapse", "embedding", "attribution", "groups", "methods", "run"):
        assert f'id="{section}"' in html
    n_imgs = len(re.findall(r"<img ", html))
    assert n_imgs == len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', html)) >= 20
    assert "p &lt; 0.001" in html  # p-values formatted, escaped


def test_hostile_names_are_escaped_everywhere(html):
    assert XSS not in html
    assert "onerror=alert" not in html.replace("&lt;img src=x onerror=alert(1)&gt;", "")
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    # the recipe (with a URL inside) is shown as text in a <pre>, not a link
    assert "https://example.org/x" in html
    assert 'href="https://example.org' not in html


def test_write_report_writes_html_and_the_json_it_shows(tmp_path, audit):
    html_path, json_path = write_report(audit, tmp_path / "out" / "audit.html")
    assert html_path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert json_path == tmp_path / "out" / "audit.json"
    assert data["overall"]["level"] == audit.overall.level
    assert data["after"]["metrics"]["target_test"]["accuracy"] == pytest.approx(
        audit.after.metrics["target_test"]["accuracy"])
    # the JSON holds the whole audit: it rebuilds to the same data
    assert Audit.from_dict(data).to_dict() == data
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_gap_only_report_omits_missing_sections():
    """`diagnose gap --html`: one model, gap statistics only, no labels on the target."""
    before = {"name": "pixels", "gap": {"mmd": {"mmd2": 0.2, "p_value": 0.003, "permutations": 500,
                                                "n_x": 100, "n_y": 100}}}
    html = render_html(build_audit(before, None, classes=["a", "b"]))
    assert "Domain gap report" in html and "0.003" in html
    for absent in ('id="accuracy"', 'id="embedding"', 'id="attribution"', 'id="groups"', 'id="methods"'):
        assert absent not in html
    assert "Source and target differ measurably" in html
    # the report renders what was judged; it never judges a dict that has no verdicts
    with pytest.raises(ValueError, match="build_audit"):
        render_html({"before": before, "classes": ["a", "b"]})


# --------------------------------------------------------------------------- in a real browser

_PROBE = """<script>
window.__errors = [];
window.__xss = false;
window.alert = function () { window.__xss = true; };
window.addEventListener('error', function (e) { window.__errors.push('error: ' + (e.message || (e.target && e.target.src) || '?')); }, true);
(function () { var ce = console.error; console.error = function () {
  window.__errors.push('console: ' + Array.prototype.join.call(arguments, ' ')); ce.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; });
  var out = document.createElement('pre'); out.id = '__probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: bad, errors: window.__errors, xss: window.__xss});
  document.body.appendChild(out);
});
</script>"""


def _chromium_or_skip() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} missing in CI: run .ci/install_chromium.sh")
    pytest.skip(f"{CHROMIUM} not installed (install with .ci/install_chromium.sh)")


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def probe_in_chromium(binary: str, page: str, tmp_path: Path) -> dict:
    """Open the HTML text ``page`` in headless Chromium with the probe (in a copy only: a page
    itself carries no script); return what it saw (images, broken ones, errors, xss) after
    checking the console stayed free of errors."""
    import html as _html

    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + _PROBE, 1), encoding="utf-8")
    dump = _chromium(binary, tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    m = re.search(r'<pre id="__probe">(.*?)</pre>', dump.stdout, re.S)
    assert m, f"probe missing from the dumped DOM; stderr:\n{dump.stderr[-3000:]}"
    assert not re.search(r"Uncaught|:ERROR:CONSOLE|CONSOLE\(\d+\).*error", dump.stderr, re.I), dump.stderr[-3000:]
    return json.loads(_html.unescape(m.group(1)))


def test_report_renders_in_headless_chromium(tmp_path, html):
    binary = _chromium_or_skip()
    page = tmp_path / "audit.html"
    page.write_text(html, encoding="utf-8")
    probe = probe_in_chromium(binary, html, tmp_path)
    assert probe["images"] == html.count("<img ")
    assert probe["broken"] == [], probe
    assert probe["errors"] == [], probe
    assert probe["xss"] is False

    shot = tmp_path / "shot.png"
    run = _chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000, run.stderr[-3000:]
    assert not re.search(r"Uncaught", run.stderr)
    keep = os.environ.get("DOMAINGAP_REPORT_SHOT")
    if keep:  # let a person look at it
        shutil.copy(shot, keep)
        shutil.copy(page, Path(keep).with_suffix(".html"))


def test_partial_and_malformed_sections_are_left_out_not_fatal():
    before = {
        "name": "m",
        "metrics": {"source_test": {"accuracy": 0.9, "macro_f1": 0.88, "n": 10}, "target_test": None},
        "collapse": None,
        "gap": {"mmd": None, "frechet": {"distance": 3.0}},
        "spurious": {"source": {"verdict": None, "gallery": [{"image_png_b64": "not base64!", "label": "a"},
                                                             {"map": [[0.0, 1.0], [1.0, 0.0]], "label": "a"}],
                                "mean_maps": {"a": []}}},
        "embedding": {"coords": [], "domain": [], "label": []},
        "groups": {"site": {}},
    }
    html = render_html(build_audit(before, {"name": "after", "metrics": None}, classes=["a", "b"]))
    assert 'id="accuracy"' in html and "90.0%" in html and "Target accuracy" not in html
    assert 'id="embedding"' not in html and 'id="collapse"' not in html
    # the bad PNG is dropped; the map-only example still shows
    assert html.count('alt="Example of a"') == 1


def test_report_reads_the_audit_through_its_public_names_only():
    # The report formats what the audit's contract and wording expose; reaching into
    # the audit's private helpers (``_audit._num``) ties the two files' insides together.
    import ast

    import diagnostics.report as report_pkg

    for path in sorted(Path(report_pkg.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diagnostics"):
                for a in node.names:
                    if (node.module or "").startswith("diagnostics.audit"):
                        assert not a.name.startswith("_"), f"{path.name} imports {node.module}.{a.name}"
                    elif a.name == "audit":
                        aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name.startswith("diagnostics.audit") and a.asname}
        private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                   and isinstance(n.value, ast.Name) and n.value.id in aliases and n.attr.startswith("_")]
        assert not private, f"{path.name} uses the audit's private {private}"


def test_collapse_pill_shows_the_level_the_verdict_uses():
    """One collapse level table: a covariate shift the check raised to "fail" (a pile-up) is a
    red pill in the report, as it is a failed finding in the verdicts — not the amber the
    template once re-derived from the verdict name."""
    from diagnostics.audit import compute_verdicts
    a = full_audit()
    a.before.collapse.update({"verdict": "covariate_shift", "level": "fail", "collapsed": False})
    html = render_html(a)
    block = html.split('id="collapse"', 1)[1].split("</section>", 1)[0]
    first_pill = re.search(r'<span class="pill (\w+)"[^>]*>([^<]*)</span>', block)
    assert first_pill.group(2).strip() == "covariate shift"
    assert first_pill.group(1) == "fail"
    collapse = [v for v in compute_verdicts(a.before) if v.name == "collapse"]
    assert collapse and collapse[0].level == "fail"


def test_rendering_a_judged_audit_judges_nothing(monkeypatch):
    """The report renders, never decides: with every policy, compute_verdicts and the
    banner made to fail, a judged audit (object or its JSON) still renders, showing the
    verdicts and the banner as they were judged."""
    import diagnostics.audit as audit_pkg
    import diagnostics.audit.build as build
    import diagnostics.audit.contract as contract
    import diagnostics.audit.verdict as verdict
    from diagnostics.audit import POLICIES, Policy

    a = full_audit()
    data = json.loads(a.to_json())

    def judging(*args, **kwargs):
        raise AssertionError("the report judged")

    monkeypatch.setattr(build, "POLICIES", tuple(Policy(p.name, judging, p.question) for p in POLICIES))
    import diagnostics.report.render as render

    for module in (build, contract, verdict, audit_pkg, render):
        for name in ("compute_verdicts", "overall_verdict", *(p.judge.__name__ for p in POLICIES)):
            monkeypatch.setattr(module, name, judging, raising=False)
    for page in (render_html(a), render_html(data)):
        assert a.overall.title in page and a.verdicts[0].title in page
        assert f'class="banner {a.overall.level}"' in page


def test_gap_table_direction_follows_the_gap_verdicts_rule():
    # the table's "closer"/"further" is the gap verdict's rule (a move within
    # gap_rel_change = 2 % of the before value is "unchanged"; an AUC counts from chance),
    # not a second rule of the report's (was: any decrease was "closer")
    from diagnostics.audit.gap_policy import gap_direction
    from diagnostics.report.render import build_view

    assert gap_direction(0.800, 0.790, 0.02, auc=True) == "unchanged"  # 1.25 % < 2 %
    assert gap_direction(0.800, 0.700, 0.02, auc=True) == "closer"
    assert gap_direction(0.45, 0.49, 0.02, auc=True) == "unchanged"  # both at chance
    assert gap_direction(-0.01, 0.0, 0.02) == "unchanged"  # MMD² noise below 0 is 0
    assert gap_direction(0.04, 0.31, 0.02) == "further"
    rng = np.random.default_rng(0)
    classes = ["a", "b"]
    before = _stage("source-only", rng, classes, src_acc=0.9, tgt_acc=0.6, mmd2=0.31, auc=0.800,
                    collapsed=False, marker_share=0.1)
    after = _stage("adapted", rng, classes, src_acc=0.9, tgt_acc=0.8, mmd2=0.04, auc=0.790,
                   collapsed=False, marker_share=0.1)
    rows = {r["label"]: r["direction"] for r in build_view(build_audit(before, after, classes=classes))["gap"]["rows"]}
    assert rows["Domain-classifier AUC"] == "unchanged" and rows["MMD² (Gaussian kernel)"] == "closer"
