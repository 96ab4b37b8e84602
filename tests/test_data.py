"""adapt.data: domain specs, file readers (PNG/JPEG/DICOM), CSV manifests, splits, sampling."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydantic
import pytest
import torch
from PIL import Image

from adapt.data import (
    DomainSpec,
    check_same_classes,
    class_balanced_sampler,
    labeled_per_class,
    load_domain,
    parse_domain_arg,
    stratified_split,
)
from adapt.data.splits import largest_remainder, stratified_subsample
from adapt.errors import UserError


# ----------------------------------------------------------------------------- helpers


def write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], size: int = 16) -> Path:
    """root/<class>/<i>.png with a constant gray level per class (10·(class index+1))."""
    for k, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            write_png(root / cls / f"{i}.png", np.full((size, size), 10 * (k + 1) + i, dtype=np.uint8))
    return root


def write_dicom(path: Path, stored: np.ndarray, photometric: str, **tags) -> Path:
    """A minimal uncompressed 16-bit monochrome DICOM file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


# ----------------------------------------------------------------------------- specs


def test_domain_spec_forbids_unknown_keys_and_checks_kind_fields():
    with pytest.raises(pydantic.ValidationError):
        DomainSpec(kind="imagefolder", path="x", colour="red")
    with pytest.raises(pydantic.ValidationError):
        DomainSpec(kind="phantom-cxr")  # no site
    with pytest.raises(pydantic.ValidationError):
        DomainSpec(kind="csv")  # no path
    spec = DomainSpec(kind="csv", path="m.csv", group_columns=["site", "sex"])
    assert spec.group_columns == ["site", "sex"] and spec.labeled


def test_parse_domain_arg_forms(tmp_path):
    a = parse_domain_arg("phantom-cxr:A")
    assert (a.kind, a.site, a.n) == ("phantom-cxr", "A", 1200)
    b = parse_domain_arg("phantom-cxr:b:600")
    assert (b.kind, b.site, b.n) == ("phantom-cxr", "B", 600)

    folder = make_folder(tmp_path / "imgs", {"x": 1})
    assert parse_domain_arg(str(folder)) == DomainSpec(kind="imagefolder", path=str(folder))

    png_csv = tmp_path / "pngs.csv"
    png_csv.write_text("path,label\nimgs/x/0.png,x\n")
    assert parse_domain_arg(str(png_csv)).kind == "csv"
    dcm_csv = tmp_path / "dcm.csv"
    dcm_csv.write_text("path,label\na.dcm,x\nb.DCM,y\n")
    assert parse_domain_arg(str(dcm_csv)).kind == "dicom"


@pytest.mark.parametrize("bad", ["phantom-cxr:D", "phantom-cxr:A:many", "phantom-cxr:A:1"])
def test_parse_domain_arg_rejects_bad_phantom(bad):
    with pytest.raises(UserError) as err:
        parse_domain_arg(bad)
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_parse_domain_arg_missing_path_names_it(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match="nowhere"):
        parse_domain_arg(str(missing))
    with pytest.raises(UserError, match="gone.csv"):
        parse_domain_arg(str(tmp_path / "gone.csv"))


# ----------------------------------------------------------------------------- imagefolder


def test_imagefolder_labels_values_and_shapes(tmp_path):
    root = make_folder(tmp_path / "dom", {"cat": 2, "dog": 3}, size=16)
    ds = load_domain(DomainSpec(kind="imagefolder", path=str(root)), image_size=16)
    assert ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    assert len(ds) == 5 and ds.groups == {} and ds.skipped == []
    x, y = ds[3]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and y == 1
    # dog/1.png was written with gray level 10·2 + 1 = 21
    assert Path(ds.ids[3]).name == "1.png"
    torch.testing.assert_close(x, torch.full((1, 16, 16), 21 / 255))
    assert ds.images().shape == (5, 1, 16, 16)


def test_resize_colour_to_gray_and_gray_to_three_channels(tmp_path):
    red = np.zeros((24, 40, 3), dtype=np.uint8)
    red[..., 0] = 255
    write_png(tmp_path / "d" / "a" / "red.png", red)
    write_png(tmp_path / "d" / "b" / "gray.png", np.full((10, 30), 200, dtype=np.uint8))
    spec = DomainSpec(kind="imagefolder", path=str(tmp_path / "d"))

    gray = load_domain(spec, image_size=8, channels=1)
    x, _ = gray[0]
    assert x.shape == (1, 8, 8)
    torch.testing.assert_close(x, torch.full((1, 8, 8), 0.299), atol=1e-3, rtol=0)  # BT.601 luma

    rgb = load_domain(spec, image_size=8, channels=3)
    x_red, _ = rgb[0]
    torch.testing.assert_close(x_red[0], torch.ones(8, 8))
    torch.testing.assert_close(x_red[1:], torch.zeros(2, 8, 8))
    x_gray, _ = rgb[1]
    assert x_gray.shape == (3, 8, 8)
    torch.testing.assert_close(x_gray, torch.full((3, 8, 8), 200 / 255))


def test_sixteen_bit_png_keeps_full_range(tmp_path):
    values = np.array([[0, 1000, 1001, 65535]], dtype=np.uint16).repeat(4, axis=0)
    write_png(tmp_path / "d" / "c" / "deep.png", values)
    ds = load_domain(DomainSpec(kind="imagefolder", path=str(tmp_path / "d")), image_size=4)
    x, _ = ds[0]
    np.testing.assert_allclose(x[0, 0].numpy(), values[0] / 65535.0, rtol=0, atol=1e-7)
    # 1000 and 1001 differ by 1/65535: an 8-bit read would merge them
    assert x[0, 0, 2] > x[0, 0, 1]


def test_jpeg_is_read(tmp_path):
    path = tmp_path / "d" / "c" / "a.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)).save(path, quality=95)
    x, _ = load_domain(DomainSpec(kind="imagefolder", path=str(tmp_path / "d")), image_size=16)[0]
    assert abs(float(x.mean()) - 100 / 255) < 2 / 255


# ----------------------------------------------------------------------------- errors


def test_missing_folder_is_a_one_line_user_error(tmp_path):
    with pytest.raises(UserError) as err:
        load_domain(DomainSpec(kind="imagefolder", path=str(tmp_path / "absent")))
    assert "absent" in str(err.value) and "\n" not in str(err.value)


def test_empty_class_folder_names_the_class(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 1})
    (root / "empty_class").mkdir()
    with pytest.raises(UserError, match="empty_class"):
        load_domain(DomainSpec(kind="imagefolder", path=str(root)))


def test_corrupt_image_names_the_file_or_is_skipped(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2, "b": 2})
    bad = root / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    spec = DomainSpec(kind="imagefolder", path=str(root))
    with pytest.raises(UserError) as err:
        load_domain(spec)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)

    ds = load_domain(spec, skip_unreadable=True)
    assert len(ds) == 4
    assert [f for f, _ in ds.skipped] == [str(bad)]
    assert str(bad) not in ds.ids


def test_class_sets_differ_error_lists_the_names(tmp_path):
    src = load_domain(DomainSpec(kind="imagefolder", path=str(make_folder(tmp_path / "s", {"cat": 1, "dog": 1}))))
    tgt = load_domain(DomainSpec(kind="imagefolder", path=str(make_folder(tmp_path / "t", {"cat": 1, "cow": 1}))))
    with pytest.raises(UserError) as err:
        check_same_classes(src, tgt)
    msg = str(err.value)
    assert "dog" in msg and "cow" in msg and "\n" not in msg
    check_same_classes(src, src)  # same classes: no error


def test_shared_class_mapping_and_unknown_label(tmp_path):
    root = make_folder(tmp_path / "t", {"cat": 1, "dog": 2})
    spec = DomainSpec(kind="imagefolder", path=str(root))
    ds = load_domain(spec, classes=["dog", "cat"])
    assert ds.classes == ["dog", "cat"] and ds.labels.tolist() == [1, 0, 0]
    with pytest.raises(UserError, match="dog"):
        load_domain(spec, classes=["cat", "bird"])


# ----------------------------------------------------------------------------- csv


def test_csv_manifest_relative_paths_groups_and_masks(tmp_path):
    data = tmp_path / "study"
    write_png(data / "img" / "p1.png", np.full((8, 8), 50, dtype=np.uint8))
    write_png(data / "img" / "p2.png", np.full((8, 8), 150, dtype=np.uint8))
    write_png(data / "img" / "p3.png", np.full((8, 8), 250, dtype=np.uint8))
    roi = np.zeros((8, 8), dtype=np.uint8)
    roi[2:6, 1:4] = 255
    write_png(data / "masks" / "m1.png", roi)
    manifest = data / "manifest.csv"
    manifest.write_text(
        "path,label,site,sex,roi\n"
        "img/p1.png,effusion,north,F,masks/m1.png\n"
        "img/p2.png,normal,south,M,\n"
        "img/p3.png,effusion,south,F,\n"
    )
    spec = DomainSpec(kind="csv", path=str(manifest), group_columns=["site", "sex"], mask_column="roi")
    ds = load_domain(spec, image_size=8)
    assert ds.classes == ["effusion", "normal"]
    assert ds.labels.tolist() == [0, 1, 0]
    assert ds.groups == {"site": ["north", "south", "south"], "sex": ["F", "M", "F"]}
    assert ds.ids[1] == str(data / "img" / "p2.png")
    torch.testing.assert_close(ds[1][0], torch.full((1, 8, 8), 150 / 255))
    np.testing.assert_array_equal(ds.mask(0).numpy(), roi / 255.0)
    assert ds.mask(1) is None

    sub = ds.subset([2, 0])
    assert sub.groups == {"site": ["south", "north"], "sex": ["F", "F"]}
    assert sub.labels.tolist() == [0, 0] and sub.ids == [ds.ids[2], ds.ids[0]]
    np.testing.assert_array_equal(sub.mask(1).numpy(), roi / 255.0)

    # lazily loaded from files: pickles small and reads the same after the round trip
    clone = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(clone[2][0], ds[2][0])


def test_csv_missing_column_and_missing_file(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,diagnosis\na.png,x\n")
    with pytest.raises(UserError) as err:
        load_domain(DomainSpec(kind="csv", path=str(manifest)))
    assert "'label'" in str(err.value) and "m.csv" in str(err.value)
    with pytest.raises(UserError, match="'site'"):
        load_domain(DomainSpec(kind="csv", path=str(manifest), label_column="diagnosis", group_columns=["site"]))
    ok = load_domain(DomainSpec(kind="csv", path=str(manifest), label_column="diagnosis"))
    assert ok.classes == ["x"]
    with pytest.raises(UserError, match="nope.csv"):
        load_domain(DomainSpec(kind="csv", path=str(tmp_path / "nope.csv")))

    manifest.write_text("path,label\na.png,x\nghost.png,x\n")
    with pytest.raises(UserError, match="ghost.png"):
        load_domain(DomainSpec(kind="csv", path=str(manifest)))
    ds = load_domain(DomainSpec(kind="csv", path=str(manifest)), skip_unreadable=True)
    assert len(ds) == 1 and ds.skipped[0][0].endswith("ghost.png")


def test_unlabeled_csv_without_label_column(tmp_path):
    write_png(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\na.png\n")
    ds = load_domain(DomainSpec(kind="csv", path=str(manifest), labeled=False), classes=["n", "o"])
    assert ds.labels.tolist() == [-1] and ds.classes == ["n", "o"]
    assert ds[0][1] == -1


# ----------------------------------------------------------------------------- dicom


def test_dicom_rescale_window_and_monochrome1_inversion(tmp_path):
    stored = np.array([[0, 500, 750, 1500], [2000, 2500, 3000, 4095]], dtype=np.uint16)
    slope, intercept, center, width = 2.0, -500.0, 1000.0, 2001.0
    tags = dict(RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=center, WindowWidth=width)
    write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", **tags)
    write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", **tags)
    write_dicom(tmp_path / "plain.dcm", stored, "MONOCHROME2")
    manifest = tmp_path / "dicom.csv"
    manifest.write_text("path,label\nm2.dcm,a\nm1.dcm,a\nplain.dcm,b\n")
    spec = parse_domain_arg(str(manifest))
    assert spec.kind == "dicom"
    ds = load_domain(spec, image_size=4)  # 2×4 pixels → resized; compare at native size below

    from adapt.data.images import read_dicom_array

    # LINEAR window (PS3.3 C.11.2.1.2.1) on the rescaled values, mapped to [0, 1]
    hu = slope * stored.astype(np.float64) + intercept
    expected = np.clip((hu - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    m2 = read_dicom_array(tmp_path / "m2.dcm")
    np.testing.assert_allclose(m2, expected, atol=1e-6)
    # the rescale matters: stored 750 → 2·750 − 500 = 1000, the window centre (unrescaled: 0.375)
    assert abs(m2[0, 2] - 0.5) < 1e-3
    np.testing.assert_allclose(read_dicom_array(tmp_path / "m1.dcm"), 1.0 - expected, atol=1e-6)
    # no window: the stored 12-bit range maps to [0, 1]
    np.testing.assert_allclose(read_dicom_array(tmp_path / "plain.dcm"), stored / 4095.0, atol=1e-6)

    x_m2, _ = ds[0]
    x_m1, _ = ds[1]
    assert x_m2.shape == (1, 4, 4)
    torch.testing.assert_close(x_m1, 1.0 - x_m2, atol=1e-5, rtol=0)


def test_corrupt_dicom_names_the_file(tmp_path):
    (tmp_path / "bad.dcm").write_bytes(b"not dicom at all")
    write_dicom(tmp_path / "ok.dcm", np.zeros((4, 4), dtype=np.uint16), "MONOCHROME2")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nok.dcm,a\nbad.dcm,a\n")
    with pytest.raises(UserError, match="bad.dcm"):
        load_domain(DomainSpec(kind="dicom", path=str(manifest)))
    ds = load_domain(DomainSpec(kind="dicom", path=str(manifest)), skip_unreadable=True)
    assert len(ds) == 1 and len(ds.skipped) == 1


# ----------------------------------------------------------------------------- splits


def test_stratified_split_deterministic_stratified_and_complete():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 7)
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    a = stratified_split(labels, fractions, seed=3)
    b = stratified_split(labels, fractions, seed=3)
    c = stratified_split(labels, fractions, seed=4)
    for name in fractions:
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[name], c[name]) for name in fractions)

    together = np.concatenate(list(a.values()))
    assert sorted(together.tolist()) == list(range(len(labels)))  # disjoint and complete
    for name, frac in fractions.items():
        for cls in (0, 1, 2):
            count = int((labels[a[name]] == cls).sum())
            assert abs(count - frac * (labels == cls).sum()) <= 1, (name, cls, count)


def test_stratified_split_every_class_in_every_part():
    labels = np.array([0] * 3 + [1] * 40)
    parts = stratified_split(labels, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    for idx in parts.values():
        assert set(labels[idx].tolist()) == {0, 1}


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(UserError, match="sum to 1"):
        stratified_split(np.zeros(10), {"train": 0.5, "val": 0.2}, seed=0)


def test_largest_remainder_known_answers():
    # Hamilton: floors (2, 1, 1) leave one seat, which goes to the largest remainder (0.4)
    np.testing.assert_array_equal(largest_remainder(np.array([2.4, 1.35, 1.25]), 5), [3, 1, 1])
    # a tie goes to the first entry, or to a seeded draw with an rng
    np.testing.assert_array_equal(largest_remainder(np.array([1.5, 1.5]), 3), [2, 1])
    winners = {int(np.argmax(largest_remainder(np.array([1.5, 1.5]), 3, rng=np.random.default_rng(s))))
               for s in range(20)}
    assert winners == {0, 1}
    # given starting counts are kept; only the seats left are handed out
    np.testing.assert_array_equal(largest_remainder(np.array([0.2, 2.8]), 3, counts=np.array([1, 1])), [1, 2])


@pytest.mark.parametrize("ties", ["first", "random"])
def test_stratified_subsample_is_exact_proportional_and_seeded(ties):
    labels = np.array([0] * 300 + [1] * 100 + [-1] * 20)
    idx = stratified_subsample(labels, 105, seed=1, ties=ties)
    assert idx.dtype == np.int64 and len(idx) == 105 and len(np.unique(idx)) == 105
    assert np.all(np.diff(idx) > 0)
    counts = {c: int((labels[idx] == c).sum()) for c in (0, 1, -1)}
    assert abs(counts[0] - 75) <= 1 and abs(counts[1] - 25) <= 1 and abs(counts[-1] - 5) <= 1
    np.testing.assert_array_equal(idx, stratified_subsample(labels, 105, seed=1, ties=ties))
    assert not np.array_equal(idx, stratified_subsample(labels, 105, seed=2, ties=ties))
    np.testing.assert_array_equal(stratified_subsample(labels, 1000, seed=0, ties=ties), np.arange(len(labels)))


def test_stratified_subsample_ties_and_small_groups():
    labels = np.array([0] * 5 + [1] * 5)
    # quotas 2.5 / 2.5: "first" gives the extra row to group 0, "random" to either
    assert np.bincount(labels[stratified_subsample(labels, 5, seed=0)]).tolist() == [3, 2]
    extra = {int(np.argmax(np.bincount(labels[stratified_subsample(labels, 5, seed=s, ties="random")])))
             for s in range(20)}
    assert extra == {0, 1}
    # a group too small for its quota vanishes, unless keep_every_group
    labels = np.array([0] * 98 + [1] * 2)
    assert 1 not in labels[stratified_subsample(labels, 10, seed=0)]
    kept = labels[stratified_subsample(labels, 10, seed=0, keep_every_group=True)]
    assert len(kept) == 10 and (kept == 1).sum() == 1
    with pytest.raises(UserError, match="max_samples=0"):
        stratified_subsample(labels, 0, what="max_samples")


def test_labeled_per_class():
    labels = np.array([0] * 10 + [1] * 5 + [-1] * 4)
    idx = labeled_per_class(labels, k=3, seed=1)
    assert np.bincount(labels[idx]).tolist() == [3, 3]
    np.testing.assert_array_equal(idx, labeled_per_class(labels, k=3, seed=1))
    assert np.bincount(labels[labeled_per_class(labels, k=8, seed=1)]).tolist() == [8, 5]


def test_class_balanced_sampler_balances_and_is_seeded():
    labels = np.array([0] * 900 + [1] * 100)
    drawn = np.array(list(class_balanced_sampler(labels, seed=0, num_samples=4000)))
    share_minority = float((labels[drawn] == 1).mean())
    assert abs(share_minority - 0.5) < 0.04  # plain uniform sampling would give 0.1
    again = np.array(list(class_balanced_sampler(labels, seed=0, num_samples=4000)))
    np.testing.assert_array_equal(drawn, again)
    other = np.array(list(class_balanced_sampler(labels, seed=1, num_samples=4000)))
    assert not np.array_equal(drawn, other)
