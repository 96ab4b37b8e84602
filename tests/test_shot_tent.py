"""SHOT and TENT objectives: SHOT's pseudo-labels equal a NumPy transcription of the
authors' ``obtain_label`` (weighted centroids, one k-means step, cosine distance) and fix a
classifier mistake the feature clusters contradict; its loss is IM + β·CE with the head
frozen. TENT trains only the BatchNorm affine parameters and its loss is the mean
prediction entropy; a few steps lower it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from adapt.methods.entropy import entropy, information_maximization
from adapt.methods.shot import SHOT, PseudoLabelled, shot_pseudo_labels
from adapt.methods.tent import TENT, configure_tent
from tests._methods_standin import TinyClassifier


def _authors_obtain_label(feats: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The SHOT repository's obtain_label (distance='cosine', threshold 0, one round), in NumPy."""
    all_fea = np.concatenate([feats, np.ones((len(feats), 1))], axis=1)
    all_fea = all_fea / np.linalg.norm(all_fea, axis=1, keepdims=True)
    aff = probs
    initc = aff.T @ all_fea / (1e-8 + aff.sum(axis=0)[:, None])
    cls_count = np.eye(probs.shape[1])[probs.argmax(1)].sum(axis=0)
    labelset = np.where(cls_count > 0)[0]
    dd = cdist(all_fea, initc[labelset], "cosine")
    pred = labelset[dd.argmin(axis=1)]
    for _ in range(1):
        aff = np.eye(probs.shape[1])[pred]
        initc = aff.T @ all_fea / (1e-8 + aff.sum(axis=0)[:, None])
        dd = cdist(all_fea, initc[labelset], "cosine")
        pred = labelset[dd.argmin(axis=1)]
    return pred


def test_pseudo_labels_follow_the_feature_clusters():
    feats = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]])
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])  # sample 1 misclassified
    assert probs.argmax(1).tolist() == [0, 1, 1, 1]
    assert shot_pseudo_labels(feats, probs).tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pseudo_labels_equal_the_authors_code(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8)) * 3
    y = rng.integers(0, 4, 60)
    feats = centres[y] + rng.normal(size=(60, 8))
    logits = rng.normal(size=(60, 4)) + 2 * np.eye(4)[y] * (rng.random(60) > 0.3)[:, None]
    logits[:, 3] -= 10  # class 3 is never predicted: the authors drop its centroid
    probs = torch.tensor(logits).softmax(1).numpy()
    ours = shot_pseudo_labels(torch.tensor(feats), torch.tensor(probs)).numpy()
    np.testing.assert_array_equal(ours, _authors_obtain_label(feats, probs))
    assert 3 not in ours


class _Images(torch.utils.data.Dataset):
    def __init__(self, n=24, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 12, 12, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], -1  # unlabelled target


def test_shot_epoch_freezes_head_and_sets_pseudo_labels_and_loss_is_im_plus_ce():
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=3)
    shot = SHOT(_Images(), pseudo_label_weight=0.3)
    assert isinstance(shot.data, PseudoLabelled) and (shot.data.labels == -1).all()
    logs = shot.start_epoch(model, 0)
    assert not any(p.requires_grad for p in model.head.parameters())
    assert all(p.requires_grad for p in model.stem.parameters())
    assert (shot.data.labels >= 0).all() and 0 <= logs["pseudo_label_agreement"] <= 1
    x, y = zip(*(shot.data[i] for i in range(6)))
    xs, ys = torch.stack(x), torch.tensor(y)
    total, out = shot.loss(model, xs, ys, None, 0.0)
    with torch.no_grad():
        logits = model(xs)
        p = logits.softmax(1)
        want = entropy(p).mean() - entropy(p.mean(0, keepdim=True))[0] + 0.3 * F.cross_entropy(logits, ys)
    assert total.item() == pytest.approx(want.item(), rel=1e-5)
    total.backward()
    assert model.head.weight.grad is None and model.stem[0].weight.grad.abs().sum() > 0


def test_shot_refuses_missing_pseudo_labels():
    model = TinyClassifier(num_classes=3)
    shot = SHOT(_Images())
    with pytest.raises(ValueError, match="pseudo-labels"):
        shot.loss(model, torch.rand(4, 1, 12, 12), torch.full((4,), -1), None, 0.0)


def test_information_maximization_extremes():
    confident_diverse = torch.eye(4) * 100
    ent, div = information_maximization(confident_diverse)
    assert ent.item() == pytest.approx(0.0, abs=1e-6) and div.item() == pytest.approx(np.log(4), rel=1e-6)
    collapsed = torch.tensor([[100.0, 0, 0, 0]]).repeat(4, 1)
    assert information_maximization(collapsed)[1].item() == pytest.approx(0.0, abs=1e-6)


def test_tent_trains_only_batchnorm_affine_and_lowers_entropy():
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tent = TENT()
    tent.start_epoch(model, 0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"stem.1.weight", "stem.1.bias", "stage.1.weight", "stage.1.bias"}
    model.train()
    xt = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.4
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss, logs = tent.loss(model, xt, torch.zeros(16, dtype=torch.long), None, 0.0)
        assert logs["entropy"] == pytest.approx(entropy(model(xt).softmax(1)).mean().item(), rel=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n in trainable), n


def test_tent_needs_batchnorm():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    assert configure_tent(net) == 0
    with pytest.raises(Exception, match="BatchNorm"):
        TENT().start_epoch(net, 0)


def test_shot_first_pseudo_labels_use_target_batchnorm_statistics():
    from adapt.methods.adabn import adabn

    torch.manual_seed(0)
    model = TinyClassifier(num_classes=3)
    target = _Images(seed=3)
    expected = TinyClassifier(num_classes=3)
    expected.load_state_dict(model.state_dict())
    adabn(expected, torch.utils.data.DataLoader(target, batch_size=256), "cpu")
    SHOT(target).start_epoch(model, 0)
    bn, bn_ref = model.stem[1], expected.stem[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var)
    kept = TinyClassifier(num_classes=3)
    before = kept.stem[1].running_mean.clone()
    SHOT(target, target_statistics=False).start_epoch(kept, 0)
    torch.testing.assert_close(kept.stem[1].running_mean, before)
