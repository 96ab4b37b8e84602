"""How the audit writes numbers in its sentences: percentages, changes in percentage
points, statistics in three significant figures, p-values. The report uses the same
functions, so a figure reads the same in a verdict and in a table."""

from __future__ import annotations


def percent(x: float) -> str:
    """A fraction as a percentage: 0.7123 -> '71.2%'."""
    return f"{100.0 * x:.1f}%"


def signed_points(delta: float) -> str:
    """A change of a fraction in percentage points, signed: 0.173 -> '+17.3'
    (a change under 0.05 points reads '+0.0')."""
    p = 100.0 * delta
    if abs(p) < 0.05:
        p = 0.0
    return f"{p:+.1f}"


def points(delta: float) -> str:
    """A change of a fraction in percentage points, signed: '+17.3 points'."""
    return f"{signed_points(delta)} points"


def statistic(x: float) -> str:
    """A statistic in 3 significant figures (no exponent for everyday magnitudes)."""
    if x == 0:
        return "0"
    if 1e-3 <= abs(x) < 1e5:
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return f"{x:.2e}"


def fmt_p(p: float) -> str:
    """A p-value as 0.003 or <0.001."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_phrase(p: float) -> str:
    """'p = 0.003' or 'p < 0.001'."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
