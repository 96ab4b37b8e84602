"""MixVal (Hu et al. 2023): known answers on models whose behaviour on mixed inputs is
known by construction, and the selector wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adapt.mixval import mixval_score
from adapt.selection import make_score_fn


class _Points(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], -1


class _ArgmaxOfInput(nn.Module):
    """logits = the input itself: a mix λ e_i + (1 − λ) e_j with λ > ½ is predicted i."""

    def forward(self, x):
        return x.flatten(1)


class _Constant(nn.Module):
    def __init__(self, k=3):
        super().__init__()
        self.k = k

    def forward(self, x):
        out = torch.zeros(len(x), self.k)
        out[:, 0] = 1.0
        return out


class _MixFlips(nn.Module):
    """Right on pure one-hot inputs, and predicts the *other* class on any mixed input."""

    def forward(self, x):
        x = x.flatten(1)
        pure = x.max(1).values > 0.99
        second = x.clone()
        second[torch.arange(len(x)), x.argmax(1)] = -1
        return torch.where(pure[:, None], x, torch.nn.functional.one_hot(second.argmax(1), x.shape[1]).float())


def _onehots(n=30, k=3):
    return _Points(torch.eye(k)[torch.arange(n) % k])


def test_mixval_known_answers():
    data = _onehots()
    assert mixval_score(_ArgmaxOfInput(), data) == 1.0  # consistent on every mix
    assert mixval_score(_Constant(), data) == 0.5  # collapsed: IAE 1, no inter pair → ICE 0
    assert mixval_score(_MixFlips(), data) == pytest.approx(0.5)  # IAE 1 (same class mixed stays pure), ICE 0
    with pytest.raises(ValueError):
        mixval_score(_ArgmaxOfInput(), data, lam=0.5)


def test_mixval_selector_logs_mixval_atc_and_doc():
    data = _onehots()
    score_fn = make_score_fn("mixval", target=data, source_val=None, class_names=["a", "b", "c"],
                             device=torch.device("cpu"))
    score, logs = score_fn(_ArgmaxOfInput())
    assert score == logs["mixval"] == 1.0 and {"im", "snd"} <= logs.keys()
    _, im_logs = make_score_fn("im", target=data, source_val=None, class_names=["a", "b", "c"],
                               device=torch.device("cpu"))(_ArgmaxOfInput())
    assert "mixval" not in im_logs  # computed only when it selects: no extra cost by default
    assert np.isfinite(im_logs["im"])


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_estimator_selectors_log_the_estimate_and_need_source_validation():
    from adapt.errors import UserError
    from adapt.accuracy_estimation import estimate_atc, estimate_cot, estimate_doc

    k = torch.arange(30) % 3
    source_val = _Labelled(torch.eye(3)[k] * 3, k)  # the argmax model is right on all of them
    target = _onehots()
    kw = dict(target=target, class_names=["a", "b", "c"], device=torch.device("cpu"))
    score, logs = make_score_fn("cot", source_val=source_val, **kw)(_ArgmaxOfInput())
    probs_t = torch.softmax(torch.eye(3)[k], 1).numpy()
    probs_s = torch.softmax(torch.eye(3)[k] * 3, 1).numpy()
    assert logs["atc"] == pytest.approx(estimate_atc(probs_s, k.numpy(), probs_t))
    assert logs["doc"] == pytest.approx(estimate_doc(probs_s, k.numpy(), probs_t))
    assert score == logs["cot"] == pytest.approx(estimate_cot(probs_t, k.numpy()))
    assert "cot" not in make_score_fn("atc", source_val=source_val, **kw)(_ArgmaxOfInput())[1]
    for sel in ("atc", "doc", "cot"):
        with pytest.raises(UserError, match=sel):
            make_score_fn(sel, source_val=None, **kw)


class _MajorityOnMix(nn.Module):
    """Right on pure inputs; any mix goes to class 0 (the model's majority class)."""

    def forward(self, x):
        x = x.flatten(1)
        pure = x.max(1).values > 0.99
        zero = torch.zeros_like(x)
        zero[:, 0] = 1.0
        return torch.where(pure[:, None], x, zero)


def test_mixval_weighs_each_pseudo_class_equally():
    # 28 images of class 0, one each of classes 1 and 2: every mix dominated by a class-0
    # image keeps its label (pooled ICE would be 28/30), but the rare classes' mixes flip
    labels = torch.tensor([0] * 28 + [1, 2])
    data = _Points(torch.eye(3)[labels])
    score = mixval_score(_MajorityOnMix(), data)
    # ICE per class: class 0 → 1, classes 1 and 2 → 0 (mixed with anything they become 0): mean 1/3;
    # IAE: only class 0 has pairs, and a 0-0 mix is pure → 1
    assert score == pytest.approx(0.5 * (1 / 3 + 1.0))
