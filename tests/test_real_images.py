"""Real-image shifts from packaged data: disjoint splits, the MNIST-M blend, determinism, ImageFolder round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.data import DomainSpec, load_domain
from adapt.data.real_images import (
    DIGIT_CLASSES,
    ImageSet,
    ScannerStyle,
    digit_splits,
    load_digit_images,
    make_digits_shift,
    scan_digits,
    texture_digits,
    write_image_folder,
    write_shift,
)

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def textured():
    return make_digits_shift("textured", seed=0)


def test_splits_disjoint_cover_everything_and_stratified(textured):
    ids = [textured.source.digit_ids, textured.target_train.digit_ids, textured.target_test.digit_ids]
    assert sum(len(i) for i in ids) == 1797
    assert len(np.unique(np.concatenate(ids))) == 1797  # no digit image in two parts
    # per class, each part holds its fraction (0.5 / 0.25 / 0.25) to within one image
    _, labels = load_digit_images(8)
    per_class = np.bincount(labels)
    for part, frac in zip((textured.source, textured.target_train, textured.target_test), (0.5, 0.25, 0.25)):
        assert np.all(np.abs(np.bincount(part.labels, minlength=10) - frac * per_class) <= 1)
        np.testing.assert_array_equal(part.labels, labels[part.digit_ids])


def test_same_seed_identical_other_seed_different(textured):
    again = make_digits_shift("textured", seed=0)
    for a, b in ((textured.source, again.source), (textured.target_train, again.target_train),
                 (textured.target_test, again.target_test)):
        assert torch.equal(a.images, b.images)
        np.testing.assert_array_equal(a.digit_ids, b.digit_ids)
    other = make_digits_shift("textured", seed=1)
    assert not np.array_equal(other.source.digit_ids, textured.source.digit_ids)


def test_shapes_channels_and_ranges(textured):
    assert textured.classes == DIGIT_CLASSES
    assert textured.source.images.shape[1:] == (1, 32, 32)
    assert textured.target_train.images.shape[1:] == (3, 32, 32)
    for part in (textured.source, textured.target_train, textured.target_test):
        assert part.images.dtype == torch.float32
        assert 0.0 <= part.images.min() and part.images.max() <= 1.0
    scanner = make_digits_shift("scanner", seed=0)
    assert scanner.target_test.images.shape[1:] == (1, 32, 32)
    # the source does not depend on the target kind
    assert torch.equal(scanner.source.images, textured.source.images)


def test_source_is_the_sklearn_digit_upsampled():
    from sklearn.datasets import load_digits

    x8, _ = load_digit_images(8)
    np.testing.assert_allclose(x8[:, 0].numpy(), load_digits().images / 16.0, atol=1e-7)
    x32, _ = load_digit_images(32)
    # bilinear ×4 (align_corners=False): output pixels 4k+1 and 4k+2 sample the input at
    # k ∓ 1/8, so along each axis their mean is x[k] (the ± 1/8 neighbour weights cancel
    # only in pairs): the mean of the central 2×2 of block (k, l) is
    # Σ_{a,b ∈ {-1/8, +1/8}} bilinear(x, k + a, l + b) / 4, computed here by hand
    k, l = 3, 4
    x = x8[:, 0].double()
    want = 0.0
    for a in (-1, 1):
        for b in (-1, 1):
            r, c = (k - 1, k) if a < 0 else (k, k + 1), (l - 1, l) if b < 0 else (l, l + 1)
            wr = (0.125, 0.875) if a < 0 else (0.875, 0.125)
            wc = (0.125, 0.875) if b < 0 else (0.875, 0.125)
            want = want + sum(wr[i] * wc[j] * x[:, r[i], c[j]] for i in range(2) for j in range(2)) / 4
    got = x32[:, 0, 4 * k + 1 : 4 * k + 3, 4 * l + 1 : 4 * l + 3].double().mean(dim=(1, 2))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_mnist_m_blend_known_answer():
    """|patch − digit|: a stroke (1) inverts the photo, background (0) keeps it."""
    digits = torch.zeros(2, 1, 4, 4)
    digits[:, :, 1:3, 1:3] = 1.0
    digits[1, 0, 0, 0] = 0.25
    photo = np.empty((4, 8, 3), np.float32)
    photo[:, :4] = (0.2, 0.5, 0.9)  # left half: train patches
    photo[:, 4:] = (0.7, 0.1, 0.4)  # right half: test patches
    rng = np.random.default_rng(0)
    train = texture_digits(digits, [photo], rng, "train")
    test = texture_digits(digits, [photo], rng, "test")
    left, right = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([0.7, 0.1, 0.4])
    for out, colour in ((train, left), (test, right)):
        assert out.shape == (2, 3, 4, 4)
        torch.testing.assert_close(out[:, :, 0, 3], colour.expand(2, 3))  # background = photo
        torch.testing.assert_close(out[:, :, 1, 1], (1 - colour).expand(2, 3))  # stroke = inverted
        torch.testing.assert_close(out[1, :, 0, 0], (colour - 0.25).abs())


def test_scanner_curve_known_answer():
    x = torch.tensor([0.0, 0.25, 1.0]).view(1, 1, 1, 3).repeat(1, 1, 3, 1)
    style = ScannerStyle(gamma=0.5, contrast=0.6, offset=0.3, blur=0.0, noise=0.0)
    y = scan_digits(x, style, np.random.default_rng(0))
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([0.3, 0.3 + 0.6 * 0.5, 0.9]))
    noisy = scan_digits(x, ScannerStyle(blur=0.0, noise=0.05), np.random.default_rng(0))
    assert 0 < (noisy - scan_digits(x, ScannerStyle(blur=0.0, noise=0.0), np.random.default_rng(0))).abs().max() < 0.3


def test_image_folder_round_trip(tmp_path, textured):
    small = ImageSet(textured.target_test.images[:30], textured.target_test.labels[:30],
                     textured.target_test.digit_ids[:30], "textured")
    root = write_image_folder(small, tmp_path / "t", textured.classes)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    assert len(files) == 30 and all(f.split("/")[0] in DIGIT_CLASSES for f in files)
    ds = load_domain(DomainSpec(kind="imagefolder", path=str(root)), image_size=32, channels=3,
                     classes=textured.classes)
    assert len(ds) == 30
    # ImageFolder order differs; match each file back by its index in the set
    for i in range(len(ds)):
        k = int(ds.ids[i].rsplit("/", 1)[-1].split(".")[0])
        img, label = ds[i]
        assert label == small.labels[k]
        assert (img - small.images[k]).abs().max() <= 0.5 / 255 + 1e-6


def test_write_shift_layouts(tmp_path):
    shift = make_digits_shift("scanner", seed=2, image_size=16)
    parts = write_shift(shift, tmp_path / "a")
    assert {k: sum(1 for _ in v.rglob("*.png")) for k, v in parts.items()} == {
        "source": len(shift.source), "target_train": len(shift.target_train), "target_test": len(shift.target_test)}
    merged = write_shift(shift, tmp_path / "b", merge_target=True)
    assert sum(1 for _ in merged["target"].rglob("*.png")) == len(shift.target_train) + len(shift.target_test)


def test_bad_arguments_are_user_errors():
    from adapt.errors import UserError

    with pytest.raises(UserError, match="shift must be one of"):
        make_digits_shift("mnist")
    with pytest.raises(UserError, match="fractions"):
        digit_splits(np.zeros(10, np.int64), fractions=(0.5, 0.5, 0.5))
