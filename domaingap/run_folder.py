"""The run folder's safety rules: what may be replaced, and what ``--resume`` may continue.

* A folder that holds an earlier run is never written into by a fresh run unless the user
  asked for it with ``--overwrite`` (and then only after every input was validated);
  ``--resume`` continues it.
* Every checkpoint records the recipe fields its weights depend on (see
  :mod:`adapt.fingerprint`); ``--resume`` with a recipe that changed any of them stops
  with an error naming the changed keys, before anything in the folder is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

from adapt.errors import UserError, os_error_line
from adapt.fingerprint import SOURCE, TARGET_SCRATCH, check_fingerprint, stage_fields
from adapt.io import torch_load
from adapt.paths import check_output_folder
from adapt.recipe import Recipe

#: what adapt-run writes into a run folder (user files next to them are left alone)
RUN_FILES = ("metrics.json", "comparison.md", "audit.html", "audit.json", "recipe.yaml", "data.json")
RUN_DIRS = ("source", "methods", "baselines")


def check_run_inputs(run_dir: Path, recipe: Recipe, domains: Any) -> None:
    """The run folder neither lies inside a data folder nor holds a file the run reads
    (a data folder, a manifest, a listed image, ``model.source_checkpoint``): replacing
    the run would delete it. ``domains``: the loaded :class:`domaingap.runs.Domains`."""
    inputs: dict[str, list[str] | str | None] = {"model.source_checkpoint": recipe.model.source_checkpoint}
    for key, spec, ds in (("data.source", recipe.data.source, domains.source),
                          ("data.target", recipe.data.target, domains.target)):
        if spec is not None:
            inputs[key] = [p for p in (spec.path, *(ds.input_files() if ds is not None else [])) if p]
    if recipe.data.sources:  # several sources: their folders and the union's files
        listed = (*(s.path for s in recipe.data.sources), *domains.source.input_files())
        inputs["data.sources"] = [p for p in listed if p]
    check_output_folder("the run folder", run_dir, inputs)


def stages(recipe: Recipe) -> list[str]:
    """The stage folders this recipe trains into."""
    out = [] if recipe.model.source_checkpoint else [SOURCE]
    out += [f"methods/{r.name}" for r in recipe.method.runs]
    if recipe.method.target_scratch:
        out.append(TARGET_SCRATCH)
    return out


def holds_a_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a file adapt-run writes (a folder of the user's files does not)."""
    if any((run_dir / f).is_file() for f in RUN_FILES):
        return True
    return any(written_by_adapt_run(p.relative_to(run_dir)) for d in RUN_DIRS if (run_dir / d).is_dir()
               for p in (run_dir / d).rglob("*") if not p.is_dir())


def check_run_folder(run_dir: Path, recipe: Recipe, *, resume: bool, overwrite: bool) -> None:
    """Everything about the run folder that can stop a run, checked before it is touched.

    A fresh run into a folder that holds an earlier run needs ``overwrite``; a resumed
    run must find checkpoints that its recipe would have written (and readable ones).
    """
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other (continue the run, or replace it)")
    check_not_a_file(run_dir)
    if not run_dir.exists():
        if resume:
            check_stage_fingerprints(run_dir, recipe)
        return
    if not resume:
        if holds_a_run(run_dir) and not overwrite:
            state = "a finished run" if (run_dir / "metrics.json").exists() else "an unfinished run"
            raise UserError(f"{run_dir}: holds {state}; continue it with --resume, replace it with --overwrite, "
                            "or choose another output.name")
        return
    check_stage_fingerprints(run_dir, recipe)


def check_not_a_file(run_dir: Path) -> None:
    """The run folder, or a folder above it, must not be a file."""
    blocker = next((p for p in (run_dir, *run_dir.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = ("the run folder is a file" if blocker == run_dir
                 else f"a file, so the run folder {run_dir} cannot be made")
        raise UserError(f"{blocker}: {where} (set output.dir / output.name)")


def check_stage_fingerprints(run_dir: Path, recipe: Recipe) -> None:
    """``--resume``: every checkpoint it would continue from was written by this recipe."""
    folder = work_dir(run_dir, resume=True)
    for stage in stages(recipe):
        expected = stage_fields(recipe, stage)
        for name in ("model.pt", "last.pt", "best.pt"):
            path = folder / stage / name
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


# --------------------------------------------------------------------------- replacing a run safely

#: the files adapt-run writes into each stage folder (source/, methods/<run>/, baselines/<name>/)
STAGE_FILES = frozenset({"model.pt", "last.pt", "best.pt", "selection.json", "fisher.pt", "model.onnx",
                         "model.target_bn.onnx"})
#: the files adapt-run writes at the top of the run folder
TOP_FILES = frozenset({*RUN_FILES, "drift_reference.npz"})


def staging_dir(run_dir: Path) -> Path:
    """Where a fresh or replacing run is written until it is finished: a hidden sibling of
    the run folder (same parent, so the final rename is atomic)."""
    return run_dir.parent / f".{run_dir.name}.partial"


def _replaced_dir(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.replaced"


def written_by_adapt_run(rel: PurePath) -> bool:
    """Whether ``rel`` (a path inside a run folder) is a file adapt-run writes."""
    parts = rel.parts
    if not parts:
        return False
    if parts[-1].startswith(".") and parts[-1].endswith(".tmp"):
        return True  # an atomic write's temp file, left by a killed process
    if len(parts) == 1:
        return parts[0] in TOP_FILES
    if parts[0] == "source":
        return len(parts) == 2 and parts[1] in STAGE_FILES
    if parts[0] in ("methods", "baselines"):
        return len(parts) == 3 and parts[2] in STAGE_FILES
    return False


def foreign_entries(run_dir: Path) -> list[PurePath]:
    """What in ``run_dir`` adapt-run did not write (relative paths; a foreign folder at the
    top counts as one entry), in sorted order."""
    out: list[PurePath] = []
    if not run_dir.is_dir():
        return out
    for top in sorted(run_dir.iterdir()):
        rel = PurePath(top.name)
        if top.name in RUN_DIRS and top.is_dir() and not top.is_symlink():
            for path in sorted(top.rglob("*")):
                if path.is_symlink() or not path.is_dir():
                    sub = path.relative_to(run_dir)
                    if not written_by_adapt_run(sub):
                        out.append(sub)
        elif not written_by_adapt_run(rel) or top.is_dir():
            out.append(rel)
    return out


def _carry_foreign(old: Path, new: Path, moved: list[tuple[Path, Path]]) -> None:
    """Move the files adapt-run did not write from the run being replaced into its
    successor, recording each move in ``moved`` (so that a failure can undo them)."""
    for rel in foreign_entries(old):
        dest = new / rel
        if dest.exists() or dest.is_symlink():
            raise UserError(f"{old / rel}: would be replaced by the new run's {dest.name}; move it away and "
                            "run again (the earlier run is untouched)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old / rel, dest)
        moved.append((old / rel, dest))


def publish(staged: Path, run_dir: Path) -> None:
    """Move a finished run from ``staged`` into ``run_dir``. The run it replaces stays whole
    until the new one is complete; files adapt-run did not write move along with the run.
    If a step fails, the steps before it are undone: the earlier run is back in place,
    with every file of the user's."""
    if not (run_dir.exists() or run_dir.is_symlink()):
        os.rename(staged, run_dir)
        return
    moved: list[tuple[Path, Path]] = []
    old = _replaced_dir(run_dir)
    try:
        _carry_foreign(run_dir, staged, moved)
        if old.exists():
            shutil.rmtree(old)
        os.rename(run_dir, old)
        moved.append((run_dir, old))
        os.rename(staged, run_dir)
    except BaseException:
        for src, dest in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(dest, src)
        raise
    shutil.rmtree(old, ignore_errors=True)  # only adapt-run's files are left in it


def work_dir(run_dir: Path, *, resume: bool) -> Path:
    """The folder a run writes into: ``--resume`` continues an unfinished replacement (or
    fresh run) in the staging folder, else the run folder in place (also when there is
    none yet: nothing to protect, and a sweep's trials stay where it looks for them);
    every other run is written into the staging folder and published when finished."""
    staged = staging_dir(run_dir)
    return run_dir if resume and not staged.exists() else staged


def prepare_staging(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Before a fresh run: an unfinished earlier attempt in the staging folder is continued
    (``--resume``), replaced (``--overwrite``) or is an error."""
    staged = staging_dir(run_dir)
    if resume or not staged.exists():
        return
    if not overwrite:
        raise UserError(f"{run_dir}: an unfinished run of it is in {staged}; continue it with --resume, "
                        "replace it with --overwrite")
    foreign = foreign_entries(staged)
    if foreign:
        raise UserError(f"{staged / foreign[0]}: not written by adapt-run; move it away before --overwrite")
    shutil.rmtree(staged)


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on ``run_dir`` (a lock file beside it) for one adapt-run at a time;
    a second process is refused at once with the holder's pid."""
    path = run_dir.parent / f".{run_dir.name}.lock"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held until the run ends
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise UserError(f"{run_dir}: in use by another adapt-run (pid {holder}, lock {path}); "
                            "wait for it to finish") from None
        try:  # the file may have been unlinked by the holder we waited for: lock the current one
            same = os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fh.close()


def discard_staging(run_dir: Path) -> None:
    """Remove a staging folder this process created (after a write failed)."""
    shutil.rmtree(staging_dir(run_dir), ignore_errors=True)


@contextlib.contextmanager
def run_session(run_dir: Path, recipe: Recipe, *, resume: bool, overwrite: bool, main: bool = True) -> Iterator[Path]:
    """Lock, check and prepare the run folder; yield the folder to write into; publish it.

    A fresh or replacing run is written into :func:`staging_dir` and moved into place only
    when the body finished, so the earlier run stays whole until then. A failed write
    (full disk, read-only folder) is one :class:`UserError` line; the staging folder this
    run created is removed, the earlier run untouched. Only the main process (``main``)
    locks and writes; every process yields the same folder.
    """
    check_not_a_file(run_dir)  # before the lock file is made beside it
    with run_folder_lock(run_dir) if main else contextlib.nullcontext():
        check_run_folder(run_dir, recipe, resume=resume, overwrite=overwrite)
        out = work_dir(run_dir, resume=resume)
        if main:
            prepare_staging(run_dir, resume=resume, overwrite=overwrite)
        created = out != run_dir and not out.exists()
        try:
            yield out
            if main and out != run_dir:
                publish(out, run_dir)
        except OSError as exc:
            if main and created:
                discard_staging(run_dir)
            raise UserError(os_error_line(exc)) from None
