"""CDAN / CDAN+E: the conditioning map equals pytorch-adapt's RandomizedDotProduct (and the
outer product by hand); the domain losses and the discriminator's gradients equal
pytorch-adapt's CDANHook / CDAN+E hook (D phase) on one batch; the feature extractor's and
classifier's gradients are CE − λ · domain loss (the gradient-reversal formula)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapt.methods.cdan import CDAN, MultilinearMap
from adapt.methods.dann import grl_lambda
from tests._methods_standin import FeaturesOf, TinyClassifier



class _Combiner(nn.Module):
    """pytorch-adapt's "feature_combiner" slot, filled with our map (exact case)."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, f, g):
        return self.m(f, g)


class _Capture(torch.optim.SGD):
    """lr-0 SGD that records the gradients it is asked to apply."""

    def __init__(self, named):
        self.named = dict(named)
        super().__init__(list(self.named.values()), lr=0.0)
        self.seen = {}

    def step(self, closure=None):
        self.seen = {n: p.grad.detach().clone() for n, p in self.named.items() if p.grad is not None}


def _batch(seed=0, k=3, nt=5):
    g = torch.Generator().manual_seed(seed)
    xs = torch.rand(6, 1, 12, 12, generator=g)
    ys = torch.randint(0, k, (6,), generator=g)
    xt = (torch.rand(nt, 1, 12, 12, generator=g) * 0.5 + 0.4).clamp(0, 1)
    return xs, ys, xt


def test_exact_map_is_the_outer_product():
    f, g = torch.randn(4, 5), torch.rand(4, 3).softmax(1)
    m = MultilinearMap(5, 3, max_dim=15)
    assert not m.randomized and m.out_dim == 15
    h = m(f, g)
    for b in range(4):
        for k in range(3):
            torch.testing.assert_close(h[b, k * 5:(k + 1) * 5], g[b, k] * f[b])


def test_randomized_map_equals_pytorch_adapt():
    from pytorch_adapt.layers import RandomizedDotProduct

    f, g = torch.randn(7, 16), torch.rand(7, 4).softmax(1)
    m = MultilinearMap(16, 4, randomized_dim=32, max_dim=63, seed=3)
    assert m.randomized and m.out_dim == 32
    ref = RandomizedDotProduct([16, 4], out_dim=32)
    ref.rand_mat0.copy_(m.r_f)
    ref.rand_mat1.copy_(m.r_g)
    torch.testing.assert_close(m(f, g), ref(f, g), rtol=1e-5, atol=1e-6)
    # the random matrices are seeded: the same seed, the same map
    torch.testing.assert_close(MultilinearMap(16, 4, randomized_dim=32, max_dim=63, seed=3).r_f, m.r_f)


def _reference_hook(entropy, d_opt, g_opt):
    from pytorch_adapt.hooks import CDANHook
    from pytorch_adapt.hooks.reducers import EntropyReducer, MeanReducer
    from pytorch_adapt.layers import EntropyWeights
    from pytorch_adapt.layers.normalizers import SumNormalizer
    from pytorch_adapt.weighters import SumWeighter

    kw = {}
    if entropy:
        def reducer(keys):
            # w_i · B / Σ w then a mean = Σ w_i ℓ_i / Σ w_i: the authors' per-domain normalisation
            return EntropyReducer(apply_to=keys, default_reducer=MeanReducer(), detach_weights=True,
                                  entropy_weights_fn=EntropyWeights(
                                      normalizer=SumNormalizer(detach=True, scale_by_batch_size=True)))
        kw = {"d_reducer": reducer(["d_src_domain_loss", "d_target_domain_loss"]),
              "g_reducer": reducer(["g_src_domain_loss", "g_target_domain_loss"])}
    return CDANHook(d_opts=[d_opt], g_opts=[g_opt], d_weighter=SumWeighter(), g_weighter=SumWeighter(), **kw)


@pytest.mark.parametrize("entropy", [False, True])
@pytest.mark.parametrize("randomized", [False, True])
def test_cdan_matches_pytorch_adapt_cdanhook(entropy, randomized):
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=3)
    model.train()
    cdan = CDAN(model.feature_dim, 3, domain_weight=0.8, entropy=entropy, width=16, depth=2,
                randomized_dim=24, max_dim=16 if randomized else 4096)
    assert cdan.map.randomized == randomized
    disc = cdan.discriminator
    xs, ys, xt = _batch(nt=6)  # the hook's G phase swaps the domain labels: equal batch sizes
    progress = 0.4
    total, logs = cdan.loss(model, xs, ys, xt, progress)
    model.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    total.backward()
    ours_d = {n: p.grad.clone() for n, p in disc.named_parameters()}
    ours_g = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)

    d_opt = _Capture(disc.named_parameters())
    g_opt = _Capture(model.named_parameters())
    hook = _reference_hook(entropy, d_opt, g_opt)
    inputs = {"G": FeaturesOf(model), "C": model.head, "D": disc, "feature_combiner": _Combiner(cdan.map),
              "src_imgs": xs, "src_labels": ys, "target_imgs": xt,
              "src_domain": torch.zeros(len(xs)), "target_domain": torch.ones(len(xt))}
    _, losses = hook(inputs)
    d = losses["d_loss"]
    assert logs["src_domain_loss"] == pytest.approx(d["d_src_domain_loss"], rel=1e-5, abs=1e-7)
    assert logs["target_domain_loss"] == pytest.approx(d["d_target_domain_loss"], rel=1e-5, abs=1e-7)
    assert logs["class_loss"] == pytest.approx(losses["g_loss"]["src_c_loss"], rel=1e-6)
    assert logs["lambda"] == pytest.approx(grl_lambda(progress, 0.8))
    # the discriminator descends the same domain loss as pytorch-adapt's D phase
    assert ours_d.keys() == d_opt.seen.keys()
    for n in ours_d:
        torch.testing.assert_close(ours_d[n], d_opt.seen[n], rtol=1e-5, atol=1e-7, msg=n)

    # G and C: ∇ [CE − λ (domain loss)], the prediction g entering the map detached
    fs, ft = model.features(xs), model.features(xt)
    ls, lt = model.head(fs), model.head(ft)

    def dom(f, logits, label):
        g = logits.detach().softmax(1)
        bce = F.binary_cross_entropy_with_logits(disc(cdan.map(f, g)), torch.full((len(f),), label),
                                                 reduction="none")
        if not entropy:
            return bce.mean()
        w = 1 + torch.exp((g * g.log()).sum(1))
        return (w * bce).sum() / w.sum()

    ref = F.cross_entropy(ls, ys) - grl_lambda(progress, 0.8) * (dom(fs, ls, 0.0) + dom(ft, lt, 1.0))
    want = torch.autograd.grad(ref, list(model.parameters()))
    for (n, _), w in zip(model.named_parameters(), want):
        torch.testing.assert_close(ours_g[n], w, rtol=1e-5, atol=1e-7, msg=n)
    assert all(g.abs().sum() > 0 for g in ours_g.values())


def test_entropy_conditioning_changes_the_loss_only_when_confidence_varies():
    torch.manual_seed(1)
    model = TinyClassifier(num_classes=3)
    xs, ys, xt = _batch(1)
    plain = CDAN(model.feature_dim, 3, width=8, schedule=False)
    ent = CDAN(model.feature_dim, 3, width=8, entropy=True, schedule=False)
    ent.discriminator.load_state_dict(plain.discriminator.state_dict())
    _, a = plain.loss(model, xs, ys, xt, 0.5)
    _, b = ent.loss(model, xs, ys, xt, 0.5)
    assert a["class_loss"] == b["class_loss"]
    assert a["src_domain_loss"] != pytest.approx(b["src_domain_loss"], rel=1e-9)
    assert ent.name == "cdan+e" and plain.name == "cdan"
