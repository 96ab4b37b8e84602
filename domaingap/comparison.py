"""The comparison printed at the end of ``adapt-run`` and written as ``comparison.md``:
one row per model (source-only, each adapted run, each baseline) with source and target
test accuracy and macro-F1, the label-free selected epoch, its IM score and the time.
"""

from __future__ import annotations

from typing import Any

from domaingap.runs import RunSummary, StageOutcome
from adapt.selectors import chosen_epoch

__all__ = ["comparison_table", "format_table", "stage_line"]


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
    lines = ["| model | source acc % | target acc % | target F1 % | selected epoch | IM | time s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        im = "—" if r["im"] is None else f"{r['im']:.3f}"
        ep = "—" if r["selected_epoch"] is None else str(r["selected_epoch"])
        lines.append(f"| {r['model']} | {pct(r['source_acc'])} | {pct(r['target_acc'])} | "
                     f"{pct(r['target_f1'])} | {ep} | {im} | {r['seconds']} |")
    return "\n".join(lines)


def stage_line(name: str, metrics: dict[str, Any]) -> str:
    """'adabn: source test accuracy 95.6%, target test accuracy 89.4%' (the line printed per stage)."""
    s = (metrics.get("source_test") or {}).get("accuracy")
    t = (metrics.get("target_test") or {}).get("accuracy")
    ss = "not measured (no source images)" if s is None else f"{100 * s:.1f}%"
    tt = "unknown" if t is None else f"{100 * t:.1f}%"
    return f"{name}: source test accuracy {ss}, target test accuracy {tt}"
