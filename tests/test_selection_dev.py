"""DEV (You et al. 2019): the risk is the paper's control-variate formula; on a covariate
shift with a known density ratio the importance weights recover it and the DEV risk
estimates the target risk that the plain source risk misses; the score function logs DEV
beside IM/SND; selection.json keeps every selector's pick and says whether they agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapt.errors import UserError
from adapt.selection import dev_importance_weights, dev_risk, make_score_fn, selection_summary, selector_picks
from tests._methods_standin import TinyClassifier


def test_dev_risk_is_the_control_variate_formula():
    rng = np.random.default_rng(0)
    w, e = rng.gamma(2.0, 0.5, 50), rng.random(50)
    eta = -np.cov(w * e, w)[0, 1] / np.var(w, ddof=1)
    want = np.mean(w * e) + eta * np.mean(w) - eta
    assert dev_risk(w, e) == pytest.approx(want, rel=1e-10)
    assert dev_risk(np.ones(10), np.arange(10.0)) == pytest.approx(4.5)  # constant weights: plain mean


def test_dev_recovers_density_ratio_and_target_risk():
    # source x ~ N(0, 1), target x ~ N(1, 1): p_t/p_s = exp(x − 1/2), log-linear, so a
    # logistic-regression domain classifier is well specified
    rng = np.random.default_rng(1)
    xs, xt, xv = rng.normal(0, 1, (4000, 1)), rng.normal(1, 1, (4000, 1)), rng.normal(0, 1, (3000, 1))
    w = dev_importance_weights(xs, xt, xv, seed=0)
    true_w = np.exp(xv[:, 0] - 0.5)
    assert np.median(np.abs(w / true_w - 1)) < 0.1
    # an error that grows with x: the target (shifted right) suffers more than the source
    err = lambda x: (x[:, 0] > 1).astype(float)  # noqa: E731
    target_risk = err(rng.normal(1, 1, (200_000, 1))).mean()  # P(N(1,1) > 1) = 0.5
    source_risk = err(xv).mean()  # ≈ P(N(0,1) > 1) ≈ 0.16
    est = dev_risk(w, err(xv))
    assert abs(est - target_risk) < 0.05 < abs(source_risk - target_risk)


class _Data(torch.utils.data.Dataset):
    def __init__(self, n, shift, seed, labelled=True):
        g = torch.Generator().manual_seed(seed)
        self.x = (torch.rand(n, 1, 12, 12, generator=g) * 0.6 + shift).clamp(0, 1)
        self.y = torch.randint(0, 2, (n,), generator=g) if labelled else torch.full((n,), -1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def test_score_fn_logs_dev_and_refuses_it_without_source():
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=2).eval()
    target = _Data(40, 0.3, 1, labelled=False)
    kw = dict(target=target, class_names=["a", "b"], device=torch.device("cpu"), batch_size=16)
    score_fn = make_score_fn("dev", source_val=_Data(30, 0.0, 2), source_train=_Data(50, 0.0, 3), **kw)
    score, logs = score_fn(model)
    assert score == logs["dev"] and np.isfinite(score) and score <= 0  # −risk, cross-entropy ≥ 0
    assert {"im", "snd", "source_val_accuracy", "dev"} <= logs.keys()
    _, im_logs = make_score_fn("im", source_val=None, **kw)(model)
    assert "dev" not in im_logs and "source_val_accuracy" not in im_logs  # a source-free run
    with pytest.raises(UserError, match="dev"):
        make_score_fn("dev", source_val=None, **kw)
    with pytest.raises(UserError, match="source_val"):
        make_score_fn("source_val", source_val=None, **kw)


def test_selection_json_keeps_every_selectors_pick():
    history = [
        {"epoch": 1, "im": 0.50, "snd": 2.0, "dev": -0.9, "source_val_accuracy": 0.80, "score": 0.50},
        {"epoch": 2, "im": 0.70, "snd": 1.0, "dev": -0.7, "source_val_accuracy": 0.90, "score": 0.70},
        {"epoch": 3, "im": 0.60, "snd": 3.0, "dev": -0.8, "source_val_accuracy": 0.90, "score": 0.60},
    ]
    sel = selection_summary(history, "im", best_epoch=2)
    assert sel["selected_epoch"] == 2
    assert {k: v["epoch"] for k, v in sel["picks"].items()} == {
        "im": 2, "snd": 3, "dev": 2, "source_val": 2, "last": 3}  # source_val: first of the tie
    assert sel["picks"]["snd"]["score"] == 3.0 and sel["selectors_agree"] is False
    agree = selection_summary([{"epoch": 1, "im": 0.1}, {"epoch": 2, "im": 0.2}], "im", best_epoch=2)
    assert agree["selectors_agree"] is True and set(agree["picks"]) == {"im", "last"}
    assert selector_picks([{"epoch": 1, "im": float("nan")}]) == {"last": {"epoch": 1, "score": 1.0}}


def test_costly_selectors_run_only_when_they_select_or_the_recipe_compares(monkeypatch):
    # issue 20 item 2: DEV (a features pass over the source training images and a domain
    # classifier), MixVal and COT cost work of their own every epoch; by default only the
    # selecting one runs, method.compare_selectors: true logs them all (the studies)
    import adapt.selection as selection_mod

    calls = []
    real = selection_mod._features_subset
    monkeypatch.setattr(selection_mod, "_features_subset", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    model = TinyClassifier(num_classes=2).eval()
    kw = dict(target=_Data(40, 0.3, 1, labelled=False), source_val=_Data(30, 0.0, 2), source_train=_Data(50, 0.0, 3),
              class_names=["a", "b"], device=torch.device("cpu"), batch_size=16)
    score, logs = make_score_fn("im", **kw)(model)
    assert {"im", "snd", "source_val_accuracy", "atc", "doc"} <= logs.keys()  # from passes made anyway
    assert not {"dev", "mixval", "cot"} & logs.keys() and calls == []
    _, compared = make_score_fn("im", compare=True, **kw)(model)
    assert {"dev", "mixval", "cot"} <= compared.keys() and len(calls) == 1
    # the comparison only adds scores: the selecting one and the free ones are unchanged
    assert {k: compared[k] for k in logs} == logs
    assert score == logs["im"]
    from adapt.recipe import MethodConfig

    assert MethodConfig().compare_selectors is False
