"""EWC: the Fisher (both engines: vmap and layer hooks) equals a per-sample loop; the
penalty and its gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapt.errors import UserError
from adapt.methods.ewc import (
    EWC,
    L2SP,
    anchor_params,
    fisher_diagonal,
    load_fisher,
    per_sample_squared_grads,
    resolve_engine,
    sample_labels,
    save_fisher,
)
from adapt.methods.layer_sq_grads import unsupported_reason
from tests._methods_standin import TinyClassifier


def _model_and_data(seed=0, n=7):
    torch.manual_seed(seed)
    model = TinyClassifier(num_classes=3, width=3, dropout=0.3)
    with torch.no_grad():  # non-trivial running statistics: eval mode must use them
        model.stem[1].running_mean.uniform_(-0.5, 0.5)
        model.stem[1].running_var.uniform_(0.5, 2.0)
    model.stem[0].weight.requires_grad_(False)  # frozen parameters get no Fisher
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return model.train(), x, y


def _loop_fisher(model, x, labels_per_class):
    """Reference: batch-size-1 autograd, Σ over (label, weight) pairs, mean over images."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(len(x)):
        for y, w in labels_per_class(i):
            logp = torch.log_softmax(model(x[i : i + 1]), dim=1)[0, y]
            grads = torch.autograd.grad(logp, list(params.values()), allow_unused=True)
            for n, gr in zip(params, grads):
                if gr is not None:  # None: a parameter off the path to the output
                    total[n] += w * gr.square()
    model.train()
    return {n: t / len(x) for n, t in total.items()}


def _check_equal(fisher, ref):
    assert fisher.keys() == ref.keys()
    assert "stem.0.weight" not in fisher
    for n in ref:
        torch.testing.assert_close(fisher[n], ref[n], rtol=1e-4, atol=1e-9, msg=n)
    assert sum(v.sum() for v in fisher.values()) > 0


ENGINES = ["vmap", "hooks"]


@pytest.mark.parametrize("engine", ENGINES)
def test_fisher_equals_per_sample_loop_true_mode(engine):
    model, x, _ = _model_and_data()
    fisher = fisher_diagonal(model, x, mode="true", batch_size=4, generator=torch.Generator().manual_seed(5),
                             engine=engine)
    assert model.training  # mode restored
    # the documented draw: per batch, in order, sample_labels(model(x_batch), generator)
    g = torch.Generator().manual_seed(5)
    model.eval()
    with torch.no_grad():
        y = torch.cat([sample_labels(model(x[i : i + 4]), g) for i in range(0, len(x), 4)])
    ref = _loop_fisher(model, x, lambda i: [(y[i], 1.0)])
    _check_equal(fisher, ref)


@pytest.mark.parametrize("engine", ENGINES)
def test_fisher_equals_per_sample_loop_empirical_and_exact(engine):
    model, x, y = _model_and_data(1)
    _check_equal(fisher_diagonal(model, x, y, mode="empirical", batch_size=3, engine=engine),
                 _loop_fisher(model, x, lambda i: [(y[i], 1.0)]))
    model.eval()
    with torch.no_grad():
        p = model(x).softmax(1)
    model.train()
    _check_equal(fisher_diagonal(model, x, mode="exact", batch_size=5, engine=engine),
                 _loop_fisher(model, x, lambda i: [(k, p[i, k]) for k in range(3)]))


def test_fisher_is_not_the_square_of_the_batch_mean_gradient():
    model, x, y = _model_and_data(2, n=16)
    fisher = fisher_diagonal(model, x, y, mode="empirical", batch_size=16)
    model.eval()
    logp = torch.log_softmax(model(x), 1)[torch.arange(16), y].mean()
    wrong = torch.autograd.grad(logp, model.head.weight)[0].square()
    # E[g²] ≥ E[g]² elementwise, strictly in aggregate (Jensen)
    assert (fisher["head.weight"] >= wrong - 1e-9).all()
    assert fisher["head.weight"].sum() > 1.5 * wrong.sum()


def test_fisher_subset_and_errors():
    model, x, y = _model_and_data()
    sub = fisher_diagonal(model, x, y, mode="empirical", samples=3, generator=torch.Generator().manual_seed(0))
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:3]
    _check_equal(sub, _loop_fisher(model, x[idx], lambda i: [(y[idx][i], 1.0)]))
    with pytest.raises(UserError):
        fisher_diagonal(model, x, mode="empirical")
    with pytest.raises(UserError):
        fisher_diagonal(model, x, mode="bogus")


def _perturbed(model, scale=0.1, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def test_ewc_penalty_value_and_gradient():
    model, x, y = _model_and_data()
    fisher = fisher_diagonal(model, x, y, mode="empirical")
    lam = 3.0
    penalty = EWC.from_model(model, fisher, lam)
    assert penalty(model).item() == 0.0
    anchor = anchor_params(model)
    _perturbed(model)
    value = penalty(model)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    expected = 0.5 * lam * sum((fisher[n] * (params[n] - anchor[n]) ** 2).sum() for n in params)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    model.zero_grad()
    value.backward()
    for n, p in params.items():
        torch.testing.assert_close(p.grad, lam * fisher[n] * (p.detach() - anchor[n]), rtol=1e-5, atol=1e-10)
    assert model.stem[0].weight.grad is None  # frozen: not penalised


def test_l2sp_is_ewc_with_unit_fisher_and_skips_new_params():
    model, _, _ = _model_and_data()
    anchor = anchor_params(model)
    del anchor["head.weight"], anchor["head.bias"]  # a new head is not anchored
    l2sp = L2SP(anchor, lam=0.5)
    _perturbed(model)
    ones = {n: torch.ones_like(a) for n, a in anchor.items()}
    assert l2sp(model).item() == pytest.approx(EWC(ones, anchor, 0.5)(model).item(), rel=1e-6)
    manual = 0.25 * sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in anchor)
    assert l2sp(model).item() == pytest.approx(manual.item(), rel=1e-6)
    model.zero_grad()
    l2sp(model).backward()
    assert model.head.weight.grad is None


def test_anchor_shape_mismatch_is_a_user_error():
    model, _, _ = _model_and_data()
    anchor = anchor_params(model)
    anchor["head.weight"] = torch.zeros(5, 6)
    with pytest.raises(UserError, match="head.weight"):
        L2SP(anchor, 1.0)(model)


def test_save_load_roundtrip(tmp_path):
    model, x, y = _model_and_data()
    fisher = fisher_diagonal(model, x, y, mode="empirical")
    path = tmp_path / "fisher.pt"
    save_fisher(path, fisher, mode="empirical", samples=len(x))
    loaded, meta = load_fisher(path)
    assert meta == {"mode": "empirical", "samples": len(x)}
    for n in fisher:
        torch.testing.assert_close(loaded[n], fisher[n])
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="bad.pt"):
        load_fisher(tmp_path / "bad.pt")
    with pytest.raises(UserError):
        load_fisher(tmp_path / "missing.pt")


class _EveryLayer(nn.Module):
    """One of each layer the hooks engine handles, in the shapes that pick each of its
    routes: convolutions with many output positions (per-sample gradients materialised)
    and with ≤ 4 (Khatri–Rao GEMM), grouped/dilated/strided, 1-D and 3-D, linear layers
    on vectors and on token sequences, BatchNorm (eval), GroupNorm, LayerNorm, an
    in-place ReLU right after a hooked layer, and a layer that is never used."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3)
        self.gn = nn.GroupNorm(3, 6)
        self.small = nn.Conv2d(6, 4, 3, stride=2)  # 4x4 → 1x1: one position
        self.tiny = nn.Conv2d(6, 3, 2, stride=2)  # 4x4 → 2x2: four positions
        self.c1d = nn.Conv1d(6, 4, 3, padding=1, groups=2)
        self.c3d = nn.Conv3d(1, 2, (2, 3, 3), stride=(1, 2, 1), padding=(1, 1, 0))
        self.tok = nn.Linear(4, 8)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8 + 4 + 12 + 40, 5)
        self.unused = nn.Linear(3, 3)

    def forward(self, x):
        h = torch.relu_(self.bn(self.c1(x)))  # [B, 6, 4, 4]
        h = self.gn(self.c2(h))
        t = self.c1d(h.flatten(2))  # [B, 4, 16]
        v = self.c3d(t.reshape(-1, 1, 4, 4, 4))  # [B, 2, 5, 2, 4]
        z = self.ln(self.tok(t.transpose(1, 2))).mean(1)  # [B, 8]
        parts = [z, self.small(h).flatten(1), self.tiny(h).flatten(1), v.flatten(1)]
        return self.fc(torch.relu(torch.cat(parts, 1)))


def test_hooks_engine_covers_every_supported_layer():
    torch.manual_seed(3)
    model = _EveryLayer()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial norm affine parameters
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(9, 2, 8, 8, generator=g), torch.randint(0, 5, (9,), generator=g)
    model.eval()
    assert resolve_engine(model) == "hooks"
    ref = _loop_fisher(model, x, lambda i: [(y[i], 1.0)])
    fisher = fisher_diagonal(model, x, y, mode="empirical", batch_size=4, engine="hooks")
    assert fisher.keys() == ref.keys()
    for n in ref:
        torch.testing.assert_close(fisher[n], ref[n], rtol=1e-4, atol=1e-9, msg=n)
    assert float(fisher["unused.weight"].abs().sum()) == 0.0


def test_engine_choice_and_fallback():
    class Scaled(nn.Module):  # a layer with its own parameter the hooks engine cannot read
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.5))

        def forward(self, x):
            return x * self.scale

    model, x, y = _model_and_data(2)
    model.stem.append(Scaled())
    model.eval()
    assert resolve_engine(model, "auto") == "vmap"
    with pytest.raises(UserError, match=r"stem\.3: Scaled has its own trainable parameters"):
        resolve_engine(model, "hooks")
    with pytest.raises(UserError, match="engine='bogus'"):
        fisher_diagonal(model, x, y, mode="empirical", engine="bogus")
    _check_equal(fisher_diagonal(model, x, y, mode="empirical"), _loop_fisher(model, x, lambda i: [(y[i], 1.0)]))
    model.train()  # BatchNorm on batch statistics: samples interact, hooks refuse
    assert "BatchNorm on batch statistics" in (unsupported_reason(model) or "")

    shared = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU())
    shared.append(shared[1])  # the same layer twice: its per-sample sums need vmap
    shared.append(nn.Linear(4, 2))
    xs, ys = torch.rand(5, 1, 2, 2), torch.randint(0, 2, (5,))
    fast = per_sample_squared_grads(shared.eval(), xs, ys, engine="hooks")
    slow = per_sample_squared_grads(shared, xs, ys, engine="vmap")
    for n in slow:
        torch.testing.assert_close(fast[n], slow[n], rtol=1e-4, atol=1e-9, msg=n)
