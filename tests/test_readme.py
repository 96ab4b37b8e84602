"""The README's method lists cannot go stale: they are checked against the recipe schema."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from adapt.method_registry import objectives
from adapt.recipe import AdaptRunConfig

ROOT = Path(__file__).resolve().parents[1]


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _choices(field: str) -> set[str]:
    """A run's choices of ``field``: the registered objectives, or a Literal's values."""
    if field == "objective":
        return set(objectives()) - {"none"}
    return set(get_args(AdaptRunConfig.model_fields[field].annotation)) - {"none"}


def _listed(section: str, key: str) -> set[str]:
    """``key: name`` switches written in backticks (``none``, "train nothing", aside)."""
    return set(re.findall(rf"`{key}: (\w+)`", section)) - {"none"}


def test_readme_lists_every_objective_and_style_and_nothing_else():
    methods = _section((ROOT / "README.md").read_text(encoding="utf-8"), "Methods")
    assert _listed(methods, "objective") == _choices("objective")
    assert _listed(methods, "style") == _choices("style")
    for switch in ("adabn: true", "mixstyle: true", "ewc: "):
        assert f"`{switch}" in methods, switch


def test_methods_doc_lists_every_objective_and_style():
    table = _section((ROOT / "docs" / "methods.md").read_text(encoding="utf-8"), "The switches of a run")
    assert _listed(table, "objective") == _choices("objective")
    assert _listed(table, "style") == _choices("style")


def test_readme_intro_names_every_adaptation_objective():
    intro = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ", 1)[0]
    names = {"dann": r"\bDANN", "cdan": r"\bCDAN", "mcc": r"\bMCC", "coral": "CORAL", "dan": r"\bDAN",
             "shot": r"\bSHOT", "tent": r"\bTENT"}  # CORAL: as in DeepCORAL
    assert set(names) <= _choices("objective")
    for name in names.values():
        assert re.search(rf"{name}\b", intro), name


def test_quickstart_commands_are_unchanged():
    """CI and the developers' guide run these two lines verbatim."""
    quick = _section((ROOT / "README.md").read_text(encoding="utf-8"), "Quickstart")
    assert ("python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/adapt-run "
            "recipes/xray_to_xray.yaml") in quick
    assert ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q -n 2"
            in quick)


def test_ci_runs_the_readme_test_command_next_to_a_postgres_server():
    """.ci/run: the Quickstart's test command, its pytest wrapped by .ci/with_postgres.sh
    (a throw-away PostgreSQL cluster for tests/test_sweep_postgres.py)."""
    last = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line.strip()][-1]
    readme = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest -q -n 2"
    assert last == readme.replace(".venv/bin/python -m pytest", "bash .ci/with_postgres.sh .venv/bin/python -m pytest")


def test_readme_is_short_and_its_doc_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\(((?:docs|examples)/[^)#]*)", text):
        assert (ROOT / target).exists(), target
