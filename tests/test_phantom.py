"""The built-in phantom chest X-rays: determinism, ground truth boxes/masks, the planted shortcut."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch

from adapt.data import CLASSES, SITES, DomainSpec, load_domain, make_phantom, parse_domain_arg, write_phantom
from adapt.errors import UserError


@pytest.fixture(scope="module")
def site_a():
    return make_phantom("A", 1000, seed=7, image_size=64)


@pytest.fixture(scope="module")
def site_b():
    return make_phantom("B", 400, seed=7, image_size=64)


def test_same_seed_identical_different_seed_different():
    one = make_phantom("A", 40, seed=3)
    two = make_phantom("A", 40, seed=3)
    assert torch.equal(one.images, two.images)
    np.testing.assert_array_equal(one.labels, two.labels)
    np.testing.assert_array_equal(one.marker_boxes, two.marker_boxes)
    np.testing.assert_array_equal(one.lesion_boxes, two.lesion_boxes)
    assert torch.equal(one.lung_masks, two.lung_masks)
    other = make_phantom("A", 40, seed=4)
    assert not torch.equal(one.images, other.images)
    # the two sites are different patients, not restyled copies
    assert not torch.equal(one.lung_masks, make_phantom("B", 40, seed=3).lung_masks)


def test_shapes_ranges_and_balance(site_a, site_b):
    for batch, n in ((site_a, 1000), (site_b, 400)):
        assert batch.images.shape == (n, 1, 64, 64) and batch.images.dtype == torch.float32
        assert float(batch.images.min()) >= 0.0 and float(batch.images.max()) <= 1.0
        assert np.bincount(batch.labels).tolist() == [n // 2, n // 2]
        assert batch.marker_boxes.shape == (n, 4) and batch.lesion_boxes.shape == (n, 4)
        assert batch.lung_masks.shape == (n, 64, 64)
        assert set(torch.unique(batch.lung_masks).tolist()) == {0.0, 1.0}
        lung_share = batch.lung_masks.mean(dim=(1, 2))
        assert float(lung_share.min()) > 0.05 and float(lung_share.max()) < 0.5


def test_lungs_are_darker_than_the_body(site_a):
    x = site_a.images[:, 0]
    lung = site_a.lung_masks > 0.5
    centre_column = x[:, 16:56, 30:34]  # mediastinum / spine
    assert float(x[lung].mean()) < float(centre_column.mean()) - 0.1


def test_lesions_only_in_opacity_images_inside_a_lung(site_a):
    opacity = site_a.labels == 1
    assert (site_a.lesion_boxes[~opacity] == -1).all()
    boxes = site_a.lesion_boxes[opacity]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    cx = (boxes[:, 0] + boxes[:, 2]) // 2
    cy = (boxes[:, 1] + boxes[:, 3]) // 2
    masks = site_a.lung_masks[opacity]
    inside = masks[np.arange(len(cx)), np.clip(cy, 0, 63), np.clip(cx, 0, 63)]
    assert float(inside.mean()) > 0.9


def test_lesion_brightens_its_lung_region(site_a):
    """Opacity lungs are brighter on average than normal lungs (the signal is there)."""
    x = site_a.images[:, 0]
    lung_mean = (x * site_a.lung_masks).sum(dim=(1, 2)) / site_a.lung_masks.sum(dim=(1, 2))
    labels = torch.from_numpy(site_a.labels)
    assert float(lung_mean[labels == 1].mean()) > float(lung_mean[labels == 0].mean()) + 0.02


def test_marker_only_at_site_a_and_correlated_with_label(site_a, site_b):
    assert (site_b.marker_boxes == -1).all()
    has = site_a.marker_boxes[:, 0] >= 0
    rate_opacity = has[site_a.labels == 1].mean()
    rate_normal = has[site_a.labels == 0].mean()
    p_normal, p_opacity = SITES["A"].marker_rates
    # 500 images a class: 4 binomial standard errors at p = 0.07 are 0.046
    assert abs(rate_normal - p_normal) < 0.05 and abs(rate_opacity - p_opacity) < 0.05
    assert rate_opacity - rate_normal > 0.8  # a shortcut nearly as good as the lesion


def test_marker_is_the_sites_letter_in_its_fixed_top_corner(site_a):
    """Site A's radiographers always mark the same side: an "L" in the top-right corner."""
    assert SITES["A"].marker_corner == "right"
    has = np.flatnonzero(site_a.marker_boxes[:, 0] >= 0)
    boxes = site_a.marker_boxes[has]
    assert (boxes[:, 3] <= 16).all() and (boxes[:, 0] >= 48).all()  # top right, every one
    assert ((boxes[:, 2] - boxes[:, 0]) == 5).all() and ((boxes[:, 3] - boxes[:, 1]) == 7).all()
    # about the same place every time: one 8x8 window (the audit's hot-region size at
    # 64 px) covers the marker of every image
    assert boxes[:, 2].max() - boxes[:, 0].min() <= 8 and boxes[:, 3].max() - boxes[:, 1].min() <= 8
    for i, (x0, y0, x1, y1) in zip(has[:50], boxes[:50]):
        patch = site_a.images[i, 0, y0:y1, x0:x1]
        bright = patch > 0.8
        # "L": the left stroke and the foot are lit, the rest of the box is background air
        assert bool(bright[:, 0].all()) and bool(bright[-1, :].all())
        assert not bool(bright[:-1, 1:].any())
    left = make_phantom("A", 60, seed=7, style=replace(SITES["A"], marker_corner="left"))
    lb = left.marker_boxes[left.marker_boxes[:, 0] >= 0]
    assert len(lb) and (lb[:, 2] <= 16).all()
    with pytest.raises(UserError, match="marker_corner"):
        make_phantom("A", 10, style=replace(SITES["A"], marker_corner="top"))


def test_marker_rate_is_a_parameter_and_painting_it_out_changes_only_the_marker(site_a):
    clean = make_phantom("A", 1000, seed=7, marker_rates=(0.0, 0.0))
    assert (clean.marker_boxes == -1).all()
    outside = torch.ones_like(site_a.images[:, 0], dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(site_a.marker_boxes):
        if x0 >= 0:
            outside[i, y0:y1, x0:x1] = False
    assert torch.equal(site_a.images[:, 0][outside], clean.images[:, 0][outside])
    assert not torch.equal(site_a.images, clean.images)
    always = make_phantom("A", 200, seed=7, marker_rates=(1.0, 1.0))
    assert (always.marker_boxes[:, 0] >= 0).all()


def test_site_b_has_another_intensity_curve(site_a, site_b):
    """Same anatomy model, different acquisition: the intensity histograms differ."""
    qa = np.quantile(site_a.images.numpy(), [0.25, 0.5, 0.75])
    qb = np.quantile(site_b.images.numpy(), [0.25, 0.5, 0.75])
    assert np.abs(qa - qb).max() > 0.05


def test_bad_site_is_a_user_error():
    with pytest.raises(UserError, match="site"):
        make_phantom("D", 10)


def test_load_domain_phantom(site_a):
    ds = load_domain(parse_domain_arg("phantom-cxr:A:1000"), seed=7)
    assert ds.in_memory and len(ds) == 1000 and ds.classes == CLASSES
    assert ds.ids[17] == "phantom-cxr:A/17"
    np.testing.assert_array_equal(ds.labels, site_a.labels)
    np.testing.assert_array_equal(ds.marker_boxes, site_a.marker_boxes)
    torch.testing.assert_close(ds[5][0], site_a.images[5])
    torch.testing.assert_close(ds.mask(5), site_a.roi_masks[5])
    assert bool((site_a.roi_masks >= site_a.lung_masks).all())  # the ROI holds the lungs
    assert ds.groups["site"][0] == "A"

    sub = ds.subset([3, 1])
    np.testing.assert_array_equal(sub.marker_boxes, site_a.marker_boxes[[3, 1]])
    torch.testing.assert_close(sub.images(), site_a.images[[3, 1]])

    rgb = load_domain(DomainSpec(kind="phantom-cxr", site="A", n=10), seed=7, channels=3)
    x, _ = rgb[0]
    assert x.shape == (3, 64, 64) and torch.equal(x[0], x[2])

    flipped = load_domain(DomainSpec(kind="phantom-cxr", site="B", n=10), classes=["opacity", "normal"])
    batch = make_phantom("B", 10, seed=0)
    np.testing.assert_array_equal(flipped.labels, 1 - batch.labels)

    unlabeled = load_domain(DomainSpec(kind="phantom-cxr", site="B", n=10, labeled=False))
    assert (unlabeled.labels == -1).all()


def test_write_phantom_round_trips_through_folder_and_csv(tmp_path):
    root = write_phantom(tmp_path / "ph", "B", 12, seed=2, image_size=32)
    batch = make_phantom("B", 12, seed=2, image_size=32)
    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and set(rows[0]) == {"path", "label", "site"}
    assert rows[0]["path"] == f"{CLASSES[batch.labels[0]]}/B_0.png" and rows[0]["site"] == "B"

    from_csv = load_domain(DomainSpec(kind="csv", path=str(root / "manifest.csv"), group_columns=["site"]), image_size=32)
    np.testing.assert_array_equal(from_csv.labels, batch.labels)
    torch.testing.assert_close(from_csv.images(), batch.images, atol=0.5 / 255 + 1e-6, rtol=0)

    folder = load_domain(DomainSpec(kind="imagefolder", path=str(root)), image_size=32)
    assert folder.classes == CLASSES and np.bincount(folder.labels).tolist() == [6, 6]
