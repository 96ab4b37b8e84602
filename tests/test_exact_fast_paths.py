"""Faster forms of work ``adapt-run`` repeats, each proven to give the same numbers bit for
bit (issue 20: nothing may change a result at a fixed seed). The speed is measured in
benchmarks/ (docs/benchmarks.md), never here."""

from __future__ import annotations

import copy

import numpy as np
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
    # with a gradient (training, Integrated Gradients): the kernel's gradients
    model.train(), old.train()
    xg = x.clone().requires_grad_()
    xo = x.clone().requires_grad_()
    model(xg).sum().backward()
    old(xo).sum().backward()
    assert torch.equal(xg.grad, xo.grad)
    for p, q in zip(model.parameters(), old.parameters()):
        assert torch.equal(p.grad, q.grad)



@pytest.mark.parametrize("shape,layout", [((4, 16, 64, 64), "nchw"), ((3, 5, 7, 9), "nchw"), ((1, 1, 2, 3), "nchw"),
                                          ((2, 8, 10, 12), "channels_last")])
def test_training_pooling_has_the_kernels_values_gradients_and_second_derivatives(shape, layout):
    # with a gradient the pooling is the strided maximum plus the first maximum's index:
    # ReLU zeros and rounding make ties in most windows, where the kernel's first-maximum
    # rule decides which element gets the gradient
    torch.manual_seed(1)
    x = torch.relu(torch.randn(*shape)).round(decimals=1)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ys, grads = [], []
    for pool in (MaxPool2x2(), torch.nn.MaxPool2d(2)):
        xi = x.clone().requires_grad_()
        y = pool(xi)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).requires_grad_()
        (gx,) = torch.autograd.grad(y, xi, g, create_graph=True)
        (gg,) = torch.autograd.grad((gx * torch.arange(gx.numel()).view_as(gx)).sum(), g)  # d/d(upstream grad)
        ys.append(y.detach())
        grads.append((gx.detach(), gg))
    assert ys[0].shape == ys[1].shape and torch.equal(ys[0], ys[1])
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert int((grads[0][0] != 0).sum()) <= ys[0].numel()  # one element per window gets the gradient


def test_training_pooling_over_a_nan_window_is_the_kernels():
    x = torch.rand(2, 3, 8, 8)
    x[0, 1, 2:4, 4:6] = torch.tensor([[float("nan"), 0.5], [float("nan"), 0.2]])
    grads = []
    for pool in (MaxPool2x2(), torch.nn.MaxPool2d(2)):
        xi = x.clone().requires_grad_()
        y = pool(xi)
        y.backward(torch.ones_like(y))
        grads.append((y.detach(), xi.grad))
    assert torch.equal(grads[0][0].nan_to_num(-1), grads[1][0].nan_to_num(-1))
    assert torch.equal(grads[0][1], grads[1][1])


def test_small_cnn_trains_to_the_same_weights_as_with_torch_pooling():
    torch.manual_seed(0)
    model = build_model("small_cnn", 3, 1)
    old = _torch_pooling(model)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (model, old)]
    g = torch.Generator().manual_seed(3)
    for _ in range(4):
        x, y = torch.rand(16, 1, 32, 32, generator=g), torch.randint(0, 3, (16,), generator=g)
        for m, opt in zip((model, old), opts):
            m.train()
            loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for (name, p), q in zip(model.state_dict().items(), old.state_dict().values()):
        assert torch.equal(p, q), name

def _domain(n: int, size: int, seed: int, labels: bool = True):
    from adapt.data.domain import DomainDataset

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g).numpy() if labels else torch.full((n,), -1).numpy()
    return DomainDataset(name="d", classes=["a", "b", "c"], labels=y, ids=[str(i) for i in range(n)], channels=1,
                         image_size=size, images=torch.rand(n, 1, size, size, generator=g))


@pytest.mark.parametrize("labels", [True, False])
def test_adabn_predictions_from_its_own_pass_equal_adabn_then_predict(labels):
    # the per-epoch score of an AdaBN-deployed run: the target statistics and the target
    # predictions from one pass, the same numbers as AdaBN followed by a prediction pass
    from adapt.evaluate import predict
    from adapt.methods.adabn import adabn_predict
    from domaingap.runs import adabn_on

    torch.manual_seed(0)
    model = build_model("small_cnn", 3, 1)
    model.train()
    model(torch.rand(32, 1, 32, 32))
    data = _domain(600, 32, 1, labels)  # three batches of 256, the last one short
    cpu = torch.device("cpu")
    old = adabn_on(copy.deepcopy(model), data, cpu)
    expected = predict(old, data, cpu, 256, return_features=True)
    new = copy.deepcopy(model)
    calls = []
    real = new.features
    new.features = lambda x: calls.append(len(x)) or real(x)  # a prediction pass would call this
    got = adabn_predict(new, data, cpu, 256, return_features=True)
    assert max(calls, default=0) <= 1  # no second pass over the data (one image: the layer-order probe)
    assert set(got) == set(expected)
    for k in expected:
        assert got[k].dtype == expected[k].dtype and np.array_equal(got[k], expected[k]), k
    for a, b in zip(batchnorm_layers(new), batchnorm_layers(old)):
        assert torch.equal(a.running_mean, b.running_mean) and torch.equal(a.running_var, b.running_var)
    assert new.training == old.training  # each module's mode restored, as predict does


def test_histogram_matching_restyled_once_equals_restyling_every_batch(tmp_path):
    # a histogram-matched run (the quickstart's dann+hist) restyles its training images once,
    # not every epoch: the same weights as the loop that restyled each batch
    import adapt.train as train_mod
    from adapt.methods.source_only import SourceOnly
    from adapt.methods.style import HistogramMatching
    from adapt.recipe import TrainConfig

    data = _domain(150, 16, 2)
    style = HistogramMatching()
    style.fit(_domain(100, 16, 3).images() ** 2)  # another intensity curve
    calls = []
    real_call = HistogramMatching.__call__

    def counted(self, xs, xt=None, generator=None):
        calls.append(len(xs))
        return real_call(self, xs, xt, generator)

    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.01, patience=None)
    weights = {}
    for once in (True, False):
        torch.manual_seed(0)
        model = build_model("small_cnn", 3, 1)
        mp = pytest.MonkeyPatch()
        mp.setattr(HistogramMatching, "__call__", counted)
        if not once:  # the old loop: every batch restyled in its step
            mp.setattr(train_mod, "_restyled_once", lambda *a, **k: None)
        try:
            calls.clear()
            train_mod.fit(model, SourceOnly(), data, cfg=cfg, out_dir=tmp_path / str(once), seed=0, style=style,
                          progress=False)
        finally:
            mp.undo()
        weights[once] = [t.clone() for t in model.state_dict().values()]
        if once:
            assert sum(calls) == len(data)  # each image restyled once, not once an epoch
        else:
            assert sum(calls) == 3 * len(data)
    assert all(torch.equal(a, b) for a, b in zip(weights[True], weights[False]))


def test_the_source_copy_is_taken_from_precise_bn_only_when_it_holds_the_estimate():
    # deployed_on_source is skipped only where precise BN left the exact estimate: trained
    # on the source with precise BN, every layer trainable; else it is estimated as before
    from types import SimpleNamespace

    from adapt.recipe import Recipe
    from domaingap.pipeline import _holds_source_statistics

    data = _domain(50, 16, 4)
    model = build_model("small_cnn", 3, 1)
    trained = {"history": [{"epoch": 1}]}
    source = SimpleNamespace(model=copy.deepcopy(model), fit=trained)
    recipe = Recipe()
    holds = lambda m, fit, r=recipe, cfg=recipe.train: _holds_source_statistics(m, source, fit, cfg, r, data)  # noqa: E731
    assert holds(model, trained)
    assert holds(model, None)  # nothing trained: the source model, trained with precise BN
    assert not holds(model, {})  # trained on something else than the source images
    assert not holds(model, trained, cfg=recipe.train.model_copy(update={"precise_bn": False}))
    progressive = recipe.model_copy(update={"strategy": recipe.strategy.model_copy(update={"kind": "progressive"})})
    assert not holds(model, trained, r=progressive)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        next(moved.parameters()).add_(1.0)
    assert not holds(moved, None)  # not the source model any more
    source.fit = {"loaded_from": "elsewhere.pt"}  # model.source_checkpoint: statistics of unknown origin
    assert not holds(model, None)
    for p in batchnorm_layers(model)[0].parameters():  # a frozen layer: precise BN skipped it
        p.requires_grad_(False)
    assert not holds(model, trained)
