"""Style transfer: FDA's spectrum surgery, histogram matching, cross-domain MixStyle."""

from __future__ import annotations

import math

import pytest
import torch

from adapt.methods.style import (
    FDA,
    HistogramMatching,
    MixStyle,
    fda_transfer,
    instance_stats,
    intensity_quantiles,
    match_histograms,
)
from tests._methods_standin import TinyClassifier


def _images(seed, n=4, c=1, h=16, w=20):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g)


def _centred(x):
    return torch.fft.fftshift(torch.fft.fft2(x.double()), dim=(-2, -1))


def test_fda_beta_zero_is_identity():
    xs, xt = _images(0), _images(1)
    torch.testing.assert_close(fda_transfer(xs, xt, 0.0), xs)
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(FDA(beta=0.0)(xs, xt, g), xs)


@pytest.mark.parametrize("hw", [(16, 20), (15, 17)])
def test_fda_swaps_low_frequency_amplitude_and_keeps_source_phase(hw):
    h, w = hw
    xs, xt = _images(0, h=h, w=w), _images(1, h=h, w=w) ** 2
    beta = 0.15
    b = math.floor(beta * min(h, w))
    out = fda_transfer(xs, xt, beta)
    assert out.shape == xs.shape
    fo, fs, ft = _centred(out), _centred(xs), _centred(xt)
    ch, cw = h // 2, w // 2
    low = torch.zeros(h, w, dtype=torch.bool)
    low[ch - b : ch + b + 1, cw - b : cw + b + 1] = True
    # amplitude: target's inside the centred square, source's outside
    torch.testing.assert_close(fo.abs()[..., low], ft.abs()[..., low], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(fo.abs()[..., ~low], fs.abs()[..., ~low], atol=1e-3, rtol=1e-4)
    # phase: the source's everywhere, i.e. F(out) = |F(out)| · exp(i ∠F(x_s))
    expected = torch.polar(fo.abs(), fs.angle())
    torch.testing.assert_close(fo, expected, atol=2e-3, rtol=1e-4)
    # the DC term carries the target's mean intensity
    torch.testing.assert_close(out.mean(dim=(-2, -1)), xt.mean(dim=(-2, -1)), atol=1e-5, rtol=0)


def test_fda_style_pairs_with_batch_images_and_clamps():
    xs, xt = _images(0, n=5), _images(1, n=3)
    g = torch.Generator().manual_seed(7)
    out = FDA(beta=0.1)(xs, xt, g)
    assert out.shape == xs.shape and out.min() >= 0 and out.max() <= 1
    # reproducible: same generator state → same pairing
    again = FDA(beta=0.1)(xs, xt, torch.Generator().manual_seed(7))
    torch.testing.assert_close(out, again)
    # each output's mean intensity is one of the target images' (DC swap, before clamping)
    raw = FDA(beta=0.1, clamp=False)(xs, xt, torch.Generator().manual_seed(7))
    means_t = xt.mean(dim=(1, 2, 3))
    for m in raw.mean(dim=(1, 2, 3)):
        assert (means_t - m).abs().min() < 1e-5


def test_histogram_matching_maps_quantiles_onto_target():
    g = torch.Generator().manual_seed(0)
    xs = torch.rand(6, 1, 32, 32, generator=g) ** 2  # dark source scanner
    xt = 0.3 + 0.6 * torch.rand(10, 1, 32, 32, generator=g) ** 0.5  # bright, compressed target
    hm = HistogramMatching(n_quantiles=256)
    hm.fit(xt)
    out = hm(xs, None)
    assert out.shape == xs.shape
    ref = intensity_quantiles(xt, 256)[0]
    levels = torch.linspace(0, 1, 256)
    for img in out:
        q = torch.quantile(img.flatten(), levels)
        assert (q - ref).abs().max() < 0.01
    # monotone per image: the pixel order is preserved
    for a, b in zip(xs, out):
        order = a.flatten().argsort()
        assert (b.flatten()[order].diff() >= -1e-7).all()


def test_match_histograms_ties_and_reference_forms():
    x = torch.zeros(2, 2, 8, 8)
    x[:, :, :4] = 1.0  # two values, half each
    ref = torch.linspace(0, 1, 101)
    out = match_histograms(x, ref)  # [Q] shared by channels
    # ties share one value: the reference quantile at the block's mid-rank (1/4 and 3/4)
    assert torch.allclose(out[:, :, :4], torch.tensor(0.75)) and torch.allclose(out[:, :, 4:], torch.tensor(0.25))
    single = match_histograms(x[0], torch.stack([ref, ref]))  # [C,H,W] with [C,Q]
    torch.testing.assert_close(single, out[0])


def test_histogram_matching_requires_fit():
    with pytest.raises(RuntimeError):
        HistogramMatching()(torch.rand(1, 1, 4, 4), None)


def _stand_in():
    torch.manual_seed(0)
    return TinyClassifier(num_classes=2, width=4)


def _small_cnn():
    from adapt.models import build_model

    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=2, in_channels=1)


@pytest.mark.parametrize("make_model", [_stand_in, _small_cnn], ids=["stand-in", "small_cnn"])
def test_mixstyle_identity_in_eval_and_changes_train_features(make_model):
    model = make_model()
    xs, xt = _images(0, n=4, h=32, w=32), _images(1, n=3, h=32, w=32) * 0.3 + 0.6
    ms = MixStyle(p=1.0, alpha=0.3, layers=(0, 1), seed=0)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.train()
    ref_train = model.features(xs)  # batch statistics: independent of running stats
    model.eval()
    ref_eval = model.features(xs)
    model.train()
    running = bn.running_mean.clone()

    ms.attach(model)
    model.eval()
    ms.observe_target(model, xt)
    torch.testing.assert_close(model.features(xs), ref_eval)  # eval: untouched
    model.train()
    ms.observe_target(model, xt)
    torch.testing.assert_close(bn.running_mean, running)  # observing leaves BN as it was
    mixed = model.features(xs)
    assert mixed.shape == ref_train.shape
    assert (mixed - ref_train).abs().max() > 1e-3
    # one-shot: the next (target) forward is not restyled
    torch.testing.assert_close(model.features(xs), ref_train)
    ms.detach()
    torch.testing.assert_close(model.features(xs), ref_train)


def test_mixstyle_moves_source_stats_towards_target():
    model = _stand_in()
    model.train()
    xs, xt = _images(0, n=4), _images(1, n=4) * 0.2 + 0.8
    with torch.no_grad():
        mu_s, _ = instance_stats(model.stem((xs - model.mean) / model.std))  # before attaching
    ms = MixStyle(p=1.0, alpha=0.1, layers=(0,), seed=3)
    ms.attach(model)
    captured = {}
    # hooks run in registration order: this one sees MixStyle's output
    h = model.stem.register_forward_hook(lambda m, i, o: captured.__setitem__("o", o))
    ms.observe_target(model, xt)
    mu_t_all = ms._target[0][0]
    model.features(xs)
    h.remove()
    mu_o, _ = instance_stats(captured["o"])
    # each output mean lies between the source mean and the range of the target means
    lo = torch.minimum(mu_s, mu_t_all.min(0, keepdim=True).values) - 1e-4
    hi = torch.maximum(mu_s, mu_t_all.max(0, keepdim=True).values) + 1e-4
    assert ((mu_o >= lo) & (mu_o <= hi)).all()
    assert (mu_o - mu_s).abs().max() > 1e-3
    # gradient still flows to the parameters through the restyled maps
    ms.observe_target(model, xt)
    model.zero_grad()
    model(xs).sum().backward()
    assert model.stem[0].weight.grad.abs().sum() > 0
    ms.detach()
