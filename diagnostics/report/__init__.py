"""The self-contained HTML audit report: ``render_html(audit)`` and ``write_report(...)``.

See :mod:`diagnostics.report.render` for the renderer and
:mod:`diagnostics.report.figures` for the figure helpers (plain data -> data URI).
"""

from __future__ import annotations

from diagnostics.report.render import build_view, render_html, write_report

__all__ = ["build_view", "render_html", "write_report"]
