"""The drift history of a run as ONE self-contained HTML page (``diagnose drift-report RUN``).

It renders a :class:`~diagnostics.drift_history.DriftHistory` — every recorded drift
check, oldest first — and computes nothing: a timeline figure of the four tests'
Holm-adjusted p-values against the level alpha of each check (the dashed line: below it
a test fires), the Fréchet distance and the confidence drop; a table with one row per
check (time, batch, images, verdict, adjusted p-values, the thresholds it was held to:
alpha and the ``--fail-on`` gate with what fired); the reference the checks compare
with. Like the audit (:mod:`diagnostics.report.render`): Jinja2 with autoescape on
(batch names and paths reach the page escaped), the stylesheet and the figure inline, no
script and no external URL; the JSON of everything shown is written next to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapt.io import atomic_write_json, atomic_write_text
from diagnostics.drift_history import TESTS, DriftHistory
from diagnostics.report import figures
from diagnostics.report.formatting import fmt_num, fmt_p
from diagnostics.report.render import template_environment

__all__ = ["render_drift_history", "write_drift_history"]

_LEVEL = {"drift": "fail", "inconclusive": "warn", "no drift": "ok"}
#: the table's column heads for the four tests (diagnostics.drift_history.TESTS, short)
_COLUMNS = {"mmd": "MMD", "classifier": "classifier", "predictions": "classes", "confidence": "confidence"}


def _when(iso: str) -> str:
    """``2026-12-07T03:20:01.123+00:00`` -> ``2026-12-07 03:20:01 UTC``."""
    return iso.replace("T", " ").split(".")[0].split("+")[0] + (" UTC" if "+00:00" in iso or iso.endswith("Z") else "")


def _row(i: int, c) -> dict[str, Any]:
    return {
        "i": i + 1, "date": _when(c.checked_at)[:10], "time": _when(c.checked_at)[11:], "batch": c.batch,
        "file": c.file,
        "n": fmt_num(c.n_batch) if c.n_batch is not None else "—",
        "verdict": c.verdict, "level": _LEVEL.get(c.verdict, "warn"), "text": c.text,
        "alpha": "—" if c.alpha is None else f"{c.alpha:g}",
        "tests": [{"p": fmt_p(c.p_adjusted.get(k)),
                   "fires": c.alpha is not None and c.p_adjusted.get(k) is not None and c.p_adjusted[k] <= c.alpha}
                  for k in TESTS],
        "frechet": fmt_num(c.frechet) if c.frechet is not None else "—",
        "auc": "—" if c.auc is None else f"{c.auc:.2f}",
        "confidence": "—" if c.confidence_reference is None or c.confidence_batch is None
        else f"{c.confidence_reference:.2f} → {c.confidence_batch:.2f}",
        "collapsed": c.collapsed, "fail_on": c.fail_on, "fired": c.fired,
    }


def build_drift_view(history: DriftHistory) -> dict[str, Any]:
    checks = history.checks
    counts = {v: sum(c.verdict == v for c in checks) for v in ("drift", "inconclusive", "no drift")}
    last = checks[-1]
    chart = figures.drift_timeline(
        [f"{i + 1}. {_when(c.checked_at)[5:16]}" for i, c in enumerate(checks)],
        {TESTS[k]: [c.p_adjusted.get(k) for c in checks] for k in TESTS},
        [c.alpha for c in checks], [c.verdict for c in checks],
        [c.frechet for c in checks], [c.confidence_drop for c in checks])
    ref = history.reference or {}
    meta = ref.get("meta") if isinstance(ref.get("meta"), dict) else {}
    reference = [(k, str(v)) for k, v in (("images", ref.get("n")), ("model", meta.get("model")),
                                          ("domain", meta.get("domain")), ("features", ref.get("extractor")),
                                          ("classes", ", ".join(map(str, ref.get("classes") or [])) or None))
                 if v not in (None, "")]
    gates = sorted({c.fail_on for c in checks if c.fail_on})
    return {
        "title": "Drift history", "run_dir": history.run_dir, "n_checks": len(checks), "counts": counts,
        "latest": {"level": _LEVEL.get(last.verdict, "warn"), "verdict": last.verdict, "text": last.text,
                   "when": _when(last.checked_at), "batch": last.batch},
        "chart": chart, "tests": [_COLUMNS[k] for k in TESTS], "rows": [_row(i, c) for i, c in enumerate(checks)],
        "alphas": sorted({f"{c.alpha:g}" for c in checks if c.alpha is not None}), "gates": gates,
        "reference": reference, "skipped": history.skipped,
    }


def render_drift_history(history: DriftHistory) -> str:
    """The page (inline CSS and PNG, no script, no URL)."""
    return template_environment().get_template("drift_history.html").render(**build_drift_view(history))


def write_drift_history(history: DriftHistory, html_path: str | Path) -> tuple[Path, Path]:
    """Write the page and, next to it (``.json``), the history it shows; atomically."""
    html_path = Path(html_path)
    json_path = html_path.with_suffix(".json")
    html = render_drift_history(history)
    atomic_write_json(json_path, history.to_dict())
    atomic_write_text(html_path, html)
    return html_path, json_path
