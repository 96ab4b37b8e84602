"""The run folder's safety rules: what may be replaced, and what ``--resume`` may continue.

* A folder that holds an earlier run is never written into by a fresh run unless the user
  asked for it with ``--overwrite`` (and then only after every input was validated);
  ``--resume`` continues it.
* Every checkpoint records the recipe fields its weights depend on (see
  :mod:`adapt.fingerprint`); ``--resume`` with a recipe that changed any of them stops
  with an error naming the changed keys, before anything in the folder is touched.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from adapt.errors import UserError
from adapt.fingerprint import SOURCE, TARGET_SCRATCH, check_fingerprint, stage_fields
from adapt.io import torch_load
from adapt.recipe import Recipe

#: what adapt-run writes into a run folder (user files next to them are left alone)
RUN_FILES = ("metrics.json", "comparison.md", "audit.html", "audit.json", "recipe.yaml", "data.json")
RUN_DIRS = ("source", "methods", "baselines")


def stages(recipe: Recipe) -> list[str]:
    """The stage folders this recipe trains into."""
    out = [] if recipe.model.source_checkpoint else [SOURCE]
    out += [f"methods/{r.name}" for r in recipe.method.runs]
    if recipe.method.target_scratch:
        out.append(TARGET_SCRATCH)
    return out


def holds_a_run(run_dir: Path) -> bool:
    return any((run_dir / f).exists() for f in (*RUN_FILES, *RUN_DIRS))


def check_run_folder(run_dir: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> None:
    """Everything about the run folder that can stop a run, checked before it is touched.

    A fresh run into a folder that holds an earlier run needs ``overwrite``; a resumed
    run must find checkpoints that its recipe would have written (and readable ones).
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: the run folder is a file (set output.dir / output.name)")
    if not resume:
        if holds_a_run(run_dir) and not overwrite:
            state = "a finished run" if (run_dir / "metrics.json").exists() else "an unfinished run"
            raise UserError(f"{run_dir}: holds {state}; continue it with --resume, replace it with --overwrite, "
                            "or choose another output.name")
        return
    for stage in stages(recipe):
        expected = stage_fields(recipe, stage)
        for name in ("model.pt", "last.pt", "best.pt"):
            path = run_dir / stage / name
            if path.is_file():
                check_fingerprint(path, _stored_fingerprint(path, name), expected)


def _stored_fingerprint(path: Path, name: str) -> dict[str, Any] | None:
    what = "checkpoint" if name == "model.pt" else "checkpoint to resume from"
    ckpt = torch_load(path, what, mmap=True)
    if not isinstance(ckpt, dict):
        raise UserError(f"{path}: not a readable {what} (not a mapping)")
    if name == "model.pt":
        meta = ckpt.get("meta")
        return meta.get("recipe_fingerprint") if isinstance(meta, dict) else None
    return ckpt.get("recipe_fingerprint")


def clear_run(run_dir: Path) -> None:
    """Remove an earlier run's files (``--overwrite``), ``metrics.json`` first so that the
    folder never looks finished while it is emptied. Files adapt-run did not write stay."""
    for f in RUN_FILES:
        (run_dir / f).unlink(missing_ok=True)
    for d in RUN_DIRS:
        if (run_dir / d).is_dir():
            shutil.rmtree(run_dir / d)
