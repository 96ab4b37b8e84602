"""No output onto an input: every command checks each path it will write against every
path it reads, before it does any work.

Paths are compared resolved (symlinks followed, ``..`` removed), so ``data/../data/a.csv``
and a link to it are the same file. Two rules:

* an output **file** may not be an input file, nor lie inside an input folder (writing
  into a data folder modifies the data);
* an output **folder** (a run folder, ``diagnose phantom OUT``) may not hold an input
  file, nor lie inside an input folder, nor contain one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from adapt.errors import UserError

#: label -> path(s); a label says in the error which input it is ("--model", "data.source")
Paths = Mapping[str, "str | os.PathLike | Iterable[str | os.PathLike] | None"]


def real(path: str | os.PathLike) -> Path:
    """``path`` made absolute with every symlink followed (also for paths not there yet)."""
    return Path(os.path.realpath(os.fspath(path)))


def _items(paths: Paths) -> list[tuple[str, Path]]:
    out = []
    for label, value in paths.items():
        if value is None:
            continue
        values = [value] if isinstance(value, (str, os.PathLike)) else list(value)
        out += [(label, real(v)) for v in values if v is not None and os.fspath(v) != ""]
    return out


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_output_file(option: str, path: str | os.PathLike | None, inputs: Paths) -> None:
    """Refuse an output file that is an input file or lies inside an input folder."""
    if path is None:
        return
    out = real(path)
    for label, inp in _items(inputs):
        if out == inp:
            raise UserError(f"{option} {path}: is the {label} input ({inp}); choose another output file")
        if inp.is_dir() and _within(out, inp):
            raise UserError(f"{option} {path}: lies inside the {label} folder {inp}; an input is never written "
                            "into (choose another folder)")


def check_output_folder(option: str, folder: str | os.PathLike, inputs: Paths) -> None:
    """Refuse an output folder that overlaps an input: inside an input folder, or holding
    an input file or folder."""
    out = real(folder)
    for label, inp in _items(inputs):
        if _within(out, inp) and (inp.is_dir() or out == inp):
            raise UserError(f"{option} {folder}: lies inside the {label} {inp}; an input is never written into "
                            "(choose another folder)")
        if _within(inp, out):
            raise UserError(f"{option} {folder}: holds the {label} input {inp}, which it could overwrite "
                            "(choose another folder)")


def check_outputs(files: Mapping[str, str | os.PathLike | None], inputs: Paths) -> None:
    """Every output file against every input, and against each other (two outputs into
    one file would leave only the last)."""
    seen: dict[Path, str] = {}
    for option, path in files.items():
        if path is None:
            continue
        check_output_file(option, path, inputs)
        key = real(path)
        if key in seen:
            raise UserError(f"{option} {path}: is also the {seen[key]} output; give each its own file")
        seen[key] = option
