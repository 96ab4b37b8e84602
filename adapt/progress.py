"""Progress output: bars only on a terminal, plain lines everywhere.

A progress bar redraws itself with carriage returns; in a log file (stderr redirected,
CI, a batch job) that is noise, so bars are drawn only when stderr is a terminal. Per-
epoch and per-stage lines (:func:`reporter`) are printed either way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable, *, enabled: bool = True, **tqdm_kwargs: Any) -> tqdm:
    """``tqdm(iterable)``, drawn only when ``enabled`` and stderr is a terminal.

    Disabled bars still iterate (and accept ``set_postfix``/``close``), so callers need
    no second code path."""
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), **tqdm_kwargs)


def reporter(enabled: bool) -> Callable[[str], None]:
    """A ``say(message)`` that prints one line to stdout (without breaking a live bar),
    or does nothing when not ``enabled``."""
    if not enabled:
        return lambda message: None
    return tqdm.write
