"""The CI gate of ``diagnose gap --fail-on 'mmd_p<0.01'``: a tiny grammar, parsed by a
regular expression, never eval'd; conditions are read from the report's ``gap`` dict."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

from adapt.errors import UserError

__all__ = ["FailCondition", "parse_fail_on", "fired_conditions", "GATE_METRICS"]


#: gate metric → (section, field) of the gap dict
GATE_METRICS: dict[str, tuple[str, str]] = {
    "mmd2": ("mmd", "mmd2"),
    "mmd_p": ("mmd", "p_value"),
    "fid": ("frechet", "distance"),
    "auc": ("domain_classifier", "auc"),
    "proxy_a": ("domain_classifier", "proxy_a_distance"),
    "c2st_p": ("classifier_test", "p_value"),
    "c2st_auc": ("classifier_test", "auc"),
    "wasserstein": ("transport", "distance"),
}
_OPS = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}
_TERM = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|<|>)\s*"
    r"(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_SPLIT = re.compile(r"\s*,\s*|\s+or\s+", re.IGNORECASE)


@dataclass(frozen=True)
class FailCondition:
    """``metric op threshold``, e.g. mmd_p < 0.01."""

    metric: str
    op: str
    threshold: float
    #: where the metric sits, (section, field) of the dict it is checked against
    #: (None: :data:`GATE_METRICS`, the gap dict; the drift monitor passes its own)
    path: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def value(self, gap: Mapping) -> float | None:
        section, key = self.path or GATE_METRICS[self.metric]
        v = (gap.get(section) or {}).get(key)
        return None if v is None else float(v)

    def holds(self, gap: Mapping) -> bool:
        v = self.value(gap)
        return v is not None and math.isfinite(v) and _OPS[self.op](v, self.threshold)


def parse_fail_on(text: str, metrics: Mapping[str, tuple[str, str]] | None = None) -> list[FailCondition]:
    """Parse ``'mmd_p<0.01, auc>=0.9 or fid>50'`` (any true → the gate fires).

    Grammar: term (("," | " or ") term)*; term = metric op number; metric in
    ``metrics`` (default :data:`GATE_METRICS`: name → (section, field) of the checked
    dict); op in < <= > >=. Anything else is a one-line UserError.
    """
    custom = metrics is not None
    table = GATE_METRICS if metrics is None else metrics
    where = f"--fail-on {text!r}"
    if not text or not text.strip():
        raise UserError(f"{where}: empty; expected e.g. 'mmd_p<0.01' or 'auc>0.9, fid>40'")
    conditions = []
    for term in _SPLIT.split(text.strip()):
        m = _TERM.match(term)
        if m is None:
            raise UserError(f"{where}: cannot read {term.strip()!r}; expected <metric><op><number> "
                            f"joined by ',' or 'or' (metrics: {', '.join(table)}; ops: < <= > >=)")
        metric = m["metric"].lower()
        if metric not in table:
            raise UserError(f"{where}: unknown metric {m['metric']!r} (choose {', '.join(table)})")
        threshold = float(m["num"])
        if not math.isfinite(threshold):
            raise UserError(f"{where}: threshold {m['num']!r} is not a finite number")
        conditions.append(FailCondition(metric, m["op"], threshold, path=table[metric] if custom else None))
    return conditions


def fired_conditions(conditions: list[FailCondition], gap: Mapping) -> list[tuple[FailCondition, float]]:
    """The conditions that hold for ``gap`` (the report's gap dict), with the measured value."""
    return [(c, c.value(gap)) for c in conditions if c.holds(gap)]
