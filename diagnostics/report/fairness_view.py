"""The report's "Fairness and guard" card: fairlearn's per-group report of each audited
model (``metrics.groups``, written by a run with ``train.fairness`` or ``train.guard``) and
the guard's record (``metrics.guard``). Renders what the run measured; computes nothing."""

from __future__ import annotations

from typing import Any, Sequence

from diagnostics.report.formatting import fmt_num, fmt_pct


def _guard_text(guard: dict[str, Any] | None) -> str:
    if not guard:
        return "no guard"
    trip = guard.get("tripped")
    if not trip:
        ref = guard.get("reference") or {}
        return (f"{guard.get('metric')}: did not trip (reference {fmt_num(ref.get('value'))}, "
                f"epoch {ref.get('epoch')})")
    then = (f"rolled back to epoch {trip['reference_epoch']}" if trip.get("action") == "rollback"
            else "stopped")
    return (f"{trip['metric']} tripped at epoch {trip['epoch']} on group {trip['group']}: "
            f"{fmt_num(trip['reference'])} (epoch {trip['reference_epoch']}) → {fmt_num(trip['value'])}, "
            f"drop {fmt_num(trip['drop'])} > threshold {fmt_num(trip['threshold'])}; {then}")


def fairness_section(stages: Sequence[Any]) -> list[dict[str, Any]]:
    """One row per (audited model, test split) with a group report; [] when none has one."""
    rows = []
    for s in stages:
        groups = (s.metrics or {}).get("groups") or {}
        guard = _guard_text((s.metrics or {}).get("guard"))
        for split in ("source_test", "target_test"):
            rep = groups.get(split)
            if not rep:
                continue
            rows.append({
                "stage": s.name, "split": split.replace("_", " "), "column": groups.get("column", ""),
                "worst": f"{rep['worst_cell']} (n={rep['worst_cell_n']})",
                "worst_acc": fmt_pct(rep.get("worst_group_accuracy")),
                "eo": fmt_num(rep.get("eo_difference")), "dp": fmt_num(rep.get("dp_difference")),
                "cells": ", ".join(f"{k} {fmt_pct(v['accuracy'])}" for k, v in rep["per_cell"].items()),
                "guard": guard,
            })
    return rows
