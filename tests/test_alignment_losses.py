"""MCC, DeepCORAL and DAN's MK-MMD: values and gradients equal pytorch-adapt's MCCLoss,
CORALLoss and MMDLoss (quadratic, the DAN paper's 33 kernel scales); the objectives add
``weight`` × the term to the source cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from adapt.errors import UserError
from adapt.methods.coral import DeepCORAL, coral_loss, covariance
from adapt.methods.dan import DAN, dan_kernel_scales, mk_mmd2
from adapt.methods.mcc import MCC, mcc_loss
from tests._methods_standin import TinyClassifier


def _grad(fn, *xs):
    xs = [x.clone().requires_grad_(True) for x in xs]
    out = fn(*xs)
    return out.detach(), torch.autograd.grad(out, xs)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_mcc_matches_pytorch_adapt(temperature):
    from pytorch_adapt.layers import MCCLoss

    logits = torch.randn(9, 4, generator=torch.Generator().manual_seed(0)) * 2
    ours, g_ours = _grad(lambda z: mcc_loss(z, temperature), logits)
    theirs, g_theirs = _grad(MCCLoss(T=temperature), logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g_ours[0], g_theirs[0], rtol=1e-4, atol=1e-7)


def test_mcc_is_zero_without_confusion_and_high_with_it():
    confident = torch.eye(3).repeat(2, 1) * 50  # each sample certain, classes disjoint
    assert mcc_loss(confident, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(6, 3)  # every sample spread evenly: C̃ = 1/K everywhere
    assert mcc_loss(uniform, 1.0).item() == pytest.approx((3 - 1) / 3, rel=1e-6)


def test_coral_matches_pytorch_adapt():
    from pytorch_adapt.layers import CORALLoss

    g = torch.Generator().manual_seed(1)
    xs, xt = torch.randn(10, 6, generator=g), torch.randn(8, 6, generator=g) * 2 + 1
    ours, g_ours = _grad(coral_loss, xs, xt)
    theirs, g_theirs = _grad(CORALLoss(), xs, xt)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # and numpy's covariance
    torch.testing.assert_close(covariance(xs.double()), torch.from_numpy(__import__("numpy").cov(xs.double().numpy(),
                                                                                                 rowvar=False)))


def test_coral_needs_two_samples():
    with pytest.raises(UserError, match="covariance"):
        coral_loss(torch.randn(1, 3), torch.randn(4, 3))


def test_dan_kernel_scales_are_the_papers():
    s = dan_kernel_scales()
    assert len(s) == 33 and s[0].item() == pytest.approx(2 ** -8) and s[-1].item() == pytest.approx(2 ** 8)
    assert s[1].item() / s[0].item() == pytest.approx(math.sqrt(2))


def test_mk_mmd_matches_pytorch_adapt():
    from pytorch_adapt.layers import MMDLoss
    from pytorch_adapt.layers.utils import get_kernel_scales

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 5, generator=g), torch.randn(9, 5, generator=g) + 0.7
    ref = MMDLoss(kernel_scales=get_kernel_scales(-8, 8, 33), mmd_type="quadratic")
    ours, g_ours = _grad(lambda a, b: mk_mmd2(a, b, dan_kernel_scales()), x, y)
    theirs, g_theirs = _grad(ref, x, y)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-6)
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-3, atol=1e-6)


def test_mk_mmd_is_unbiased_near_zero_for_one_distribution_and_large_for_two():
    g = torch.Generator().manual_seed(3)
    same = [mk_mmd2(torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g), dan_kernel_scales()).item()
            for _ in range(20)]
    assert abs(sum(same) / len(same)) < 0.01  # the U-statistic's mean is 0 under H0
    apart = mk_mmd2(torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g) + 3, dan_kernel_scales())
    assert apart.item() > 0.3


@pytest.mark.parametrize("cls", [DeepCORAL, DAN])
def test_alignment_objectives_add_weighted_term_to_source_ce(cls):
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=3)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.rand(6, 1, 12, 12, generator=g), torch.randint(0, 3, (6,), generator=g)
    xt = torch.rand(7, 1, 12, 12, generator=g) * 0.5 + 0.4
    obj = cls(weight=2.0, layers=("features", "logits"))
    total, logs = obj.loss(model, xs, ys, xt, 0.3)
    term = coral_loss if cls is DeepCORAL else (lambda a, b: mk_mmd2(a, b, dan_kernel_scales()))
    with torch.no_grad():
        fs, ft = model.features(xs), model.features(xt)
        want_align = term(fs, ft) + term(model.head(fs), model.head(ft))
        want = F.cross_entropy(model.head(fs), ys) + 2.0 * want_align
    assert logs[f"{obj.name}_loss"] == pytest.approx(want_align.item(), rel=1e-5)
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_mcc_objective():
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=3)
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.rand(6, 1, 12, 12, generator=g), torch.randint(0, 3, (6,), generator=g)
    xt = torch.rand(7, 1, 12, 12, generator=g)
    total, logs = MCC(weight=0.5).loss(model, xs, ys, xt, 0.0)
    with torch.no_grad():
        want = F.cross_entropy(model(xs), ys) + 0.5 * mcc_loss(model(xt), 2.5)
    assert total.item() == pytest.approx(want.item(), rel=1e-5)


def test_bad_options_are_user_errors():
    with pytest.raises(UserError, match="layers"):
        DAN(layers=("pixels",))
    with pytest.raises(UserError, match="weight"):
        DeepCORAL(weight=-1)
    with pytest.raises(UserError, match="temperature"):
        MCC(temperature=0)
