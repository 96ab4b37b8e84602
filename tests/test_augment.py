"""Source augmentation (data.augment): what each kind does to a batch, determinism, recipe errors."""

from __future__ import annotations

import pytest
import torch

from adapt.data.augment import SourceAugment
from adapt.errors import UserError


def test_invert_maps_each_image_to_itself_or_its_negative_about_half_the_time():
    x = torch.rand(400, 3, 8, 8)
    y = SourceAugment(["invert"])(x, torch.Generator().manual_seed(0))
    same = (y - x).abs().flatten(1).amax(1) < 1e-6
    inverted = (y - (1 - x)).abs().flatten(1).amax(1) < 1e-6
    assert bool((same | inverted).all())
    assert 160 < int(inverted.sum()) < 240  # p = 1/2: 200 ± 2.5 sd


def test_colour_is_a_per_image_per_channel_gain_and_offset_in_range():
    x = torch.rand(50, 3, 8, 8) * 0.5  # no clipping: g·x + o <= 0.8
    y = SourceAugment(["colour"])(x, torch.Generator().manual_seed(1))
    xf, yf = x.flatten(2), y.flatten(2)
    # least-squares fit y = g x + o per image and channel recovers an exact affine map
    xc, yc = xf - xf.mean(2, keepdim=True), yf - yf.mean(2, keepdim=True)
    g = (xc * yc).sum(2) / (xc * xc).sum(2)
    o = yf.mean(2) - g * xf.mean(2)
    torch.testing.assert_close(yf, g[..., None] * xf + o[..., None], atol=1e-5, rtol=0)
    assert float(g.min()) >= 0.4 - 1e-5 and float(g.max()) <= 1.0 + 1e-5
    assert float(o.min()) >= -1e-5 and float(o.max()) <= 0.3 + 1e-5
    # the channels of a grey image replicated into three are made to differ
    assert float((g[:, 0] - g[:, 1]).abs().mean()) > 0.05


def test_same_generator_same_batch_and_range():
    x = torch.rand(16, 3, 8, 8)
    aug = SourceAugment(["invert", "colour"])
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_unknown_kind_is_a_user_error_and_the_recipe_names_the_key(tmp_path):
    from adapt.recipe import load_recipe

    with pytest.raises(UserError, match="data.augment"):
        SourceAugment(["blur"])
    path = tmp_path / "r.yaml"
    path.write_text("data: {augment: [blur]}\n")
    with pytest.raises(UserError, match=r"data\.augment\.0"):
        load_recipe(path)


def test_the_loop_augments_the_labelled_batches(tmp_path):
    """fit(augment=...) transforms each labelled batch the objective sees."""
    from adapt.models import build_model
    from adapt.recipe import TrainConfig
    from adapt.train import fit

    seen = []

    class Recording:
        name, uses_target = "recording", False

        def modules(self):
            return {}

        def loss(self, model, xs, ys, xt, progress):
            seen.append(xs.detach().clone())
            return torch.nn.functional.cross_entropy(model(xs), ys), {}

    data = torch.utils.data.TensorDataset(torch.zeros(64, 1, 16, 16), torch.arange(64) % 2)
    torch.manual_seed(0)
    fit(build_model("small_cnn", 2, 1), Recording(), data,
        cfg=TrainConfig(epochs=1, batch_size=16, device="cpu", patience=None), out_dir=tmp_path, seed=0,
        progress=False, augment=SourceAugment(["invert"]))
    images = torch.cat(seen).flatten(1)
    assert len(images) == 64
    per_image = images.amax(1)
    assert bool(((per_image == 0) | (per_image == 1)).all())  # each image: itself or inverted
    assert 0 < int(per_image.sum()) < 64  # some of each
    assert bool((images.amin(1) == images.amax(1)).all())
