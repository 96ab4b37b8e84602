"""DANN: losses and gradients equal pytorch-adapt's DANNHook (the oracle) on one batch."""

from __future__ import annotations

import math

import pytest
import torch

from adapt.methods.dann import DANN, grad_reverse, grl_lambda
from adapt.train import lr_factor
from tests._methods_standin import FeaturesOf, TinyClassifier



def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(6, 1, 12, 12, generator=g)
    ys = torch.randint(0, 3, (6,), generator=g)
    xt = (torch.rand(5, 1, 12, 12, generator=g) * 0.5 + 0.4).clamp(0, 1)  # shifted target
    return xs, ys, xt


def _grads(modules):
    return {f"{k}.{n}": p.grad.detach().clone() for k, m in modules.items() for n, p in m.named_parameters()}


@pytest.mark.parametrize("progress", [0.3, 1.0])
def test_dann_matches_pytorch_adapt_dannhook(progress):
    from pytorch_adapt.hooks import DANNHook
    from pytorch_adapt.weighters import SumWeighter

    torch.manual_seed(0)
    model = TinyClassifier(num_classes=3)
    model.train()
    dann = DANN(model.feature_dim, domain_weight=0.7, width=16, depth=2)
    disc = dann.modules()["discriminator"]
    disc.train()
    modules = {"model": model, "disc": disc}
    xs, ys, xt = _batch()

    total, logs = dann.loss(model, xs, ys, xt, progress)
    for m in modules.values():
        m.zero_grad(set_to_none=True)
    total.backward()
    ours = _grads(modules)
    for m in modules.values():
        m.zero_grad(set_to_none=True)

    lam = grl_lambda(progress, 0.7)
    assert logs["lambda"] == pytest.approx(lam)
    # lr=0 SGD: DANNHook zeroes, backpropagates and "steps" without moving the weights,
    # so .grad holds its gradients afterwards.
    params = list(model.parameters()) + list(disc.parameters())
    opt = torch.optim.SGD(params, lr=0.0)
    hook = DANNHook(opts=[opt], weighter=SumWeighter(), gradient_reversal_weight=lam)
    inputs = {
        "G": FeaturesOf(model), "C": model.head, "D": disc,
        "src_imgs": xs, "src_labels": ys, "target_imgs": xt,
        "src_domain": torch.zeros(len(xs)), "target_domain": torch.ones(len(xt)),
    }
    _, losses = hook(inputs)
    theirs = _grads(modules)
    comp = losses["total_loss"]

    assert logs["class_loss"] == pytest.approx(comp["src_c_loss"], rel=1e-6, abs=1e-7)
    assert logs["src_domain_loss"] == pytest.approx(comp["src_domain_loss"], rel=1e-6, abs=1e-7)
    assert logs["target_domain_loss"] == pytest.approx(comp["target_domain_loss"], rel=1e-6, abs=1e-7)
    assert logs["domain_loss"] == pytest.approx(comp["src_domain_loss"] + comp["target_domain_loss"], rel=1e-6)
    assert total.item() == pytest.approx(comp["total"], rel=1e-6, abs=1e-7)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-7, msg=name)
    # every parameter got a gradient, and the reversal reaches the backbone
    assert all(g.abs().sum() > 0 for g in ours.values())


def test_gradient_reversal_scales_and_flips():
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.25) * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.25 * torch.arange(3.0).expand(4, 3))


def test_schedules():
    assert grl_lambda(0.0) == 0.0
    assert grl_lambda(1.0, 0.5) == pytest.approx(0.5 * (2 / (1 + math.exp(-10)) - 1))
    assert grl_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert lr_factor("dann", 0.0) == 1.0
    assert lr_factor("dann", 1.0) == pytest.approx(11 ** -0.75)
    assert lr_factor("dann", 2.0) == lr_factor("dann", 1.0)  # progress is clipped to [0, 1]
    lams = [grl_lambda(p / 10) for p in range(11)]
    assert lams == sorted(lams)


def test_disc_acc_and_diversity_guard():
    torch.manual_seed(1)
    model = TinyClassifier(num_classes=2)
    dann = DANN(model.feature_dim, diversity_weight=1.0, schedule=False)
    xs, ys, xt = _batch(1)
    ys = ys.clamp(max=1)
    # a discriminator that says "target" for everything is right on exactly the target half
    last = dann.discriminator.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(5.0)
    total, logs = dann.loss(model, xs, ys, xt, 0.0)
    assert logs["disc_acc"] == pytest.approx(len(xt) / (len(xs) + len(xt)))
    assert logs["lambda"] == 1.0  # schedule off
    assert 0.0 <= logs["target_collapse"] <= math.log(2) + 1e-6
    expected = logs["class_loss"] + logs["domain_loss"] + logs["target_collapse"]
    assert total.item() == pytest.approx(expected, rel=1e-5)
