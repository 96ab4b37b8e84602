"""Domain datasets: one class for every source of images, and ``load_domain``.

A :class:`DomainDataset` is either *file-backed* (ImageFolder, CSV, DICOM: it holds
paths and decodes lazily in ``__getitem__``, so it pickles cheaply into DataLoader
workers) or *in memory* (the phantom: one [N, 1, S, S] tensor). Both look the same
to the rest of the toolkit: ``ds[i] -> ([C, S, S] float32 in [0, 1], label)``.

Files are checked when the domain is loaded (a cheap header check per file), so a
corrupt image is reported before training starts, not in epoch 7.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from adapt.data.images import IMAGE_SUFFIXES, check_readable, is_dicom_path, read_image, read_mask
from adapt.data.phantom import CLASSES, make_phantom
from adapt.data.spec import DomainSpec
from adapt.errors import UserError


class DomainDataset(Dataset):
    """Images of one domain with labels shared across domains.

    Attributes (per sample arrays/lists have length N):
        name: short name of the domain (folder, CSV path, ``phantom-cxr:A``)
        classes: class names; index = label id (shared by source and target)
        labels: int64 [N], -1 = unknown
        ids: file path per sample, or ``phantom-cxr:A/17``
        groups: group column → per-sample values (e.g. site, sex, age), possibly empty
        skipped: (file, reason) of files left out with ``skip_unreadable``
        channels, image_size: shape of what ``__getitem__`` returns ([channels, S, S])
        marker_boxes, lesion_boxes: int [N, 4] (x0, y0, x1, y1; ends exclusive;
            -1 = none) — known only for the phantom, else None
    """

    def __init__(
        self,
        *,
        name: str,
        classes: Sequence[str],
        labels: np.ndarray,
        ids: Sequence[str],
        channels: int,
        image_size: int,
        paths: Sequence[str] | None = None,
        dicom: Sequence[bool] | None = None,
        mask_paths: Sequence[str | None] | None = None,
        images: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        groups: dict[str, list[str]] | None = None,
        skipped: list[tuple[str, str]] | None = None,
        marker_boxes: np.ndarray | None = None,
        lesion_boxes: np.ndarray | None = None,
    ) -> None:
        if (paths is None) == (images is None):
            raise ValueError("DomainDataset needs exactly one of paths (files) or images (memory)")
        self.name = name
        self.classes = list(classes)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.ids = list(ids)
        self.channels = int(channels)
        self.image_size = int(image_size)
        self.groups = {k: list(v) for k, v in (groups or {}).items()}
        self.skipped = list(skipped or [])
        self.marker_boxes = marker_boxes
        self.lesion_boxes = lesion_boxes
        self._paths = list(paths) if paths is not None else None
        self._dicom = list(dicom) if dicom is not None else ([False] * len(self.ids) if paths is not None else None)
        self._mask_paths = list(mask_paths) if mask_paths is not None else None
        self._images = images  # [N, 1, S, S] float32, in-memory domains only
        self._masks = masks  # [N, S, S] float32 {0, 1}, in-memory domains only
        n = len(self.labels)
        if len(self.ids) != n or (self._paths is not None and len(self._paths) != n) or (
            images is not None and images.shape[0] != n
        ):
            raise ValueError("DomainDataset: per-sample fields differ in length")

    # -- Dataset protocol ------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """([channels, S, S] float32 in [0, 1], label) — label -1 when unknown."""
        i = int(i)
        if self._images is not None:
            x = self._images[i]
            if self.channels == 3 and x.shape[0] == 1:
                x = x.expand(3, -1, -1).clone()
        else:
            x = read_image(self._paths[i], self.image_size, self.channels, dicom=self._dicom[i])
        return x, int(self.labels[i])

    # -- conveniences ------------------------------------------------------------------

    def input_files(self) -> list[str]:
        """The files this domain reads (images and masks; none for an in-memory domain)."""
        return [*(self._paths or []), *(m for m in (self._mask_paths or []) if m)]

    @property
    def in_memory(self) -> bool:
        return self._images is not None

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def mask(self, i: int) -> torch.Tensor | None:
        """Region of interest [S, S] float {0, 1} for sample i (the body silhouette for the phantom), if known."""
        i = int(i)
        if self._masks is not None:
            return self._masks[i]
        if self._mask_paths is not None and self._mask_paths[i]:
            return read_mask(self._mask_paths[i], self.image_size)
        return None

    def images(self, indices: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """Stacked images [N, C, S, S] (all, or the given indices)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if self._images is not None:
            x = self._images[torch.from_numpy(idx)]
            return x.expand(-1, 3, -1, -1).clone() if self.channels == 3 and x.shape[1] == 1 else x
        if len(idx) == 0:
            return torch.empty(0, self.channels, self.image_size, self.image_size)
        return torch.stack([self[int(j)][0] for j in idx])

    def class_counts(self) -> np.ndarray:
        """Number of labelled samples per class, [len(classes)]."""
        known = self.labels[self.labels >= 0]
        return np.bincount(known, minlength=len(self.classes))

    def subset(self, indices: Sequence[int] | np.ndarray) -> DomainDataset:
        """A new dataset with only the given samples (same classes, same settings)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        pick = idx.tolist()
        t_idx = torch.from_numpy(idx)
        return DomainDataset(
            name=self.name,
            classes=self.classes,
            labels=self.labels[idx],
            ids=[self.ids[j] for j in pick],
            channels=self.channels,
            image_size=self.image_size,
            paths=[self._paths[j] for j in pick] if self._paths is not None else None,
            dicom=[self._dicom[j] for j in pick] if self._dicom is not None else None,
            mask_paths=[self._mask_paths[j] for j in pick] if self._mask_paths is not None else None,
            images=self._images[t_idx] if self._images is not None else None,
            masks=self._masks[t_idx] if self._masks is not None else None,
            groups={k: [v[j] for j in pick] for k, v in self.groups.items()},
            skipped=self.skipped,
            marker_boxes=self.marker_boxes[idx] if self.marker_boxes is not None else None,
            lesion_boxes=self.lesion_boxes[idx] if self.lesion_boxes is not None else None,
        )

    def __repr__(self) -> str:
        where = "memory" if self.in_memory else "files"
        return (
            f"DomainDataset({self.name!r}, n={len(self)}, classes={self.classes}, "
            f"channels={self.channels}, size={self.image_size}, {where})"
        )


# ------------------------------------------------------------------------------ loading


def load_domain(
    spec: DomainSpec,
    *,
    image_size: int = 64,
    channels: int = 1,
    seed: int = 0,
    skip_unreadable: bool = False,
    classes: list[str] | None = None,
) -> DomainDataset:
    """Load the domain described by ``spec``.

    ``classes`` fixes the class-index mapping (pass the source's classes when loading
    the target); a label outside it is a :class:`UserError` naming the label. ``seed``
    only matters for the phantom. Unreadable files are a :class:`UserError` naming the
    file, or — with ``skip_unreadable`` — left out and listed in ``.skipped``.
    """
    if channels not in (1, 3):
        raise UserError(f"channels: must be 1 or 3, got {channels}")
    if image_size < 1:
        raise UserError(f"image_size: must be positive, got {image_size}")
    if spec.kind == "phantom-cxr":
        return _load_phantom(spec, image_size, channels, seed, classes)
    if spec.kind == "imagefolder":
        records = _scan_imagefolder(Path(spec.path), spec.labeled)
        force_dicom = False
    else:
        records = _read_manifest(spec)
        force_dicom = spec.kind == "dicom"
    return _build_file_domain(spec, records, image_size, channels, skip_unreadable, classes, force_dicom)


def check_same_classes(source: DomainDataset, target: DomainDataset) -> None:
    """UserError (one line, listing the differing names) when the class sets differ."""
    s, t = set(source.classes), set(target.classes)
    if s == t:
        if source.classes != target.classes:
            raise UserError(
                f"classes: {source.name} and {target.name} order their classes differently "
                f"({source.classes} vs {target.classes}); load the target with classes=source.classes"
            )
        return
    parts = []
    if s - t:
        parts.append(f"only in source {source.name}: {sorted(s - t)}")
    if t - s:
        parts.append(f"only in target {target.name}: {sorted(t - s)}")
    raise UserError("classes differ between domains; " + "; ".join(parts))


def check_trainable_classes(source: DomainDataset, target: DomainDataset, target_subset: bool = False) -> list[str]:
    """UserError unless ``source`` can train a classifier for ``target``; returns the
    classes a labelled target lacks (only possible with ``target_subset``).

    A classifier needs at least two classes (with one, every prediction is right and
    every accuracy 100 %). A labelled target must hold images of every class unless the
    recipe says it is a subset by design (``data.target_classes: subset``): a class
    missing by accident would otherwise just report a recall of null.
    """
    present = [c for c, k in zip(source.classes, source.class_counts()) if k > 0]
    if len(present) < 2:
        raise UserError(f"{source.name}: at least two classes are needed to train a classifier "
                        f"(found {len(present)}: {present})")
    if not target.has_labels:
        return []
    missing = [c for c, k in zip(target.classes, target.class_counts()) if k == 0]
    if missing and not target_subset:
        raise UserError(f"{target.name}: the target has no images of class(es) {missing} "
                        "(set data.target_classes: subset if it lacks them by design)")
    return missing


# -- file records ---------------------------------------------------------------------


class _Record:
    """One listed image before it is checked: file, label name, groups, mask file."""

    __slots__ = ("path", "label", "groups", "mask")

    def __init__(self, path: Path, label: str | None, groups: dict[str, str], mask: Path | None):
        self.path, self.label, self.groups, self.mask = path, label, groups, mask


def _scan_imagefolder(root: Path, labeled: bool) -> list[_Record]:
    """``root/<class>/**/<image>`` → records (label = sub-folder name).

    With ``labeled=False`` a flat folder of images is accepted as well.
    """
    if not root.exists():
        raise UserError(f"{root}: folder not found")
    if not root.is_dir():
        raise UserError(f"{root}: not a folder (an ImageFolder domain is a folder of class sub-folders)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        flat = image_files(root, recursive=False)
        if flat and not labeled:
            return [_Record(p, None, {}, None) for p in flat]
        if flat:
            raise UserError(f"{root}: images but no class sub-folders (expected {root}/<class>/<image>)")
        raise UserError(f"{root}: empty domain (no class sub-folders with images)")
    records = []
    for d in class_dirs:
        files = image_files(d, recursive=True)
        if not files:
            raise UserError(f"{d}: class {d.name!r} has no images")
        records += [_Record(p, d.name, {}, None) for p in files]
    return records


def image_files(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        # a broken or looping link is kept: it is then listed as unreadable, never dropped without a word
        p for p in it if (p.is_file() or p.is_symlink() and not p.is_dir())
        and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _read_manifest(spec: DomainSpec) -> list[_Record]:
    """CSV manifest → records; relative paths are relative to the CSV's folder."""
    csv_path = Path(spec.path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: CSV manifest not found")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{csv_path}: cannot read CSV ({err})") from None
    needed = [spec.path_column] + ([spec.label_column] if spec.labeled else []) + list(spec.group_columns)
    if spec.mask_column:
        needed.append(spec.mask_column)
    for col in needed:
        if col not in columns:
            raise UserError(f"{csv_path}: no column {col!r} (columns: {', '.join(columns) or 'none'})")
    if not rows:
        raise UserError(f"{csv_path}: empty domain (no rows)")
    base = csv_path.parent
    records = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        rel = row[spec.path_column]
        if not rel:
            raise UserError(f"{csv_path}:{line}: empty {spec.path_column!r}")
        label = row.get(spec.label_column) or None
        if spec.labeled and label is None:
            raise UserError(f"{csv_path}:{line}: empty {spec.label_column!r}")
        mask = row.get(spec.mask_column) if spec.mask_column else None
        records.append(
            _Record(
                _resolve(base, rel),
                label if spec.labeled else None,
                {g: row[g] for g in spec.group_columns},
                _resolve(base, mask) if mask else None,
            )
        )
    return records


def _resolve(base: Path, rel: str) -> Path:
    p = Path(rel).expanduser()
    return p if p.is_absolute() else base / p


def _build_file_domain(
    spec: DomainSpec,
    records: list[_Record],
    image_size: int,
    channels: int,
    skip_unreadable: bool,
    classes: list[str] | None,
    force_dicom: bool,
) -> DomainDataset:
    found = sorted({r.label for r in records if r.label is not None}, key=_natural_key)
    class_list = list(classes) if classes is not None else found
    index = {c: i for i, c in enumerate(class_list)}
    unknown = [c for c in found if c not in index]
    if unknown and spec.labeled:
        raise UserError(f"{spec.path}: label(s) {unknown} not among the classes {class_list}")

    _refuse_repeated_files(spec, records)
    kept: list[_Record] = []
    skipped: list[tuple[str, str]] = []
    for r in records:
        dicom = force_dicom or is_dicom_path(r.path)
        # with skipping on, decode every image now: a skipped file must never be met mid-training
        reason = check_readable(r.path, dicom, decode=skip_unreadable)
        if reason is None and r.mask is not None:
            mask_reason = check_readable(r.mask, is_dicom_path(r.mask))
            if mask_reason is not None:
                reason = f"mask {r.mask}: {mask_reason}"
        if reason is None:
            kept.append(r)
        elif skip_unreadable:
            skipped.append((str(r.path), reason))
        else:
            raise UserError(f"{r.path}: {reason} (use skip_unreadable to leave such files out)")
    if not kept:
        raise UserError(f"{spec.path}: empty domain (no readable images; {len(skipped)} skipped)")
    if spec.labeled:
        counts = {c: 0 for c in found}
        for r in kept:
            counts[r.label] += 1
        empty = [c for c, k in counts.items() if k == 0]
        if empty:
            raise UserError(f"{spec.path}: class {empty[0]!r} has no readable images")

    return DomainDataset(
        name=str(spec.path),
        classes=class_list,
        # labeled=False: labels unknown even when folder names suggest them
        labels=np.array(
            [index[r.label] if spec.labeled and r.label is not None else -1 for r in kept], dtype=np.int64
        ),
        ids=[str(r.path) for r in kept],
        channels=channels,
        image_size=image_size,
        paths=[str(r.path) for r in kept],
        dicom=[force_dicom or is_dicom_path(r.path) for r in kept],
        mask_paths=[str(r.mask) if r.mask is not None else None for r in kept] if spec.mask_column else None,
        groups={g: [r.groups[g] for r in kept] for g in spec.group_columns},
        skipped=skipped,
    )


def _refuse_repeated_files(spec: DomainSpec, records: list[_Record]) -> None:
    """One image listed twice (a repeated manifest row, or a link to another listed file)
    could land in both train and test: refused, naming the first repeat."""
    seen: dict[str, Path] = {}
    for r in records:
        key = os.path.realpath(r.path)
        if key in seen:
            same = "listed twice" if seen[key] == r.path else f"the same file as {seen[key]}"
            raise UserError(f"{spec.path}: {r.path} is {same} (one image could land in both train and test; "
                            "list each file once)")
        seen[key] = r.path


def _natural_key(name: str):
    """Sort class names numerically when they are integers ('2' before '10')."""
    try:
        return (0, int(name), "")
    except ValueError:
        return (1, 0, name)


# -- phantom --------------------------------------------------------------------------


def _load_phantom(
    spec: DomainSpec, image_size: int, channels: int, seed: int, classes: list[str] | None
) -> DomainDataset:
    batch = make_phantom(spec.site, spec.n, seed=seed, image_size=image_size, minority=spec.minority)
    class_list = list(classes) if classes is not None else list(CLASSES)
    missing = [c for c in CLASSES if c not in class_list]
    if missing:
        raise UserError(f"phantom-cxr:{spec.site}: label(s) {missing} not among the classes {class_list}")
    remap = np.array([class_list.index(c) for c in CLASSES], dtype=np.int64)
    labels = remap[batch.labels] if spec.labeled else np.full(len(batch.labels), -1, dtype=np.int64)
    name = f"phantom-cxr:{spec.site}"
    return DomainDataset(
        name=name,
        classes=class_list,
        labels=labels,
        ids=[f"{name}/{i}" for i in range(len(labels))],
        channels=channels,
        image_size=image_size,
        images=batch.images,
        masks=batch.roi_masks,
        groups={"site": [spec.site] * len(labels), **({"scanner": batch.scanners} if batch.scanners else {})},
        marker_boxes=batch.marker_boxes,
        lesion_boxes=batch.lesion_boxes,
    )
