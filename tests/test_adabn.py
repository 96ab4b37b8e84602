"""AdaBN: BatchNorm running statistics re-estimated on the target domain."""

from __future__ import annotations

import pytest
import torch

from adapt.errors import UserError
from adapt.methods.adabn import adabn
from tests._methods_standin import TinyClassifier


def test_running_mean_is_target_mean_at_first_bn_and_modes_restored():
    torch.manual_seed(0)
    model = TinyClassifier(width=4, dropout=0.5).eval()
    bn = model.stem[1]
    momentum = bn.momentum
    xt = torch.rand(10, 1, 8, 8) * 0.5 + 0.5
    # unequal batches (4, 4, 2): the running mean is still the mean over all images
    batches = [(xt[:4], None), (xt[4:8], None), (xt[8:], None)]
    seen = adabn(model, batches, "cpu")
    assert seen == 10
    with torch.no_grad():
        pre_bn = model.stem[0]((xt - model.mean) / model.std)  # conv output feeding the first BN
    torch.testing.assert_close(bn.running_mean, pre_bn.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-5)
    # variance: count-weighted mean of the batches' unbiased variances
    var = sum(len(b) * pre_bn[i:i + len(b)].var(dim=(0, 2, 3)) for i, (b, _) in zip((0, 4, 8), batches)) / 10
    torch.testing.assert_close(bn.running_var, var, atol=1e-5, rtol=1e-4)
    assert bn.momentum == momentum
    assert not any(m.training for m in model.modules())


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
