"""Atomic file writes: a reader never sees a half-written file.

Each writer writes to a temporary file in the destination folder and then
``os.replace``-s it over the target, which is atomic on POSIX and Windows.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from adapt.errors import UserError, exception_line


def _file_mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would leave: the existing file's when
    it is replaced, else 0o666 less the process umask (``mkstemp`` makes 0o600, which
    would hide results from the user's group, unlike every other file they write)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, racing other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; create parent folders. Returns the path.

    The file gets the permissions a plain write would give it (see :func:`_file_mode`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:  # a failed write() names no file: name it
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN/inf are written as null)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` into memory, then write atomically."""
    import torch  # late: keeps this module (and the torch-free audit/report that use to_jsonable) light

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def torch_load(path: str | os.PathLike, what: str, *, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, or a one-line :class:`UserError`
    "``path``: not a readable ``what`` (reason)".

    Only tensors and plain values are ever loaded: a file holding pickled Python objects
    (code could run on loading) is refused, and said so in words instead of torch's
    multi-line advice on how to load it anyway. Torch's warnings on the way (legacy
    formats, a refused pickle) are not shown: the error line says what matters.
    """
    import torch  # late, as in atomic_torch_save

    other = sniff_format(path)
    if other is not None and other != "a zip archive":
        raise UserError(f"{path}: not a readable {what}: it is {other}, not a PyTorch checkpoint "
                        "(domaingap reads the model.pt files adapt-run writes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        reason = ("it holds pickled Python objects, which are never loaded: only tensors and plain values"
                  if "Weights only load failed" in str(exc) else exception_line(exc))
    except Exception as exc:  # noqa: BLE001 — corrupt, truncated, not a torch file at all
        reason = exception_line(exc)
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason)[:200]
    raise UserError(f"{path}: not a readable {what} ({reason})")


def sniff_format(path: str | os.PathLike) -> str | None:
    """What a file is, from its first bytes, when it is a format people mistake for a
    checkpoint or a data file: ``"a safetensors file"``, ``"an ONNX model"``, ``"a NumPy
    .npz archive"``, ... ; ``"a zip archive"`` for another zip (a PyTorch checkpoint is
    one); ``None`` when unknown or unreadable (the reader then says what is wrong)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors file"  # 8-byte little-endian header length, then a JSON header
    if head[:1] == b"\x08" and (b"onnx" in head[:256].lower() or b"pytorch" in head[:256]):
        return "an ONNX model"  # protobuf ModelProto: field 1 (ir_version), then producer_name
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (OSError, zipfile.BadZipFile):
            return "a damaged or truncated zip archive"
        if names and all(n.endswith(".npy") for n in names):
            return "a NumPy .npz archive"
        return "a zip archive"
    for magic, what in ((b"\x89HDF", "an HDF5 file (Keras/TensorFlow?)"), (b"\x89PNG", "a PNG image"),
                        (b"\xff\xd8\xff", "a JPEG image"), (b"\x93NUMPY", "a NumPy .npy array"),
                        (b"GGUF", "a GGUF model")):
        if head.startswith(magic):
            return what
    return None


def to_jsonable(obj: Any, *, strict: bool = False, where: str = "value") -> Any:
    """``obj`` as plain JSON types: dicts (string keys), lists, str, int, float, bool, None.

    Converts torch tensors and numpy arrays/scalars (to lists/numbers), tuples (to lists),
    paths (to strings), objects with ``.to_dict()`` (the diagnostics' results), pydantic
    models (``model_dump(mode="json")``) and dataclasses;
    non-finite floats become ``None``. Anything else is returned unchanged, or with
    ``strict`` raises ``TypeError`` naming where in ``obj`` it sits (``where.key[i]``).
    """
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return to_jsonable(obj.item(), strict=strict, where=where)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v, strict=strict, where=f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, strict=strict, where=f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor, without importing torch
        return to_jsonable(obj.detach().cpu().tolist(), strict=strict, where=where)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), strict=strict, where=where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):  # the diagnostics' result objects
        return to_jsonable(obj.to_dict(), strict=strict, where=where)
    if hasattr(obj, "model_dump"):  # pydantic (the recipe)
        return to_jsonable(obj.model_dump(mode="json"), strict=strict, where=where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), strict=strict, where=where)
    if strict:
        raise TypeError(f"{where}: cannot store a {type(obj).__name__}")
    return obj
