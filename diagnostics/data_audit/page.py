"""The stand-alone data-audit page (``diagnose data --html``): the report's "Data"
section on its own page, self-contained like the audit report."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Mapping

from adapt.io import atomic_write_text
from diagnostics.data_audit.view import data_view
from diagnostics.report.render import render_template


def render_data_page(section: Mapping, name: str) -> str:
    """The HTML of a data-audit section (every user-derived string escaped)."""
    created = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return render_template("data_report.html", name=name, created=created, data=data_view(section) or {})


def write_data_page(section: Mapping, name: str, html_path: str | Path) -> Path:
    return atomic_write_text(Path(html_path), render_data_page(section, name))
