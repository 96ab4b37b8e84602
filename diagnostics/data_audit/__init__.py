"""The data audit: what is wrong with the images and labels before a model is trained.

* :mod:`.balance` — class balance per domain and split, group representation gaps;
* :mod:`.duplicates` — exact and near-duplicate images (``imagehash`` + aligned pixels);
* :mod:`.label_issues` — likely label errors (``cleanlab``, out-of-fold probabilities);
* :mod:`.findings` — each result as a finding with its evidence and thumbnails;
* :mod:`.view`, :mod:`.page` — the report's "Data" section and the stand-alone page.

``cleanlab`` and ``imagehash`` are the optional extra ``domaingap[data]``:
:func:`require_data_extra` names it when they are missing.
"""

from __future__ import annotations

from adapt.errors import UserError


def require_data_extra() -> None:
    """UserError naming the extra when cleanlab or imagehash is not installed."""
    missing = []
    for module in ("cleanlab", "imagehash"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UserError(f"the data audit needs {' and '.join(missing)}: pip install 'domaingap[data]'")
