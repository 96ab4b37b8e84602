"""Recipe fingerprints: the recipe fields a stage's weights depend on, and their hash.

Every checkpoint stores the fingerprint of the stage that wrote it, so that ``--resume``
with a recipe that changed any of those fields stops with an error naming the changed
keys instead of mixing old weights with new settings. Fields that only shape the output
(``output.*``, ``name``, ``diagnostics.*``, ``method.audit_run``, ``method.deploy``) or the machine
(``train.device``, ``train.threads``, ``data.num_workers``) may differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.recipe import Recipe

SOURCE, TARGET_SCRATCH = "source", "baselines/target_scratch"

#: recipe keys, and key prefixes ending in ".", that do not change any trained weight
OUTPUT_ONLY = ("name", "output.", "diagnostics.", "method.audit_run", "method.deploy", "train.device", "train.threads",
               "data.num_workers")


def _output_only(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in OUTPUT_ONLY)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": value}``; lists stay values (compared whole)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def stage_fields(recipe: Recipe, stage: str) -> dict[str, Any]:
    """The recipe fields the weights of ``stage`` (``source``, ``methods/<run>``,
    ``baselines/target_scratch``) depend on, flattened to ``key.path: value``.

    Every stage depends on the seed, the data, the model, the strategy and the training
    settings; an adaptation run also on the selector and its own entry of
    ``method.runs`` (keyed by its name, so adding another run changes nothing here).
    """
    tree = recipe.model_dump(mode="json", by_alias=True)
    method = tree.pop("method")
    fields = {k: v for k, v in flatten(tree).items() if not _output_only(k)}
    if stage.startswith("methods/"):
        name = stage.split("/", 1)[1]
        run = next((r for r in method["runs"] if r["name"] == name), None)
        fields["method.selection"] = method["selection"]
        fields.update(flatten(run or {}, f"method.runs.{name}."))
    return fields


def fields_hash(fields: dict[str, Any]) -> str:
    """sha256 of the fields (canonical JSON): the fingerprint stored in checkpoints."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))


def check_fingerprint(path: Path | str, stored: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """UserError naming the changed keys when ``stored`` (a checkpoint's ``recipe``
    fingerprint) does not match ``expected``. Checkpoints without one (written before
    fingerprints existed) are not checked."""
    if not isinstance(stored, dict) or "fields" not in stored:
        return
    if stored.get("hash") == fields_hash(expected):
        return
    changed = changed_keys(stored["fields"], expected)
    raise UserError(f"{path}: --resume with a recipe that changed what this checkpoint was trained with; "
                    f"changed: {', '.join(changed) or '(unknown)'} (resume with the original recipe, or "
                    "start over with --overwrite)")


def fingerprint(fields: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores: the fields and their hash."""
    return {"hash": fields_hash(fields), "fields": fields}
