"""What a domain is: a small validated description, and the short command-line form.

A domain is one of

* ``imagefolder`` — a folder with one sub-folder per class (``root/<class>/<image>``);
* ``csv`` — a manifest with ``path,label`` (+ optional group / mask columns), paths
  relative to the CSV file;
* ``dicom`` — a CSV manifest whose paths are DICOM files;
* ``phantom-cxr`` — the built-in synthetic chest X-rays of site ``A``, ``B`` or ``C``.

``parse_domain_arg`` turns the short form used on command lines
(``phantom-cxr:A``, ``phantom-cxr:B:600``, ``path/to/folder``, ``manifest.csv``)
into a :class:`DomainSpec`.
"""

from __future__ import annotations

import csv
from pathlib import Path
import types
import typing
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from adapt.errors import UserError

DomainKind = Literal["imagefolder", "csv", "dicom", "phantom-cxr"]

#: file suffixes read as DICOM when a manifest or folder mixes formats
DICOM_SUFFIXES = (".dcm", ".dicom")
#: a run name (recipe ``name``, ``output.name``, a run of ``method.runs``): one path component of
#: letters, digits and _.+-, not starting with a dot (so never ``.``/``..`` or a hidden folder)
RUN_NAME = r"^[A-Za-z0-9_+-][A-Za-z0-9_.+-]*$"
#: the most phantom images one domain may ask for (each is generated in memory)
MAX_PHANTOM_IMAGES = 100_000


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (int/float, optionally with None) and not a bool."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return bool not in args and any(a in (int, float) for a in args)
    return False


def reject_bool_for_number(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """``epochs: true`` is a typo, not 1: a boolean given for a number field is refused
    (pydantic would otherwise take true/false as 1/0)."""
    annotation = model.model_fields[info.field_name].annotation if info.field_name else None
    if isinstance(value, bool) and _numeric(annotation):
        raise ValueError("must be a number, not a boolean")  # the recipe's formatter adds "(got True)"
    if isinstance(value, float) and value.is_integer() and float not in typing.get_args(annotation) + (annotation,):
        return int(value)  # 1e20 for an int: compared with the field's bound, not refused as "too large to parse"
    return value


class DomainSpec(BaseModel):
    """A validated description of one domain (source or target)."""

    model_config = ConfigDict(extra="forbid")

    kind: DomainKind
    path: str | None = None
    site: Literal["A", "B", "C"] | None = None
    n: int = Field(default=1200, ge=2, le=MAX_PHANTOM_IMAGES)
    path_column: str = "path"
    label_column: str = "label"
    group_columns: list[str] = Field(default_factory=list)
    mask_column: str | None = None
    labeled: bool = True
    #: phantom-cxr only: > 0 plants the ``scanner`` group (adapt/data/phantom.py, docs/fairness.md)
    minority: float = Field(0.0, ge=0, lt=0.5)
    #: the target only: keep k labelled images per class of its training split, the rest
    #: unlabelled (few target labels; adapt/data/few_labels.py); None = every label or none
    labeled_per_class: int | None = Field(default=None, ge=1, le=10_000_000)

    @field_validator("labeled_per_class")
    @classmethod
    def _needs_labels(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("labeled") is False:
            raise ValueError("k labelled images per class need a labelled target (labeled is false)")
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return reject_bool_for_number(cls, value, info)

    @model_validator(mode="after")
    def _check_kind_fields(self) -> DomainSpec:
        if self.kind == "phantom-cxr":
            if self.site is None:
                raise ValueError("phantom-cxr needs site 'A', 'B' or 'C'")
        elif self.path is None:
            raise ValueError(f"kind {self.kind!r} needs a path")
        if self.minority and self.kind != "phantom-cxr":
            raise ValueError("minority plants a group in the phantom only (kind phantom-cxr)")
        return self

    def describe(self) -> str:
        """Short human name, e.g. ``phantom-cxr:A`` or the path."""
        if self.kind == "phantom-cxr":
            return f"phantom-cxr:{self.site}"
        return str(self.path)


def parse_domain_arg(text: str) -> DomainSpec:
    """Parse a command-line domain argument into a :class:`DomainSpec`.

    ``phantom-cxr:A`` / ``phantom-cxr:B:600`` (site, optional image count);
    an existing folder → ``imagefolder``; a ``.csv`` file → ``csv``, or ``dicom``
    when the paths it lists end in ``.dcm``. Anything else is a :class:`UserError`.
    """
    text = text.strip()
    if text.lower().startswith("phantom-cxr"):
        return _parse_phantom(text)
    path = Path(text).expanduser()
    if path.is_dir():
        return DomainSpec(kind="imagefolder", path=str(path))
    if path.suffix.lower() == ".csv":
        if not path.is_file():
            raise UserError(f"{text}: CSV manifest not found")
        kind = "dicom" if _manifest_lists_dicom(path) else "csv"
        return DomainSpec(kind=kind, path=str(path))
    if path.exists():
        raise UserError(f"{text}: a domain is a folder of class sub-folders or a .csv manifest")
    raise UserError(
        f"{text}: no such folder or CSV (expected a folder, a .csv manifest, or phantom-cxr:A|B|C[:N])"
    )


def _parse_phantom(text: str) -> DomainSpec:
    parts = text.split(":")
    if parts[0].lower() != "phantom-cxr" or len(parts) not in (2, 3):
        raise UserError(f"{text}: expected phantom-cxr:A, phantom-cxr:B or phantom-cxr:<site>:<n>")
    site = parts[1].upper()
    if site not in ("A", "B", "C"):
        raise UserError(f"{text}: phantom site must be A, B or C, got {parts[1]!r}")
    fields: dict = {"kind": "phantom-cxr", "site": site}
    if len(parts) == 3:
        try:
            fields["n"] = int(parts[2])
        except ValueError:
            raise UserError(f"{text}: image count {parts[2]!r} is not an integer") from None
    try:
        return DomainSpec(**fields)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"{text}: {first['msg']}") from None


def _manifest_lists_dicom(path: Path, path_column: str = "path", peek_rows: int = 20) -> bool:
    """True when the first listed paths of a manifest are DICOM files (by suffix)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            paths = []
            for row in reader:
                value = (row.get(path_column) or "").strip()
                if value:
                    paths.append(value)
                if len(paths) >= peek_rows:
                    break
    except (OSError, UnicodeDecodeError, csv.Error):
        return False  # load_domain reports the real problem with the file
    return bool(paths) and all(p.lower().endswith(DICOM_SUFFIXES) for p in paths)
