"""``diagnose drift-report RUN_DIR [--out PAGE.html]`` — the drift history of a run as one page.

Reads every check ``diagnose drift RUN_DIR --batch ...`` recorded in ``RUN_DIR/drift/``
(:func:`diagnostics.drift_history.load_drift_history`) and writes one self-contained HTML
page (:mod:`diagnostics.report.drift_page`): the statistics over time, the verdict of each
check, the thresholds it was held to; its JSON next to it. Default:
``RUN_DIR/drift_history.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adapt.errors import UserError
from adapt.paths import check_outputs

__all__ = ["add_parser", "cmd_drift_report"]


def add_parser(sub) -> None:
    """The subcommand, on ``diagnose``'s subparsers."""
    p = sub.add_parser("drift-report", help="write a run's drift history (every diagnose drift check) as one HTML page",
                       description="One self-contained HTML page of every drift check recorded in RUN_DIR/drift/: "
                       "the tests' adjusted p-values, Fréchet distance and confidence drop over time, the verdict "
                       "of each check and the thresholds (alpha, --fail-on) it was held to. JSON next to it.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a runs/<name>/ folder with drift checks in RUN_DIR/drift/")
    p.add_argument("--out", metavar="PAGE.html", help="where to write the page (default RUN_DIR/drift_history.html)")


def cmd_drift_report(args: argparse.Namespace) -> int:
    # late: diagnose imports this module at start-up (the page loads jinja2 and matplotlib)
    from diagnostics.drift_history import load_drift_history
    from diagnostics.report.drift_page import write_drift_history

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "drift_history.html"
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder (give a file name)")
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out}: give a .html file name (its JSON goes next to it as .json)")
    if (run_dir / "drift").is_dir() and out.resolve().parent == (run_dir / "drift").resolve():
        raise UserError(f"--out {out}: {run_dir / 'drift'} holds the checks themselves; write the page elsewhere")
    history = load_drift_history(run_dir)
    check_outputs({"--out": out, "its JSON": out.with_suffix(".json")},
                  {"drift check": [run_dir / "drift" / c.file for c in history.checks]})
    page, data = write_drift_history(history, out)
    counts = {v: sum(c.verdict == v for c in history.checks) for v in ("drift", "inconclusive", "no drift")}
    print(f"{len(history.checks)} drift checks ({counts['drift']} drift, {counts['inconclusive']} inconclusive, "
          f"{counts['no drift']} no drift); latest: {history.checks[-1].verdict}")
    for name, why in history.skipped:
        print(f"note: left out {name}: {why}")
    print(f"wrote {page} (+ {data.name})")
    return 0
