"""One finding of the audit (:class:`Verdict`), the severity levels, and the banner
that sums the findings up (:func:`overall_verdict`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from adapt.io import to_jsonable

LEVELS = ("ok", "warn", "fail")
_RANK = {lvl: i for i, lvl in enumerate(LEVELS)}


def worst_level(levels: Iterable[str]) -> str:
    """The most severe of ``levels`` ("ok" when empty)."""
    return max(levels, key=lambda lvl: _RANK.get(lvl, 0), default="ok")


@dataclass
class Verdict:
    """One finding: ``level`` in {"ok", "warn", "fail"}, a title, one plain sentence."""

    name: str
    level: str
    title: str
    summary: str
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.level not in _RANK:
            raise ValueError(f"Verdict level must be one of {LEVELS}, got {self.level!r}")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "level": self.level,
            "title": self.title,
            "summary": self.summary,
            "evidence": to_jsonable(self.evidence) or {},
        }

    @classmethod
    def from_dict(cls, d: Mapping | Verdict) -> Verdict:
        if isinstance(d, Verdict):
            return d
        level = str(d.get("level", "warn"))
        return cls(
            name=str(d.get("name", "")),
            level=level if level in _RANK else "warn",
            title=str(d.get("title", "")),
            summary=str(d.get("summary", "")),
            evidence=dict(d.get("evidence") or {}),
        )


def overall_verdict(verdicts: Iterable[Verdict | Mapping]) -> Verdict:
    """The banner: the worst level of all verdicts and a headline sentence naming them."""
    vs = [Verdict.from_dict(v) for v in verdicts]
    if not vs:
        return Verdict("overall", "ok", "Nothing to judge", "No results were available to audit.")
    level = worst_level(v.level for v in vs)
    bad = [v for v in vs if v.level == level and level != "ok"]
    if level == "fail":
        title = "Audit failed"
        summary = f"Audit failed: {_join_titles(bad)}."
    elif level == "warn":
        title = "Audit passed with warnings"
        summary = f"Check before use: {_join_titles(bad)}."
    else:
        title = "Audit passed"
        lead = next((v for v in vs if v.name == "negative_transfer"), vs[0])
        summary = f"All {len(vs)} checks passed. {lead.summary}"
    # the first failing/warning verdict's sentence carries the numbers into the banner
    if bad:
        summary += f" {bad[0].summary}"
    return Verdict("overall", level, title, summary, {v.name: v.level for v in vs})


def _join_titles(vs: list[Verdict]) -> str:
    titles = [v.title.lower() if i else v.title for i, v in enumerate(vs)]
    if len(titles) <= 1:
        return "".join(titles)
    return ", ".join(titles[:-1]) + " and " + titles[-1]
