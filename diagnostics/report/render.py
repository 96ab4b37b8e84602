"""Render an :class:`~diagnostics.audit.Audit` as ONE self-contained HTML file.

The renderer turns the audit (plain data) into a view model of formatted strings and
``data:`` URIs, then fills the Jinja2 template ``templates/report.html`` with autoescape
on: every user-derived string (class names, paths, group values, the recipe) reaches the
page escaped. Figures are inline base64 PNGs, the stylesheet is inlined, there is no
script and no external URL, so the file opens anywhere, offline, and can be archived.
It computes no statistics and judges nothing: the verdicts, the banner and every level
shown come from the audit as judged (:func:`diagnostics.audit.build_audit`; the levels of
a section from its typed evidence, :mod:`diagnostics.audit.evidence`); it only
formats what the audit holds.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import jinja2

from adapt.io import atomic_write_text
from diagnostics.audit import Audit, StageResult, Verdict, number, p_phrase, section
from diagnostics.audit.evidence import Collapse, SpuriousDomain
from diagnostics.audit.gap_policy import gap_direction
from diagnostics.audit.thresholds import AuditThresholds
from diagnostics.report import figures
from diagnostics.report.deployment_text import deployment_text
from diagnostics.report.fairness_view import fairness_section
from diagnostics.report.formatting import (as_float, fmt_num, fmt_pct, fmt_points, fmt_value, key_label,
                                          scalar_facts)

_TEMPLATES = Path(__file__).resolve().parent / "templates"
_SPLITS = (("source_test", "source"), ("target_test", "target"))


# --------------------------------------------------------------------------- sections


def _stages(a: Audit) -> list[StageResult]:
    return [s for s in (a.before, a.after) if s is not None]


def _metrics_section(a: Audit) -> dict | None:
    stages = _stages(a)
    if not any(s.metrics for s in stages):
        return None
    rows = []
    for split, split_name in _SPLITS:
        for key, key_name in (("accuracy", "accuracy"), ("macro_f1", "macro-F1")):
            vals = [number(s.metrics, split, key) for s in stages]
            if all(v is None for v in vals):
                continue
            n = [number(s.metrics, split, "n") for s in stages]
            rows.append({
                "label": f"{split_name.capitalize()} {key_name}",
                "values": [fmt_pct(v) for v in vals],
                "n": next((fmt_num(int(x)) for x in n if x is not None), "—"),
                "delta": fmt_points(vals[0], vals[-1]) if len(vals) == 2 else "",
                "delta_sign": _sign(vals[0], vals[-1]) if len(vals) == 2 else "",
            })
    # per-class recall: one row per class, a column per (split, stage)
    recall_cols = []
    for split, split_name in _SPLITS:
        for s in stages:
            rec = section(s.metrics, split, "per_class_recall")
            if rec:
                recall_cols.append((f"{split_name} · {_stage_label(a, s)}", rec))
    classes = list(a.classes) or sorted({c for _, r in recall_cols for c in r})
    recall_rows = [{"cls": c, "values": [fmt_pct(r.get(c)) for _, r in recall_cols]} for c in classes]
    confusions = []
    for split, split_name in _SPLITS:
        for s in stages:
            cm = section(s.metrics, split).get("confusion")
            if cm:
                uri = figures.confusion_matrix(cm, a.classes)
                if uri:
                    confusions.append({"title": f"{split_name.capitalize()} — {s.name}", "uri": uri})
    chart = figures.metric_bars([(s.name, s.metrics) for s in stages])
    return {
        "rows": rows,
        "chart": chart,
        "recall_head": [c for c, _ in recall_cols],
        "recall_rows": recall_rows if recall_cols else [],
        "confusions": confusions,
    }


def _stage_label(a: Audit, s: StageResult) -> str:
    if a.after is None:
        return "model"
    return "before" if s is a.before else "after"


def _sign(a: Any, b: Any) -> str:
    va, vb = as_float(a), as_float(b)
    if va is None or vb is None or abs(vb - va) < 0.0005:
        return ""
    return "up" if vb > va else "down"


_GAP_ROWS = (
    # (section key, headline field, row label)
    ("mmd", "mmd2", "MMD² (Gaussian kernel)"),
    ("classifier_test", "auc", "Classifier two-sample test (AUC)"),
    ("frechet", "distance", "Fréchet distance"),
    ("domain_classifier", "auc", "Domain-classifier AUC"),
    ("transport", "distance", "Transport distance"),
)


def _gap_detail(key: str, d: Mapping) -> str:
    if key == "mmd":
        bits = []
        if d.get("p_value") is not None:
            if as_float(d["p_value"]) is not None:
                bits.append(p_phrase(as_float(d["p_value"])))
        if d.get("method") == "block":
            bits.append(str(d.get("test") or "block test"))
        elif d.get("permutations") is not None:
            bits.append(f"{fmt_num(d['permutations'])} permutations")
        if d.get("bandwidth") is not None:
            bits.append(f"σ = {fmt_num(d['bandwidth'])}")
        if d.get("n_x") is not None and d.get("n_y") is not None:
            bits.append(f"n = {fmt_num(d['n_x'])} / {fmt_num(d['n_y'])}")
        return " · ".join(bits)
    if key == "classifier_test":
        bits = []
        if as_float(d.get("p_value")) is not None:
            bits.append(p_phrase(as_float(d["p_value"])))
        if d.get("permutations") is not None:
            bits.append(f"{fmt_num(d['permutations'])} permutations (refit)")
        return " · ".join(bits)
    if key == "frechet":
        bits = []
        if d.get("ci_low") is not None and d.get("ci_high") is not None:
            centre = f"bias-corrected {fmt_num(d['ci_centre'])}, " if d.get("ci_centre") is not None else ""
            bits.append(f"{centre}95% CI {fmt_num(d['ci_low'])}–{fmt_num(d['ci_high'])}")
        if d.get("n_source") is not None and d.get("n_target") is not None:
            bits.append(f"n = {fmt_num(d['n_source'])} / {fmt_num(d['n_target'])}")
        if d.get("dim") is not None:
            bits.append(f"d = {fmt_num(d['dim'])}")
        if d.get("extractor"):
            bits.append(str(d["extractor"]))
        return " · ".join(bits)
    if key == "domain_classifier":
        bits = []
        if d.get("accuracy") is not None:
            bits.append(f"accuracy {fmt_pct(d['accuracy'])}")
        if d.get("proxy_a_distance") is not None:
            bits.append(f"proxy A-distance {fmt_num(d['proxy_a_distance'])}")
        return " · ".join(bits)
    if key == "transport":
        bits = []
        if d.get("method"):
            bits.append(str(d["method"]))
        if d.get("n_points") is not None:
            bits.append(f"{fmt_num(d['n_points'])} points")
        return " · ".join(bits)
    return ""


def _gap_section(a: Audit) -> dict | None:
    stages = _stages(a)
    rel_change = float(a.thresholds.get("gap_rel_change", AuditThresholds().gap_rel_change))
    rows = []
    for key, field, label in _GAP_ROWS:
        secs = [section(s.gap, key) for s in stages]
        if not any(secs):
            continue
        cells = []
        vals = []
        for sec in secs:
            v = number(sec, field)
            vals.append(v)
            shown = (f"{v:.3f}" if key in ("domain_classifier", "classifier_test") and v is not None
                     else fmt_num(v))
            cells.append({"value": shown, "detail": _gap_detail(key, sec) if sec else ""})
        change, direction = "", ""
        if len(vals) == 2 and vals[0] is not None and vals[1] is not None:
            # before and after live in different feature spaces (the source model's, the
            # adapted model's): only scale-free figures get a direction, by the gap
            # verdict's own rule (gap_direction), so the table never disagrees with it
            if key in ("domain_classifier", "classifier_test", "mmd"):
                auc = key != "mmd"
                change = (f"{vals[1] - vals[0]:+.3f}" if auc
                          else f"{100 * (vals[1] - vals[0]) / abs(vals[0]):+.0f}%" if vals[0] else "")
                direction = gap_direction(vals[0], vals[1], rel_change, auc=auc)
            else:
                change, direction = "", "other feature space: not comparable"
        rows.append({"label": label, "cells": cells, "change": change, "direction": direction})
    if not rows:
        return None
    return {"rows": rows}


def _collapse_section(a: Audit) -> list[dict]:
    out = []
    for s in _stages(a):
        c = s.collapse
        if not c:
            continue
        found = Collapse.parse(c)
        prior = section(c, "source_prior") or section(c, "source", "histogram")
        prior_name = "source prior" if section(c, "source_prior") else "source predictions"
        # the true target mix (labels known) is what the verdict judges against; BBSE's
        # estimate is shown as what it is: valid only under a pure label shift
        series = [
            (prior_name, prior),
            ("true target mix", section(c, "true_target_mix")),
            ("target predictions", section(c, "target", "histogram")),
            ("BBSE estimate (assumes label shift)", section(c, "bbse_target_mix")),
        ]
        uri = figures.class_histogram(series, a.classes, title=s.name)
        facts = []
        for dom in ("source", "target"):
            sec = section(c, dom)
            if sec:
                facts.append((dom.capitalize(), scalar_facts(sec, skip=("histogram",))))
        out.append({
            "stage": s.name,
            "uri": uri,
            "facts": facts,
            "pill": found.label,  # the check's verdict in words, at its level
            "level": found.level,
            "reason": found.reason,
        })
    return out


def _embedding_section(a: Audit) -> list[dict]:
    out = []
    for s in _stages(a):
        e = s.embedding
        coords = e.get("coords") if e else None
        if not coords:
            continue
        plots = []
        for key, what in (("domain", "domain"), ("label", "class")):
            col = e.get(key)
            if col:
                uri = figures.embedding_scatter(coords, col, title=f"{s.name} · by {what}")
                if uri:
                    plots.append({"title": f"by {what}", "uri": uri})
        if plots:
            out.append({"stage": s.name, "plots": plots, "n": len(coords)})
    return out


def _spurious_section(a: Audit) -> list[dict]:
    out = []
    for s in _stages(a):
        for domain, sec in (s.spurious or {}).items():
            if not isinstance(sec, Mapping):
                continue
            v = sec.get("verdict") or {}
            level = SpuriousDomain.parse(sec).level
            hot = sec.get("hot_box")
            facts = []
            if sec.get("border_share") is not None:
                facts.append(("Attribution in border band", fmt_pct(sec["border_share"])))
            if sec.get("border_area_share") is not None:
                facts.append(("Border band's share of the image", fmt_pct(sec["border_area_share"])))
            if v.get("region"):
                facts.append(("Flagged region", str(v["region"])))
            if v.get("share") is not None:
                facts.append(("Attribution in the region", fmt_pct(v["share"])))
            if v.get("flips") is not None:
                facts.append(("Predictions flipped by occluding it", fmt_num(v["flips"])))
            if hot is not None:
                facts.append(("Hot box (x0, y0, x1, y1)", fmt_value("hot_box", hot)))
            out.append({
                "stage": s.name,
                "domain": str(domain),
                "level": level,
                "flagged": bool(v.get("flagged")),
                "reason": str(v.get("reason") or ""),
                "facts": facts,
                "occlusion": scalar_facts(sec.get("occlusion") if isinstance(sec.get("occlusion"), Mapping) else None),
                "mean_maps": _mean_map_tiles(sec.get("mean_maps"), hot, a.classes),
                "gallery": _gallery_rows(sec.get("gallery"), hot, a.classes),
            })
    return out


def _mean_map_tiles(maps: Any, hot: Any, classes: list[str]) -> list[dict]:
    if not isinstance(maps, Mapping):
        return []
    order = [c for c in classes if c in maps] + [c for c in maps if c not in classes]
    tiles = []
    for cls in order:
        uri = figures.map_tile(maps[cls], hot_box=hot)
        if uri:
            tiles.append({"cls": str(cls), "uri": uri})
    return tiles


def _gallery_rows(items: Any, hot: Any, classes: list[str], per_class: int = 8) -> list[dict]:
    """Gallery tiles grouped by true class (the most-attributed examples of each)."""
    if not isinstance(items, (list, tuple)):
        return []
    rows: dict[str, list[dict]] = {}
    for it in items:
        if not isinstance(it, Mapping):
            continue
        label = "—" if it.get("label") is None else str(it["label"])
        if len(rows.setdefault(label, [])) >= per_class:
            continue
        uri = figures.attribution_tile(figures.image_array(it), it.get("map"), hot_box=hot)
        if uri is None:
            continue
        pred = None if it.get("pred") is None else str(it["pred"])
        rows[label].append({"uri": uri, "label": label, "pred": pred if pred is not None else "—",
                            "wrong": pred is not None and label != "—" and pred != label})
    order = [c for c in classes if c in rows] + [c for c in rows if c not in classes]
    return [{"cls": c, "tiles": rows[c]} for c in order if rows[c]]


def _groups_section(a: Audit) -> list[dict]:
    stages = _stages(a)
    columns = list(dict.fromkeys(k for s in stages for k in (s.groups or {})))
    out = []
    for col in columns:
        per = [section(s.groups, col) for s in stages]
        values = list(dict.fromkeys(str(v) for p in per for v in p))
        rows = []
        for val in values:
            cells = [p.get(val) or {} for p in per]
            rows.append({
                "value": val,
                "n": next((fmt_num(c["n"]) for c in cells if c.get("n") is not None), "—"),
                "acc": [fmt_pct(c.get("accuracy")) for c in cells],
                "f1": [fmt_pct(c.get("macro_f1")) for c in cells],
            })
        gaps = []
        for s, p in zip(stages, per):
            accs = {v: as_float((p.get(v) or {}).get("accuracy")) for v in values}
            accs = {k: x for k, x in accs.items() if x is not None}
            if len(accs) >= 2:
                lo = min(accs, key=accs.get)
                hi = max(accs, key=accs.get)
                gaps.append({
                    "stage": s.name,
                    "points": f"{100 * (accs[hi] - accs[lo]):.1f}",
                    "low": lo, "low_acc": fmt_pct(accs[lo]),
                    "high": hi, "high_acc": fmt_pct(accs[hi]),
                })
        bar_rows = [
            (val, as_float((per[0].get(val) or {}).get("accuracy")),
             as_float((per[1].get(val) or {}).get("accuracy")) if len(per) > 1 else None)
            for val in values
        ]
        chart = figures.group_bars(bar_rows, stage_names=tuple(s.name for s in stages) + ("",) * (2 - len(stages)),
                                   title=f"Accuracy by {col}") if len(values) <= 30 else None
        out.append({"column": str(col), "rows": rows, "gaps": gaps, "chart": chart})
    return out


_METHOD_COLS = ("method", "seed", "source_acc", "target_acc", "source_f1", "target_f1",
                "selected_epoch", "selector")


def _methods_section(a: Audit) -> dict | None:
    rows = [r for r in (a.methods_table or []) if isinstance(r, Mapping)]
    if not rows:
        return None
    seen = list(dict.fromkeys(k for r in rows for k in r))
    cols = [c for c in _METHOD_COLS if c in seen] + [c for c in seen if c not in _METHOD_COLS]
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            numeric = as_float(v) is not None
            cells.append({"text": "—" if v is None else (fmt_value(c, v) if numeric else str(v)), "num": numeric})
        body.append(cells)
    return {"head": [key_label(c) for c in cols], "rows": body, "deployment": deployment_text(a.deployment)}


def _verdict_view(v: Verdict) -> dict:
    return {
        "name": v.name,
        "level": v.level,
        "title": v.title,
        "summary": v.summary,
        "evidence": [(key_label(k), fmt_value(k, x)) for k, x in (v.evidence or {}).items()
                     if not isinstance(x, Mapping)],
    }


def build_view(audit: Audit | Mapping) -> dict:
    """The template's context: formatted strings and figure data URIs only."""
    a = _coerce(audit)
    run = a.run
    return {
        "title": ("Adaptation audit" if a.after is not None else "Domain gap report"),
        "run": {
            "name": run.name,
            "created": run.created or "",
            "seed": "—" if run.seed is None else str(run.seed),
            "device": run.device or "—",
            "versions": sorted(run.versions.items()),
            "recipe_text": run.recipe_text or "",
        },
        "stage_names": [s.name for s in _stages(a)],
        # short column headers; the header line maps them to the stage names
        "stage_labels": ["Before", "After"] if a.after is not None else ["Model"],
        "classes": list(a.classes),
        "overall": _verdict_view(a.overall),
        "verdicts": [_verdict_view(v) for v in a.verdicts],
        "metrics": _metrics_section(a),
        "gap": _gap_section(a),
        "collapse": _collapse_section(a),
        "embeddings": _embedding_section(a),
        "spurious": _spurious_section(a),
        "groups": _groups_section(a),
        "fairness": fairness_section(_stages(a)),
        "methods": _methods_section(a),
        "data": _data_section(a),
    }


def _data_section(a: Audit) -> dict | None:
    from diagnostics.data_audit.view import data_view  # late: the data audit's view imports the formatting here

    return data_view(a.data)


def _coerce(audit: Audit | Mapping) -> Audit:
    if isinstance(audit, Audit):
        return audit
    if not isinstance(audit, Mapping):
        raise TypeError(f"render_html needs an Audit or its dict, got {type(audit).__name__}")
    if "verdicts" not in audit:  # the report renders verdicts; it never judges
        raise ValueError("render_html needs a judged audit (no 'verdicts'): build it with "
                         "diagnostics.audit.build_audit")
    return Audit.from_dict(audit)


@lru_cache(maxsize=1)
def template_environment() -> jinja2.Environment:
    """The pages' Jinja2 environment (the audit's, the drift history's): autoescape on."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,  # every {{ }} is HTML-escaped: class names, paths, recipe text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_template(template: str, **context: Any) -> str:
    """One of the report's templates (``templates/TEMPLATE``) filled with ``context``."""
    return template_environment().get_template(template).render(**context)


def render_html(audit: Audit | Mapping) -> str:
    """The audit as one self-contained HTML page (inline CSS and PNGs, no script, no URL)."""
    return template_environment().get_template("report.html").render(**build_view(audit))


def write_report(audit: Audit | Mapping, html_path: str | Path, json_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write the HTML report and, next to it, the JSON of everything it shows (atomically).

    ``json_path`` defaults to ``html_path`` with the suffix ``.json``. Returns both paths.
    """
    a = _coerce(audit)
    html_path = Path(html_path)
    json_path = Path(json_path) if json_path is not None else html_path.with_suffix(".json")
    html = render_html(a)
    atomic_write_text(json_path, a.to_json() + "\n")
    atomic_write_text(html_path, html)
    return html_path, json_path
