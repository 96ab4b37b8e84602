"""The data audit as the report shows it: formatted strings and ``data:`` URIs only.

Used for the stand-alone page (``diagnose data --html``) and for the "Data" section of
the adapt-run audit. A thumbnail reaches the page only when it is plain base64 (the
JSON may be re-rendered from a file someone edited).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from diagnostics.report.formatting import fmt_num, fmt_pct, fmt_value, key_label

_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _uri(b64: Any) -> str | None:
    text = str(b64 or "")
    return f"data:image/png;base64,{text}" if text and _BASE64.match(text) else None


def data_view(section: Mapping | None) -> dict | None:
    """The template context of a data-audit section (None when there is none)."""
    if not section:
        return None
    findings = []
    for f in section.get("findings") or []:
        thumbs = [{"uri": u, "caption": str(t.get("caption") or ""), "title": str(t.get("title") or "")}
                  for t in f.get("thumbs") or [] if (u := _uri(t.get("image_png_b64")))]
        findings.append({"level": str(f.get("level") or "warn"), "title": str(f.get("title") or ""),
                         "summary": str(f.get("summary") or ""), "thumbs": thumbs,
                         "evidence": [(key_label(k), fmt_value(k, v)) for k, v in (f.get("evidence") or {}).items()
                                      if not isinstance(v, (Mapping, list))]})
    balance = []
    for d in section.get("domains") or []:
        for split, bal in (d.get("splits") or {}).items():
            balance.append({"domain": str(d.get("name")), "split": str(split), "n": fmt_num(bal.get("n")),
                            "counts": ", ".join(f"{c}: {k} ({fmt_pct((bal.get('shares') or {}).get(c))})"
                                                for c, k in (bal.get("counts") or {}).items()),
                            "ratio": fmt_num(bal.get("imbalance_ratio"))})
    groups = []
    for col, g in (section.get("groups") or {}).items():
        shares = g.get("shares") or {}
        domains = list(dict.fromkeys(d for per in shares.values() for d in per))
        groups.append({"column": str(col), "domains": domains,
                       "rows": [{"value": str(v), "shares": [fmt_pct(per.get(d)) for d in domains]}
                                for v, per in shares.items()]})
    dup = section.get("duplicates") or {}
    settings = [(key_label(k), fmt_value(k, v)) for k, v in (dup.get("settings") or {}).items()]
    return {"findings": findings, "balance": balance, "groups": groups, "duplicate_settings": settings,
            "clean": not findings, "seconds": fmt_num(section.get("seconds"))}
