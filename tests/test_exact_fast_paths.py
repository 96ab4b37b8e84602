"""Faster forms of work ``adapt-run`` repeats, each proven to give the same numbers bit for
bit (issue 20: nothing may change a result at a fixed seed). The speed is measured in
benchmarks/ (docs/benchmarks.md), never here."""

from __future__ import annotations

import copy

import pytest
import torch

from adapt.methods.adabn import adabn, batchnorm_layers
from adapt.models import build_model
from adapt.models.small_cnn import MaxPool2x2


def _torch_pooling(model: torch.nn.Module) -> torch.nn.Module:
    old = copy.deepcopy(model)
    for parent in old.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2x2):
                setattr(parent, name, torch.nn.MaxPool2d(2))
    return old


@pytest.mark.parametrize("shape", [(3, 16, 64, 64), (2, 4, 7, 9), (1, 1, 2, 3)])
def test_inference_pooling_equals_torch_max_pool(shape):
    torch.manual_seed(0)
    x = torch.relu(torch.randn(*shape)).round(decimals=1)  # ReLU zeros and rounding: many ties
    x[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        ours, theirs = MaxPool2x2()(x), torch.nn.MaxPool2d(2)(x)
    assert ours.shape == theirs.shape and ours.stride() == theirs.stride()
    assert torch.equal(ours.nan_to_num(-7.0), theirs.nan_to_num(-7.0)) and bool(ours[0, 0, 0, 0].isnan())


def test_small_cnn_with_fast_pooling_is_the_same_function():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, 1)
    assert any(isinstance(m, MaxPool2x2) for m in model.modules())
    model.train()
    model(torch.rand(32, 1, 32, 32))
    old = _torch_pooling(model)
    x = torch.rand(40, 1, 32, 32)
    model.eval(), old.eval()
    with torch.no_grad():  # inference: the strided maximum
        assert torch.equal(model(x), old(x))
    for m in (model, old):  # AdaBN's statistics, estimated through the pooling
        adabn(m, x, torch.device("cpu"), batch_size=16)
    for a, b in zip(batchnorm_layers(model), batchnorm_layers(old)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    # with a gradient (training, Integrated Gradients) it is torch's pooling: same gradients
    model.train(), old.train()
    xg = x.clone().requires_grad_()
    xo = x.clone().requires_grad_()
    model(xg).sum().backward()
    old(xo).sum().backward()
    assert torch.equal(xg.grad, xo.grad)
    for p, q in zip(model.parameters(), old.parameters()):
        assert torch.equal(p.grad, q.grad)
