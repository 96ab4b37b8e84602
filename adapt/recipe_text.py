"""A recipe's text: YAML that refuses a repeated key, and ``key.path=value`` overrides.

Kept apart from the recipe's schema (``adapt/recipe.py``): this is how the text becomes a
nested dict — what the user typed, with line numbers in the errors — before the schema
judges it.
"""

from __future__ import annotations

from typing import Any

import yaml

from adapt.errors import UserError


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key repeated in one mapping is an error
    (PyYAML keeps the last value silently, so ``lr`` written twice hides the first)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` that rejects duplicate mapping keys (raises a ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass


def parse_yaml(text: str, label: str) -> dict[str, Any]:
    try:
        raw = safe_load_unique(text)
    except _DuplicateKey as e:
        raise UserError(f"{label}: duplicate key {e.key!r} at line {e.line} (first at line {e.first_line}); "
                        "YAML would keep only the last value") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{label}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{label}: a recipe must be a mapping of sections (got {type(raw).__name__})")
    return raw


def apply_override(raw: dict[str, Any], item: str, label: str = "override") -> None:
    """Set ``a.b.c=value`` in the nested dict ``raw``; the value is parsed as YAML
    (so ``3`` is an int, ``1e-3`` a float, ``true`` a bool, ``[a, b]`` a list).
    Integer path parts index lists (``method.runs.0.epochs=2``)."""
    if "=" not in item:
        raise UserError(f"override '{item}': expected key.path=value")
    key, _, value_text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"override '{item}': empty key path")
    try:
        value = safe_load_unique(value_text) if value_text.strip() else None
    except _DuplicateKey as e:
        raise UserError(f"override '{item}': duplicate key {e.key!r}") from None
    except yaml.YAMLError:
        value = value_text
    if isinstance(value, str) and _looks_like_float(value):
        value = float(value)  # YAML 1.1 reads "1e-3" as a string
    parts = key.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, item, where)]
            continue
        nxt = node.get(part)
        if nxt is None:
            nxt = {}
            node[part] = nxt
        elif not isinstance(nxt, (dict, list)):
            raise UserError(f"override '{item}': {where} is a value, not a section")
        node = nxt
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, item, key)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, item: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"override '{item}': {where}: no list item {part} (the list has {len(node)})")
    return int(part)


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return any(c in s.lower() for c in "e.") and not s.lower() in ("inf", "nan")
