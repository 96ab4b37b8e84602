"""Image file readers: PNG/JPEG (8- and 16-bit) through Pillow, DICOM through pydicom.

Every reader returns float32 in [0, 1], shape [C, S, S] (C = requested channels,
S = requested size). Conventions:

* 8-bit images are divided by 255, 16-bit images by 65535 — the full 16-bit range is
  kept (never truncated to 8 bits).
* Colour → grayscale with the ITU-R BT.601 luma weights (0.299, 0.587, 0.114) when one
  channel is requested; grayscale → 3 channels by repetition when three are requested.
* Resizing is to a square S×S (aspect ratio not kept), bilinear with antialiasing.
* DICOM: stored values → Modality LUT (RescaleSlope/Intercept) → VOI LUT or window
  (WindowCenter/Width) via pydicom, then scaled by the output range of that stage to
  [0, 1]; MONOCHROME1 (bright = low value) is inverted so bright always means dense.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adapt.data.spec import DICOM_SUFFIXES
from adapt.errors import UserError

#: file suffixes an ImageFolder scan picks up
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff") + DICOM_SUFFIXES

#: ITU-R BT.601 luma weights for RGB → gray
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def is_dicom_path(path: str | Path) -> bool:
    return str(path).lower().endswith(DICOM_SUFFIXES)


# ----------------------------------------------------------------------------- checks


def check_readable(path: str | Path, dicom: bool, decode: bool = False) -> str | None:
    """Readability check done at load time: ``None`` if fine, else the reason.

    Pillow: ``Image.open(...).verify()`` (header and, for PNG, chunk checksums) — cheap,
    but it does not inflate the pixel data, so a file with valid checksums around
    garbage compressed data passes; ``decode=True`` also decodes every pixel (what
    ``skip_unreadable`` uses, so that a skipped file is never met mid-training).
    An image above Pillow's decompression-bomb limit is unreadable.
    DICOM: ``dcmread`` must parse and the file must hold pixel data.
    """
    path = Path(path)
    if not path.is_file():
        return "broken or looping symbolic link" if path.is_symlink() else "file not found"
    if dicom:
        return _check_dicom(path, decode)
    try:
        with warnings.catch_warnings():
            # past MAX_IMAGE_PIXELS Pillow warns (and past twice that it refuses): a
            # large image is read, but without a warning line per file
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                float_pixels = im.mode == "F"
                im.verify()
            if decode or float_pixels:  # a float image is decoded now: its pixels may be NaN/inf
                read_pil_array(path)
    except Image.DecompressionBombError as err:
        return f"not a readable image (decompression bomb: {_short(err)})"
    except Exception as err:  # noqa: BLE001 — decoding errors come in many types (PIL, zlib)
        return f"not a readable image ({_short(err)})"
    return None


def _check_dicom(path: Path, decode: bool = False) -> str | None:
    # late (here and below): only DICOM folders pay pydicom's import time
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as err:
        return f"not a readable DICOM file ({_short(err)})"
    if "PixelData" not in ds:
        return "DICOM file has no pixel data"
    if decode:
        try:
            read_dicom_array(path)
        except Exception as err:  # noqa: BLE001 — pixel decoders raise many types
            return f"not a readable DICOM file ({_short(err)})"
    return None


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:120] if text else type(err).__name__


# ----------------------------------------------------------------------------- readers


def read_image(path: str | Path, image_size: int, channels: int, dicom: bool | None = None) -> torch.Tensor:
    """Read one file → float32 [channels, image_size, image_size] in [0, 1].

    ``dicom=None`` decides by suffix (.dcm/.dicom). A file that fails to decode is a
    :class:`UserError` naming it.
    """
    if dicom is None:
        dicom = is_dicom_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            gray_or_rgb = read_dicom_array(path) if dicom else read_pil_array(path)
    except UserError:
        raise
    except Exception as err:  # decoding errors come in many types (PIL, zlib, pydicom)
        raise UserError(f"{path}: cannot decode image ({_short(err)}); "
                        "data.skip_unreadable: true decodes every image before training and skips such files") from None
    return to_tensor(gray_or_rgb, image_size, channels)


def read_mask(path: str | Path, image_size: int) -> torch.Tensor:
    """Read a region-of-interest mask image → float32 [S, S] with values {0, 1}.

    Any non-zero pixel is inside; resized bilinearly then thresholded at 0.5.
    """
    arr = read_dicom_array(path) if is_dicom_path(path) else read_pil_array(path)
    if arr.ndim == 3:
        arr = arr.max(axis=-1)
    inside = (arr > 0).astype(np.float32)
    t = _resize(torch.from_numpy(inside)[None], image_size)[0]
    return (t >= 0.5).float()


def read_pil_array(path: str | Path) -> np.ndarray:
    """Pillow-readable file → float32 [H, W] or [H, W, 3] in [0, 1] (full bit depth)."""
    with Image.open(path) as im:
        im.load()
        return pil_to_array(im)


def pil_to_array(im: Image.Image) -> np.ndarray:
    """Pillow image → float32 [H, W] (gray) or [H, W, 3] (colour) in [0, 1]."""
    mode = im.mode
    if mode.startswith("I;16"):
        # 16-bit gray: keep all 16 bits
        return np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0
    if mode == "I":
        # 32-bit integer mode: Pillow uses it for 16-bit PNGs in some versions;
        # such files hold 0..65535
        arr = np.asarray(im, dtype=np.int64).astype(np.float32)
        return np.clip(arr / 65535.0, 0.0, 1.0)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:  # NaN would become an all-zero image, inf a NaN one: the file is wrong, say so
            raise ValueError(f"{bad} non-finite pixel value(s) (NaN or inf) in a float image")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return arr
        return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if mode == "1":
        im = im.convert("L")
        mode = "L"
    if mode == "LA":
        im = im.getchannel("L")
        mode = "L"
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).astype(np.float32) / 255.0
    # palette, RGBA, CMYK, YCbCr, ...: to RGB
    return np.asarray(im.convert("RGB"), dtype=np.uint8).astype(np.float32) / 255.0


def read_dicom_array(path: str | Path) -> np.ndarray:
    """DICOM file → float32 [H, W] (monochrome) or [H, W, 3] (colour) in [0, 1]."""
    import pydicom  # late: only DICOM folders pay pydicom's import time

    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about harmless header quirks
        arr = ds.pixel_array
    if arr.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 1:
        arr = arr[0]  # multi-frame: the first frame
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if not photometric.startswith("MONOCHROME"):
        rgb = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 4:
            rgb = rgb[0]
        bits = int(getattr(ds, "BitsStored", 8))
        return np.clip(rgb / float(2**bits - 1), 0.0, 1.0)
    return dicom_monochrome_to_unit(np.asarray(arr), ds)


def dicom_monochrome_to_unit(stored: np.ndarray, ds) -> np.ndarray:
    """Stored monochrome values → [0, 1] with bright = dense.

    value = VOI(Modality(stored)); unit = (value − lo) / (hi − lo) with [lo, hi] the
    output range of the last stage applied (PS3.3 C.11.1 and C.11.2); then
    unit ← 1 − unit for MONOCHROME1. Without a VOI stage the range is the rescaled
    range of the stored bits, so images from one scanner keep their relative levels.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut  # late: pydicom's import time

    modality = apply_modality_lut(stored, ds)
    values = modality.astype(np.float64)
    lo, hi = _modality_range(ds)
    if ds.get("VOILUTSequence"):
        # a LUT is indexed by the (integer) modality output, so give it that, not floats
        if not np.issubdtype(modality.dtype, np.integer):
            modality = np.rint(modality).astype(np.int64)
        values = apply_voi_lut(modality, ds, prefer_lut=True).astype(np.float64)
        lo, hi = 0.0, float(2 ** int(ds.VOILUTSequence[0].LUTDescriptor[2]) - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # pydicom maps the window onto the modality output range [lo, hi]
        values = apply_voi_lut(values, ds, prefer_lut=False).astype(np.float64)
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    unit = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0).astype(np.float32)
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def _modality_range(ds) -> tuple[float, float]:
    """Range of the Modality LUT output: the stored range, rescaled (as pydicom does)."""
    bits = int(getattr(ds, "BitsStored", 16))
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    if int(getattr(ds, "PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


# ----------------------------------------------------------------------------- tensor


def to_tensor(arr: np.ndarray, image_size: int, channels: int) -> torch.Tensor:
    """[H, W] or [H, W, 3] float array in [0, 1] → float32 [channels, S, S]."""
    if channels not in (1, 3):
        raise UserError(f"channels: must be 1 or 3, got {channels}")
    if arr.ndim == 3:
        if channels == 1:
            arr = arr[..., :3] @ _LUMA
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1), dtype=np.float32))
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    t = _resize(t, image_size)
    if channels == 3 and t.shape[0] == 1:
        t = t.repeat(3, 1, 1)
    return t.clamp_(0.0, 1.0)


def _resize(t: torch.Tensor, size: int) -> torch.Tensor:
    """[C, H, W] → [C, size, size], bilinear with antialiasing (no-op if already there)."""
    if t.shape[-2:] == (size, size):
        return t
    return F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
