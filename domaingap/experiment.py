"""Run a recipe from Python and read a run folder back.

:func:`run` is ``adapt-run RECIPE key=value ...`` as a function: a :class:`Recipe` or a
YAML path, overrides as a dict of dotted keys, and the pipeline of
:func:`domaingap.pipeline.run_recipe` unchanged. :func:`load_run` reads what a run wrote
(``metrics.json``, ``audit.json``, ``recipe.yaml``, the stage checkpoints) into the
same :class:`RunResult`, so a notebook can look at a run that a CLI made.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from adapt.errors import UserError
from adapt.models import load_checkpoint
from domaingap.pipeline import run_recipe
from adapt.recipe import Recipe, load_recipe, validate_recipe
from adapt.recipe_text import apply_override, parse_yaml

__all__ = ["RunResult", "load_run", "run"]


@dataclass
class RunResult:
    """A finished run folder: its recipe, metrics, comparison table and audit.

    ``metrics``: the run's ``metrics.json`` (per stage: ``metrics``, ``fit``,
    ``selection``; ``comparison``; ``deployment``; ``environment``); ``audit``: the
    ``audit.json`` data (verdicts, before/after measurements) or None when the
    diagnostics were off; ``models``: stage name -> checkpoint path (``source``, each
    run of ``method.runs``, ``target_scratch``). :meth:`model` loads one.
    """

    run_dir: Path
    recipe: Recipe
    metrics: dict[str, Any]
    comparison: list[dict[str, Any]] = field(default_factory=list)
    audit: dict[str, Any] | None = None
    models: dict[str, Path] = field(default_factory=dict)

    @property
    def audit_html(self) -> Path | None:
        """The audit report, when the run wrote one."""
        path = self.run_dir / "audit.html"
        return path if path.is_file() else None

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        """The audit's verdicts (level, sentence, evidence), or [] without an audit."""
        return list((self.audit or {}).get("verdicts") or [])

    @property
    def deployed(self) -> str | None:
        """The stage the run deployed (``"source"`` or a run name), as it decided it once
        (``method.audit_run``, else ``method.deploy``; ``metrics.json`` → ``deployment``);
        None for a run folder written before that record. ``model(result.deployed)``."""
        name = (self.metrics.get("deployment") or {}).get("model")
        return None if name is None else ("source" if name == "source-only" else name)

    def target_accuracy(self, stage: str) -> float | None:
        """Target test accuracy of ``stage`` (``"source"`` or a run name), when labels are known."""
        entry = self.metrics.get("source") if stage == "source" else (
            (self.metrics.get("runs") or {}).get(stage) or (self.metrics.get("baselines") or {}).get(stage))
        if entry is None:
            raise UserError(f"stage: {stage!r} is not one of {', '.join(self.models) or 'the stages'}")
        return ((entry.get("metrics") or {}).get("target_test") or {}).get("accuracy")

    def model(self, stage: str = "source") -> nn.Module:
        """The stage's model, loaded from its checkpoint (eval mode, on the CPU)."""
        if stage not in self.models:
            raise UserError(f"stage: {stage!r} is not one of {', '.join(self.models)}")
        return load_checkpoint(self.models[stage])[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain values: folder, recipe name, comparison, verdicts, model paths."""
        return {"run_dir": str(self.run_dir), "recipe": self.recipe.name, "comparison": self.comparison,
                "verdicts": self.verdicts, "models": {k: str(v) for k, v in self.models.items()},
                "audit_html": None if self.audit_html is None else str(self.audit_html)}


def _override_items(overrides: Mapping[str, Any] | None) -> list[str]:
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise UserError(f"overrides: expected a dict of dotted keys, got {type(overrides).__name__}")
    # JSON is YAML: every value keeps its type through apply_override's parser
    return [f"{k}={json.dumps(v)}" for k, v in overrides.items()]


def _as_recipe(recipe: Recipe | str | os.PathLike, overrides: Mapping[str, Any] | None) -> Recipe:
    items = _override_items(overrides)
    if isinstance(recipe, Recipe):
        raw = recipe.model_dump(mode="json", by_alias=True)
        for item in items:
            apply_override(raw, item)
        return validate_recipe(raw, label="recipe") if items else recipe
    if isinstance(recipe, (str, os.PathLike)):
        return load_recipe(recipe, items)
    raise UserError(f"recipe: expected a Recipe or a YAML path, got {type(recipe).__name__}")


def run(
    recipe: Recipe | str | os.PathLike,
    overrides: Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    diagnostics: bool | None = None,
) -> RunResult:
    """Run every stage of a recipe; return the run folder read back.

    Parameters
    ----------
    recipe : Recipe, str or Path
        A :class:`Recipe` (``Recipe()`` is the phantom default) or a YAML file.
    overrides : dict, optional
        Dotted keys as on the command line, values of any YAML type:
        ``{"train.epochs": 1, "data.source.n": 60, "method.runs.0.epochs": 0}``.
    resume, overwrite : bool
        As ``--resume`` / ``--overwrite``: a folder holding an earlier run is continued or
        replaced, never silently written into.
    progress : bool
        Print the stage lines and bars.
    diagnostics : bool, optional
        Override ``diagnostics.enabled`` (the audit).

    Returns
    -------
    RunResult

    Examples
    --------
    >>> import tempfile
    >>> from adapt import Recipe, run
    >>> out = tempfile.mkdtemp()
    >>> result = run(Recipe(), {"data.source.n": 40, "data.target.n": 40, "data.image_size": 32,
    ...                         "train.epochs": 1, "output.dir": out}, diagnostics=False)
    >>> [row["model"] for row in result.comparison]
    ['source-only', 'adabn']
    >>> sorted(result.models)
    ['adabn', 'source']
    """
    rec = _as_recipe(recipe, overrides)
    summary = run_recipe(rec, resume=resume, overwrite=overwrite, progress=progress, diagnostics=diagnostics)
    return load_run(summary.run_dir)


def load_run(run_dir: str | os.PathLike) -> RunResult:
    """Read a finished run folder (written by ``adapt-run`` or :func:`run`).

    Examples
    --------
    >>> from adapt import load_run
    >>> load_run("no/such/folder")
    Traceback (most recent call last):
    ...
    adapt.errors.UserError: no/such/folder: not a run folder (no metrics.json)
    """
    root = Path(run_dir)
    metrics_path = root / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{root}: not a run folder (no metrics.json)")
    metrics = _read_json(metrics_path)
    recipe_path = root / "recipe.yaml"
    if not recipe_path.is_file():
        raise UserError(f"{root}: not a run folder (no recipe.yaml)")
    recipe = validate_recipe(parse_yaml(recipe_path.read_text(encoding="utf-8"), str(recipe_path)),
                             label=str(recipe_path))
    audit = _read_json(root / "audit.json") if (root / "audit.json").is_file() else None
    models: dict[str, Path] = {}
    candidates = [("source", root / "source" / "model.pt")]
    candidates += [(name, root / "methods" / name / "model.pt") for name in (metrics.get("runs") or {})]
    candidates += [(name, root / "baselines" / name / "model.pt") for name in (metrics.get("baselines") or {})]
    for name, path in candidates:
        if path.is_file():
            models[name] = path
    return RunResult(run_dir=root, recipe=recipe, metrics=metrics, comparison=list(metrics.get("comparison") or []),
                     audit=audit, models=models)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data
