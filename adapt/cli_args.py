"""Command-line parsing shared by ``adapt-run`` and ``diagnose``: argument errors as one
``error:`` line (exit code 2), and every number bounded where it is parsed.

argparse's own error is a usage block followed by the message; a bad option is bad input
like any other, so it gets the one line every other bad input gets. ``--help`` is unchanged.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn

from adapt.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a :class:`UserError` ``PROG: message``, which the
    CLI prints as its one ``error:`` line with exit code 2. Sub-command parsers inherit the
    class (argparse makes them with ``type(self)``)."""

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        if message.startswith("argument "):  # "argument --seed: must be ..." -> "--seed: must be ..."
            message = message[len("argument "):]
        raise UserError(f"{self.prog}: {message}")


def int_in(lo: int, hi: int, *, hi_text: str | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [lo, hi]; the message states the bound
    (``hi_text`` writes it, e.g. ``2^31-1``)."""
    top = hi_text or str(hi)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer between {lo} and {top} (got {text!r})") from None
        if hi_text and not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {top} (got {value})")
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo} (got {value})")
        if value > hi:
            raise argparse.ArgumentTypeError(f"must be at most {top} (got {value})")
        return value

    parse.__name__ = "integer"
    return parse


def float_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in the interval (open ends as asked)."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = math.isfinite(value) and (lo < value if lo_open else lo <= value) and (
            value < hi if hi_open else value <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number in {left}{lo:g}, {hi:g}{right} (got {text!r})")
        return value

    parse.__name__ = "number"
    return parse
