"""AdaBN: BatchNorm running statistics re-estimated on the target domain."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from adapt.errors import UserError
from adapt.methods.adabn import adabn, batch_moments, batchnorm_layers
from tests._methods_standin import TinyClassifier


def _bn_inputs(model, x):
    """Every BatchNorm's input for the whole set ``x`` in one eval-mode forward."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen.__setitem__(mod, inp[0].detach().clone()))
             for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def test_running_stats_are_the_pooled_statistics_of_the_whole_set_and_modes_restored():
    torch.manual_seed(0)
    model = TinyClassifier(width=4, dropout=0.5).eval()
    bn = model.stem[1]
    momentum = bn.momentum
    xt = torch.rand(10, 1, 8, 8) * 0.5 + 0.5
    xt[:4] *= 0.5  # batches with different means: the between-batch term matters
    # unequal batches (4, 4, 2)
    batches = [(xt[:4], None), (xt[4:8], None), (xt[8:], None)]
    seen = adabn(model, batches, "cpu")
    assert seen == 10
    with torch.no_grad():
        pre_bn = model.stem[0]((xt - model.mean) / model.std)  # conv output feeding the first BN
    # hand-computed: mean and unbiased variance over all 10 images × 64 positions
    torch.testing.assert_close(bn.running_mean, pre_bn.mean(dim=(0, 2, 3)), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(bn.running_var, pre_bn.var(dim=(0, 2, 3)), atol=1e-6, rtol=1e-5)
    # the mean of per-batch variances (the old estimate) is measurably smaller here
    old = sum(len(b) * pre_bn[i:i + len(b)].var(dim=(0, 2, 3)) for i, (b, _) in zip((0, 4, 8), batches)) / 10
    assert (pre_bn.var(dim=(0, 2, 3)) - old).abs().max() > 1e-3
    # deeper layers: the statistics the deployed (eval-mode) model meets on the whole set
    for layer, x in _bn_inputs(model, xt).items():
        torch.testing.assert_close(layer.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.running_var, x.var(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert bn.momentum == momentum
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("shape,channels_last", [((64, 16, 32, 32), False), ((64, 16, 32, 32), True),
                                                  ((5, 3), False), ((4, 3, 2, 2, 2), False), ((1, 3, 1, 1), False)])
def test_batch_moments_are_the_per_channel_mean_and_biased_variance(shape, channels_last):
    """Known answer: the mean and the biased variance (divide by n) of every element of a
    channel, computed in float64 from the definition; far from zero (mean 100, sd 3), where
    a one-pass sum of squares would lose the variance; channels-last included (PyTorch's
    CPU BatchNorm-statistics kernel sums those naively: 8e-6 relative error here)."""
    torch.manual_seed(0)
    x = torch.randn(shape) * 3 + 100
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    per_channel = x.double().transpose(0, 1).reshape(shape[1], -1)
    mean, var = batch_moments(x)
    torch.testing.assert_close(mean.double(), per_channel.mean(1), rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), ((per_channel - per_channel.mean(1, keepdim=True)) ** 2).mean(1),
                               rtol=1e-5, atol=1e-12)


def test_class_sorted_image_folder_and_its_shuffled_copy_give_the_whole_set_statistics(tmp_path):
    """Issue 12: ImageFolder reads class by class; the statistics must not depend on it."""
    from torch.utils.data import DataLoader

    from adapt.data import DomainSpec, load_domain
    from adapt.data.real_images import ImageSet, load_digit_images, write_image_folder
    from adapt.models import build_model

    images, labels = load_digit_images(16)
    keep = np.concatenate([np.flatnonzero(labels == c)[:30] for c in range(10)])
    root = write_image_folder(ImageSet(images[keep], labels[keep], keep, "source"), tmp_path / "digits",
                              [str(c) for c in range(10)])
    sorted_ds = load_domain(DomainSpec(kind="imagefolder", path=str(root)), image_size=16, channels=1)
    assert list(sorted_ds.labels) == sorted(sorted_ds.labels)  # ImageFolder order: class by class
    shuffled_ds = sorted_ds.subset(np.random.default_rng(0).permutation(len(sorted_ds)))

    torch.manual_seed(0)
    a = build_model("small_cnn", 10, 1)
    b = copy.deepcopy(a)
    adabn(a, DataLoader(sorted_ds, batch_size=32, shuffle=False), "cpu")
    adabn(b, DataLoader(shuffled_ds, batch_size=25, shuffle=False), "cpu")
    whole = torch.stack([sorted_ds[i][0] for i in range(len(sorted_ds))])
    inputs = _bn_inputs(a, whole)
    layers_a, layers_b = batchnorm_layers(a), batchnorm_layers(b)
    assert len(inputs) == len(layers_a) == 4
    for la, lb in zip(layers_a, layers_b):
        torch.testing.assert_close(la.running_var, lb.running_var, atol=1e-5, rtol=0)
        torch.testing.assert_close(la.running_mean, lb.running_mean, atol=1e-5, rtol=0)
        x = inputs[la]
        torch.testing.assert_close(la.running_var, x.var(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(la.running_mean, x.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)


def test_precise_bn_in_fit_holds_the_training_set_statistics(tmp_path):
    """After every epoch the loop re-estimates the source statistics: exactly, in any order."""
    from adapt.methods.source_only import SourceOnly
    from adapt.models import build_model
    from adapt.recipe import TrainConfig
    from adapt.train import fit

    g = torch.Generator().manual_seed(0)
    x, y = _task(96, g)
    order = torch.argsort(y)  # class-sorted, as an ImageFolder reads
    data = torch.utils.data.TensorDataset(x[order], y[order])
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1)
    fit(model, SourceOnly(), data, cfg=TrainConfig(epochs=1, batch_size=32, device="cpu", patience=None),
        out_dir=tmp_path, seed=0, progress=False)
    for layer, inp in _bn_inputs(model, x).items():
        torch.testing.assert_close(layer.running_var, inp.var(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer.running_mean, inp.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)


def test_tensor_input_and_train_mode_preserved():
    model = TinyClassifier(width=4).train()
    adabn(model, torch.rand(5, 1, 8, 8), "cpu", batch_size=2)
    assert all(m.training for m in model.modules())
    with pytest.raises(UserError):
        adabn(model, [], "cpu")


def _task(n, g):
    """Class 1: centre patch brighter than the background; class 0: darker."""
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 + 0.1 * torch.rand(n, 1, 12, 12, generator=g)
    sign = (2 * y - 1).float().view(n, 1, 1, 1)
    x[:, :, 4:8, 4:8] += 0.15 * sign
    return x.clamp(0, 1), y


def test_adabn_recovers_accuracy_under_intensity_shift():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    xs, ys = _task(256, g)
    model = TinyClassifier(width=4)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for step in range(40):
        idx = torch.randint(0, len(xs), (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    xv, yv = _task(200, g)
    xt = 0.4 * xv + 0.55  # another scanner: brighter, less contrast

    def acc(x):
        with torch.no_grad():
            return (model(x).argmax(1) == yv).float().mean().item()

    source_acc, before = acc(xv), acc(xt)
    adabn(model, xt, "cpu", batch_size=50)
    after = acc(xt)
    assert source_acc > 0.9
    assert after > before + 0.2
    assert after > 0.9


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_one_pass_chain_sweep_equals_the_generic_prefix_passes(arch):
    """The sweep along ``sequential_prefix()`` (one forward pass; residual blocks get prefix
    passes inside them) sets every BatchNorm exactly as one prefix pass per layer does,
    also when the activations outgrow the cache and the rest falls back midway."""
    from adapt.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, 3, 1)
    x = torch.rand(24, 1, 32, 32) * 0.6 + 0.2
    x[:8] *= 0.5  # class-sorted-like: batches with different statistics
    generic = copy.deepcopy(model)
    adabn(generic, x, "cpu", batch_size=8, chain_sweep=False)
    for cache_mb in (256, 0.1):  # 0.1 MB: the first stage's activations already exceed it
        swept = copy.deepcopy(model)
        first_conv = next(m for m in swept.modules() if isinstance(m, torch.nn.Conv2d))
        calls = []
        first_conv.register_forward_hook(lambda *_: calls.append(1))
        adabn(swept, [(x[i:i + 8], None) for i in range(0, 24, 8)], "cpu", cache_mb=cache_mb)
        if cache_mb == 256:  # one pass: 3 batches, + 1 forward that finds the layer order
            assert len(calls) == 3 + 1
        for g, s in zip(batchnorm_layers(generic), batchnorm_layers(swept)):
            torch.testing.assert_close(s.running_mean, g.running_mean, atol=1e-6, rtol=1e-6)
            torch.testing.assert_close(s.running_var, g.running_var, atol=1e-6, rtol=1e-6)
        for layer, inp in _bn_inputs(swept, x).items():  # and they are the whole-set statistics
            torch.testing.assert_close(layer.running_var, inp.var(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    # the statistics changed from the model's initial ones (the test is not vacuous)
    assert any((g.running_var - 1).abs().max() > 1e-2 for g in batchnorm_layers(generic))
