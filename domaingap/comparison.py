"""The comparison printed at the end of ``adapt-run`` and written as ``comparison.md``:
one row per model (source-only, each adapted run, each baseline) with source and target
test accuracy and macro-F1, the label-free selected epoch, its IM score and the time.
Where the target's labels are unknown, the deployment ranking's label-free estimate of each
model's target accuracy with its measured band takes the place of the unknown accuracy.
"""

from __future__ import annotations

from typing import Any

from adapt.accuracy_estimation.calibration import measured_error
from adapt.selectors import chosen_epoch
from domaingap.runs import RunSummary, StageOutcome

__all__ = ["comparison_table", "with_estimates", "format_table", "stage_line"]


def comparison_table(summary: RunSummary) -> list[dict[str, Any]]:
    """One row per model: source/target test accuracy and macro-F1, selected epoch."""

    def row(kind: str, stage: StageOutcome) -> dict[str, Any]:
        m = stage.metrics
        tt = m.get("target_test") or {}
        sel = stage.selection or {}
        last = (sel.get("epochs") or [{}])
        chosen = chosen_epoch(sel) or last[-1]
        # the oracle: the best target-test accuracy over the run's epochs (target labels,
        # reporting only) — beside the label-free pick it shows the selection regret
        scored = [e for e in last if e.get("oracle_target_accuracy") is not None]
        oracle = max(scored, key=lambda e: e["oracle_target_accuracy"]) if scored else None
        return {
            "model": stage.name,
            "kind": kind,
            "source_acc": (m.get("source_test") or {}).get("accuracy"),
            "source_f1": (m.get("source_test") or {}).get("macro_f1"),
            "target_acc": tt.get("accuracy"),
            "target_f1": tt.get("macro_f1"),
            "selected_epoch": sel.get("selected_epoch"),
            "oracle_target_acc": oracle["oracle_target_accuracy"] if oracle else tt.get("accuracy"),
            "oracle_epoch": oracle["epoch"] if oracle else sel.get("selected_epoch"),
            "im": chosen.get("im"),
            "seconds": round(stage.seconds, 1),
            **_picks_columns(sel),
        }

    rows = [row("source", summary.source)]
    rows += [row("adapted", s) for s in summary.runs.values()]
    rows += [row("baseline", s) for s in summary.baselines.values()]
    return rows


def with_estimates(rows: list[dict[str, Any]], ranking: Any) -> list[dict[str, Any]]:
    """``rows`` with ``target_acc_estimated`` = {accuracy, band, estimator} (fractions) on each
    row whose target accuracy is unknown and that the deployment ranking estimated
    (:class:`diagnostics.ranking.EstimateRanking`: every model on the same held-out target
    images); ``band``: the estimator's measured 90th-percentile error for this many models
    (:func:`adapt.accuracy_estimation.calibration.measured_error`), None when never measured
    — then no estimate is shown. Rows with a measured accuracy are returned unchanged."""
    if ranking is None:
        return rows
    err = measured_error(ranking.estimator, n_models=len(ranking.order))
    if err is None:
        return rows
    out = []
    for r in rows:
        est = (ranking.estimates.get(r["model"]) or {}).get(ranking.estimator)
        if r["target_acc"] is None and est is not None:
            r = {**r, "target_acc_estimated": {"accuracy": float(est), "band": err.accuracy_p90,
                                               "estimator": ranking.estimator}}
        out.append(r)
    return out


def _picks_columns(selection: dict[str, Any]) -> dict[str, Any]:
    """The audit's view of ``selection.json``'s picks: what each selector chose, and
    whether the label-free and source selectors agree (``last`` aside)."""
    picks = selection.get("picks") or {}
    if len(picks) < 2:
        return {}
    text = " · ".join(f"{name} {p['epoch']}" for name, p in picks.items())
    agree = len({p["epoch"] for name, p in picks.items() if name != "last"}) <= 1
    return {"selector_picks": text, "selectors": "agree" if agree else "disagree"}


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`comparison_table` rows."""
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    # target labels unknown: the label-free estimate ± its measured band, marked as such
    estimated = any(r.get("target_acc_estimated") for r in rows)
    extra = " estimated target acc % (no target labels) |" if estimated else ""
    lines = ["| model | source acc % | target acc % | target F1 % | selected epoch | IM | time s |" + extra,
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if estimated else "")]
    for r in rows:
        im = "—" if r["im"] is None else f"{r['im']:.3f}"
        ep = "—" if r["selected_epoch"] is None else str(r["selected_epoch"])
        line = (f"| {r['model']} | {pct(r['source_acc'])} | {pct(r['target_acc'])} | "
                f"{pct(r['target_f1'])} | {ep} | {im} | {r['seconds']} |")
        if estimated:
            e = r.get("target_acc_estimated")
            line += (f" {100 * e['accuracy']:.0f} ± {100 * e['band']:.0f} ({e['estimator']}) |" if e else " — |")
        lines.append(line)
    return "\n".join(lines)


def stage_line(name: str, metrics: dict[str, Any]) -> str:
    """'adabn: source test accuracy 95.6%, target test accuracy 89.4%' (the line printed per stage)."""
    s = (metrics.get("source_test") or {}).get("accuracy")
    t = (metrics.get("target_test") or {}).get("accuracy")
    ss = "not measured (no source images)" if s is None else f"{100 * s:.1f}%"
    tt = "unknown" if t is None else f"{100 * t:.1f}%"
    return f"{name}: source test accuracy {ss}, target test accuracy {tt}"
