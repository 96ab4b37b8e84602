"""Real-image domain shifts built from images that ship inside packages (no download).

Source: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``: 1,797
8×8 images, 0..16 grey levels, ten classes), scaled to [0, 1] and upsampled
bilinearly to ``image_size`` (32 by default) — white strokes on black, one channel.

Two targets, both from *other* digit images than the source's:

- ``textured`` — the MNIST-M protocol (Ganin et al., JMLR 2016, sec. 5.2.2): every
  target digit is blended with a random patch cut from a natural photograph,
  ``out = |patch − digit|`` per pixel and per RGB channel (strokes invert the photo
  under them). The photographs are scikit-image's bundled ones that load without
  pooch/network (:data:`PHOTOS`); target-train patches come from the left half of
  each photograph, target-test patches from the right half, so the two target
  splits share neither digits nor photo pixels. Three channels.
- ``scanner`` — a scanner-like acquisition change of the same kind as the phantom's
  site B: intensity curve ``y = offset + contrast · x^gamma``, Gaussian blur, additive
  Gaussian noise (:class:`ScannerStyle`). One channel.

Disjointness: the 1,797 digits are split per class (stratified, seeded) into source,
target-train and target-test index sets with no image in two of them
(:func:`digit_splits`). Everything is deterministic from ``seed``.

Public API (stable; used by ``benchmarks/digits_study.py`` and the verdict suite)::

    shift = make_digits_shift("textured", seed=0)      # RealShift (in memory)
    shift.source.images      # float32 [N, 1, 32, 32] in [0, 1]; .labels int64 [N]
    shift.target_train.images  # float32 [M, 3, 32, 32]
    paths = write_shift(shift, "data/digits")          # {"source": .../source, ...}
    write_image_folder(shift.source, "src/", shift.classes)  # root/<class>/<i>.png

scikit-image is imported inside :func:`load_photos` only: it is an optional
dependency (the ``test`` extra), needed just for the textured target.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from adapt.data.phantom import gaussian_blur  # the phantom's separable blur (one implementation)
from adapt.errors import UserError
from adapt.io import atomic_write_bytes

#: class names of the digits shifts; index = label
DIGIT_CLASSES = [str(i) for i in range(10)]

#: scikit-image photographs used for the MNIST-M patches: colour photographs of natural
#: scenes and objects that ship inside the scikit-image wheel (``skimage/data/*.png``)
#: and load without pooch. Left out: the grey textures, microscopy and astronomy images
#: (not natural-photo statistics) and every image that needs a download.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")

#: the shifts :func:`make_digits_shift` builds
SHIFTS = ("textured", "scanner")


@dataclass(frozen=True)
class ScannerStyle:
    """A scanner-like acquisition applied to a digit x in [0, 1].

    y = offset + contrast · x^gamma, then a Gaussian blur of σ = ``blur`` pixels (at 32
    px; scaled with the image size) and additive Gaussian noise of σ = ``noise``
    (intensity units); clipped to [0, 1].
    """

    gamma: float = 0.5
    contrast: float = 0.6
    offset: float = 0.3
    blur: float = 1.0
    noise: float = 0.08


@dataclass
class ImageSet:
    """Images of one split of one domain.

    images: float32 [N, C, S, S] in [0, 1]; labels: int64 [N] (index into the shift's
    classes); digit_ids: int64 [N], the row of ``load_digits`` each image was drawn from
    (for disjointness checks); domain: "source" or the target's name.
    """

    images: torch.Tensor
    labels: np.ndarray
    digit_ids: np.ndarray
    domain: str

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class RealShift:
    """A source → target shift with disjoint source, target-train and target-test images."""

    name: str
    classes: list[str]
    source: ImageSet
    target_train: ImageSet
    target_test: ImageSet
    seed: int


def load_digit_images(image_size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """scikit-learn's 1,797 digits → (float32 [1797, 1, S, S] in [0, 1], int64 labels).

    The 8×8 images hold 0..16; they are divided by 16 and upsampled bilinearly
    (``align_corners=False``) to S×S.
    """
    from sklearn.datasets import load_digits  # late import: sklearn start-up is slow

    if image_size < 8:
        raise UserError(f"digits: image_size must be at least 8, got {image_size}")
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return x.clamp_(0.0, 1.0), d.target.astype(np.int64)


def digit_splits(labels: np.ndarray, seed: int = 0,
                 fractions: tuple[float, float, float] = (0.5, 0.25, 0.25)) -> dict[str, np.ndarray]:
    """Disjoint per-class split of digit indices into source / target_train / target_test.

    Within each class the indices are permuted (seeded) and cut at the cumulative
    ``fractions`` (which must sum to 1); every index lands in exactly one part. Returns
    sorted int64 index arrays.
    """
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or np.any(f <= 0) or abs(f.sum() - 1.0) > 1e-6:
        raise UserError(f"digits: fractions must be three positive numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xD161]))
    parts: dict[str, list[np.ndarray]] = {"source": [], "target_train": [], "target_test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(f)[:2] * len(idx)).astype(int)
        for name, chunk in zip(parts, np.split(idx, cuts)):
            parts[name].append(chunk)
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def load_photos() -> list[np.ndarray]:
    """The :data:`PHOTOS` as float32 [H, W, 3] arrays in [0, 1] (bundled, no download)."""
    try:
        import skimage.data  # late import: optional dependency, only the textured target needs it
    except ImportError:
        raise UserError("digits: the textured target needs scikit-image (pip install scikit-image)") from None
    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        if name == "stereo_motorcycle":
            img = img[0]  # (left, right, disparity): the left view
        out.append(np.asarray(img, dtype=np.float32)[..., :3] / 255.0)
    return out


def texture_digits(digits: torch.Tensor, photos: list[np.ndarray], rng: np.random.Generator,
                   part: str) -> torch.Tensor:
    """MNIST-M blend: |patch − digit| per pixel and RGB channel.

    digits: float32 [N, 1, S, S] in [0, 1]; photos: [H, W, 3] arrays; ``part`` "train"
    cuts patches from the left half of each photograph, "test" from the right half.
    Each image gets a uniformly drawn photograph and an S×S patch at a uniform position
    inside that half, at the photograph's own resolution. Returns float32 [N, 3, S, S].
    """
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    n, _, S, _ = digits.shape
    which = rng.integers(0, len(photos), n)
    patches = np.empty((n, S, S, 3), dtype=np.float32)
    for i, p in enumerate(which):
        photo = photos[p]
        H, W = photo.shape[:2]
        lo, hi = (0, W // 2) if part == "train" else (W // 2, W)
        y0 = int(rng.integers(0, H - S + 1))
        x0 = int(rng.integers(lo, hi - S + 1))
        patches[i] = photo[y0 : y0 + S, x0 : x0 + S]
    patches_t = torch.from_numpy(patches).permute(0, 3, 1, 2)
    return (patches_t - digits).abs().clamp_(0.0, 1.0).contiguous()


def scan_digits(digits: torch.Tensor, style: ScannerStyle, rng: np.random.Generator) -> torch.Tensor:
    """Apply :class:`ScannerStyle` to float32 [N, 1, S, S] digits; returns the same shape."""
    S = digits.shape[-1]
    x = digits[:, 0].numpy().astype(np.float32)
    y = style.offset + style.contrast * np.power(x, style.gamma)
    y = gaussian_blur(y.astype(np.float32), style.blur * S / 32.0)
    y = y + style.noise * rng.standard_normal(y.shape, dtype=np.float32)
    return torch.from_numpy(np.clip(y, 0.0, 1.0).astype(np.float32))[:, None]


def make_digits_shift(kind: str = "textured", seed: int = 0, image_size: int = 32, *,
                      fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
                      scanner: ScannerStyle | None = None) -> RealShift:
    """Build the digits → ``kind`` shift ("textured" or "scanner") in memory.

    Source, target-train and target-test hold disjoint digit images in the
    proportions ``fractions`` (stratified per class, ~898 / 450 / 449 of 1,797 by
    default). The source stays one-channel; the textured target is RGB. Deterministic:
    the same arguments give identical tensors.
    """
    if kind not in SHIFTS:
        raise UserError(f"digits: shift must be one of {', '.join(SHIFTS)}, got {kind!r}")
    images, labels = load_digit_images(image_size)
    idx = digit_splits(labels, seed, fractions)
    rng_train, rng_test = (np.random.default_rng(s)
                           for s in np.random.SeedSequence([int(seed), 0x7A6, SHIFTS.index(kind)]).spawn(2))

    def part(name: str, imgs: torch.Tensor, domain: str) -> ImageSet:
        return ImageSet(imgs, labels[idx[name]], idx[name], domain)

    if kind == "textured":
        photos = load_photos()
        t_train = texture_digits(images[idx["target_train"]], photos, rng_train, "train")
        t_test = texture_digits(images[idx["target_test"]], photos, rng_test, "test")
    else:
        style = scanner or ScannerStyle()
        t_train = scan_digits(images[idx["target_train"]], style, rng_train)
        t_test = scan_digits(images[idx["target_test"]], style, rng_test)
    return RealShift(
        name=f"digits->{kind}", classes=list(DIGIT_CLASSES),
        source=part("source", images[idx["source"]].contiguous(), "source"),
        target_train=part("target_train", t_train, kind),
        target_test=part("target_test", t_test, kind),
        seed=int(seed),
    )


def write_image_folder(images: ImageSet, root: str | Path, classes: list[str]) -> Path:
    """Write an :class:`ImageSet` as 8-bit PNGs ``root/<class>/<i>.png`` (an ImageFolder).

    One-channel sets become grey ("L") PNGs, three-channel sets RGB PNGs; ``i`` is the
    position in the set. Each file is written atomically. Returns ``root``.
    """
    root = Path(root)
    pixels = (images.images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).astype(np.uint8)
    for i, (img, label) in enumerate(zip(pixels, images.labels)):
        buf = io.BytesIO()
        if img.shape[-1] == 1:
            Image.fromarray(img[..., 0], mode="L").save(buf, format="PNG")
        else:
            Image.fromarray(img, mode="RGB").save(buf, format="PNG")
        atomic_write_bytes(root / classes[int(label)] / f"{i}.png", buf.getvalue())
    return root


def write_shift(shift: RealShift, root: str | Path, *, merge_target: bool = False) -> dict[str, Path]:
    """Write a shift as ImageFolder folders under ``root``.

    Default: ``root/source``, ``root/target_train``, ``root/target_test``. With
    ``merge_target`` the two target splits go to one ``root/target`` folder instead (what
    ``adapt-run`` takes: it splits the target into train/val/test itself), numbered
    target-train first, then target-test. Returns the folder of each part.
    """
    root = Path(root)
    out = {"source": write_image_folder(shift.source, root / "source", shift.classes)}
    if not merge_target:
        out["target_train"] = write_image_folder(shift.target_train, root / "target_train", shift.classes)
        out["target_test"] = write_image_folder(shift.target_test, root / "target_test", shift.classes)
        return out
    merged = ImageSet(
        torch.cat([shift.target_train.images, shift.target_test.images]),
        np.concatenate([shift.target_train.labels, shift.target_test.labels]),
        np.concatenate([shift.target_train.digit_ids, shift.target_test.digit_ids]),
        shift.target_train.domain,
    )
    out["target"] = write_image_folder(merged, root / "target", shift.classes)
    return out
