"""The drift checks recorded for a run, in the order they were made.

Every ``diagnose drift RUN --batch ...`` writes its result as one JSON file in
``RUN/drift/`` (unless ``--json`` sends it elsewhere). :func:`load_drift_history` reads
them all back as :class:`DriftCheck` rows — when, which batch, the verdict, the four
Holm-adjusted p-values and the level ``alpha`` they were held against, the Fréchet
distance, the classifier AUC, the confidence drop, the collapse flag and the ``--fail-on``
gate with the conditions that fired — sorted by the time of the check.
``diagnose drift-report RUN`` renders them as one page (:mod:`diagnostics.report.drift_page`).

A file that is not a drift check, or is damaged, is listed among ``skipped`` with the
reason, never fatal: a history of a hundred checks is not lost to one bad file.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adapt.errors import UserError

__all__ = ["TESTS", "DriftCheck", "DriftHistory", "check_path", "load_drift_history"]

#: the four tests of a drift check (the sections of its JSON), as the page names them
TESTS = {"mmd": "features, MMD", "classifier": "features, classifier", "predictions": "predicted classes",
         "confidence": "confidence drop"}
_STAMP = re.compile(r"(\d{8}T\d{6})")


@dataclass
class DriftCheck:
    """One recorded ``diagnose drift`` result (numbers None where the file lacks them)."""

    file: str
    checked_at: str  # ISO 8601, UTC
    batch: str
    n_batch: int | None
    n_reference: int | None
    verdict: str  # "drift" | "no drift" | "inconclusive"
    text: str
    alpha: float | None
    p_adjusted: dict[str, float | None]
    p_values: dict[str, float | None]
    frechet: float | None
    auc: float | None
    confidence_reference: float | None
    confidence_batch: float | None
    confidence_drop: float | None
    collapsed: bool
    fail_on: str | None
    fired: list[str] = field(default_factory=list)


@dataclass
class DriftHistory:
    run_dir: str
    checks: list[DriftCheck]
    #: (file name, reason) of every file in RUN/drift/ that is not a readable check
    skipped: list[tuple[str, str]]
    #: the reference the latest check was made against (reference_summary's facts)
    reference: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "checks": [asdict(c) for c in self.checks],
                "skipped": [{"file": f, "reason": r} for f, r in self.skipped], "reference": self.reference}


def check_path(run_dir: str | os.PathLike) -> Path:
    """Where the next check's JSON goes by default: ``RUN/drift/<UTC time>.json``, never
    onto an earlier check made in the same second."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(run_dir) / "drift"
    path, i = folder / f"{stamp}.json", 1
    while path.exists():
        i += 1
        path = folder / f"{stamp}_{i:02d}.json"  # "_" sorts after ".": file names stay in time order
    return path


def _num(d: Any, *keys: str) -> float | None:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
        return None
    return float(d)


def _when(path: Path, data: dict) -> str:
    stamp = data.get("checked_at")
    if isinstance(stamp, str) and stamp:
        return stamp
    m = _STAMP.search(path.stem)
    if m:
        return _dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=_dt.timezone.utc).isoformat()
    return _dt.datetime.fromtimestamp(path.stat().st_mtime, _dt.timezone.utc).isoformat()


def _check(path: Path, data: dict) -> DriftCheck:
    verdict = data.get("verdict")
    if not isinstance(verdict, dict) or not isinstance(verdict.get("drift"), bool):
        raise ValueError("no drift verdict in it")
    word = "drift" if verdict["drift"] else ("inconclusive" if verdict.get("inconclusive") else "no drift")
    batch = data.get("batch") if isinstance(data.get("batch"), dict) else {}
    gate = data.get("fail_on") if isinstance(data.get("fail_on"), dict) else None
    n_batch, n_ref = _num(data, "n_batch"), _num(data, "n_reference")
    return DriftCheck(
        file=path.name, checked_at=_when(path, data),
        batch=str(batch.get("domain") or batch.get("name") or "?"),
        n_batch=None if n_batch is None else int(n_batch), n_reference=None if n_ref is None else int(n_ref),
        verdict=word, text=str(verdict.get("text", "")), alpha=_num(verdict, "alpha"),
        p_adjusted={k: _num(data, k, "p_adjusted") for k in TESTS},
        p_values={k: _num(data, k, "p_value") for k in TESTS},
        frechet=_num(data, "frechet", "distance"), auc=_num(data, "classifier", "auc"),
        confidence_reference=_num(data, "confidence", "reference_mean"),
        confidence_batch=_num(data, "confidence", "batch_mean"), confidence_drop=_num(data, "confidence", "drop"),
        collapsed=bool((data.get("collapse") or {}).get("collapsed")) if isinstance(data.get("collapse"), dict) else False,
        fail_on=None if gate is None else str(gate.get("expression")),
        fired=[str(f) for f in (gate or {}).get("fired") or []],
    )


def load_drift_history(run_dir: str | os.PathLike) -> DriftHistory:
    """Every drift check recorded in ``RUN/drift/``, oldest first; a UserError when there is none."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run folder")
    folder = run_dir / "drift"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    checks: list[DriftCheck] = []
    skipped: list[tuple[str, str]] = []
    latest_reference = None
    for path in files:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            checks.append(_check(path, data))
        except (ValueError, UnicodeDecodeError) as exc:
            skipped.append((path.name, str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__))
            continue
        if isinstance(data.get("reference"), dict) and (latest_reference is None
                                                        or checks[-1].checked_at >= latest_reference[0]):
            latest_reference = (checks[-1].checked_at, data["reference"])
    if not checks:
        extra = f" ({len(skipped)} unreadable file(s))" if skipped else ""
        raise UserError(f"{folder}: no drift checks recorded{extra}; make one with "
                        f"diagnose drift {run_dir} --batch DOMAIN")
    checks.sort(key=lambda c: (c.checked_at, c.file))
    return DriftHistory(run_dir=str(run_dir), checks=checks, skipped=skipped,
                        reference=None if latest_reference is None else latest_reference[1])
