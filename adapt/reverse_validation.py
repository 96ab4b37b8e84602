"""Reverse validation — does a model's labelling of the target carry the source's classes?

Two forms: :func:`reverse_validation_images`, as Zhong et al. define it (a new network
trained from the target *images*) — ``method.deploy: reverse_validation``, measured against
the default rule in docs/labelfree.md (a lower mean regret, a worse worst case, a result that
depends on the reverse network's seed) — and
:func:`reverse_validation_accuracy`, a cheap form on the model's own features that the study
rejected (the reverse classifier learns the model's linear head back; kept, with its tests,
as the record of why the network is needed).

(Zhong et al., "Cross Validation Framework to Choose amongst Models and Datasets for
Transfer Learning", ECML PKDD 2010; how Ganin et al., JMLR 2016, chose DANN's
hyper-parameters without target labels.)

The model f labels the unlabelled target, ŷ_t = argmax f(x_t). A *reverse* classifier
r is trained on the target alone, on the model's own features g(x_t) with ŷ_t as labels,
and scored on the labelled source images, which it never saw:

    RV(f) = mean_i 1[ r(g(x_s,i)) = y_s,i ]     (source images i; higher is better)

If f labels the target correctly and its features keep the classes apart in both domains,
r learns the classes and is right on the source. If f is confidently wrong, collapsed onto
a few classes, or right only on the images where any source-like model is right, r learns
a wrong or partial map and the source exposes it. RV compares each model with the source
labels only — not with the other candidates, so a model that is right where the others are
wrong is not penalised for disagreeing (agreement-based estimates are).

Here r is a multinomial logistic regression (L2, C = 1, features standardised on the
target), because the target sets are small (hundreds of images) and the features are the
penultimate layer that the model's own linear head reads. RV is a *selector* score, not an
estimate of target accuracy: it reads source accuracy of a classifier fitted on the target.
"""

from __future__ import annotations

import warnings

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from adapt.evaluate import predict
from adapt.methods.adabn import adabn

#: L2 strength of the reverse classifier (scikit-learn's default; not tuned)
REVERSE_C = 1.0


def reverse_validation_accuracy(target_features: np.ndarray, target_predictions: np.ndarray,
                                source_features: np.ndarray, source_labels: np.ndarray) -> float:
    """RV: accuracy on the source of a classifier trained on the target's pseudo-labels.

    Parameters
    ----------
    target_features: [n_t, d] the model's features of the unlabelled target images.
    target_predictions: [n_t] the model's predicted class of each target image.
    source_features: [n_s, d] the same model's features of labelled source images
        (as the model meets the source: per-domain-BatchNorm models with source statistics).
    source_labels: [n_s] their true classes.

    Returns a fraction in [0, 1]. A model that predicts one class on the whole target
    scores the share of that class among the source images.
    """
    tf = np.asarray(target_features, dtype=np.float64)
    tp = np.asarray(target_predictions).astype(np.int64)
    sf = np.asarray(source_features, dtype=np.float64)
    sl = np.asarray(source_labels).astype(np.int64)
    if tf.ndim != 2 or sf.ndim != 2 or tf.shape[1] != sf.shape[1]:
        raise ValueError(f"reverse validation: target features {tf.shape} and source features {sf.shape} "
                         "must be [n, d] with the same d")
    if len(tf) != len(tp) or len(sf) != len(sl) or len(tf) == 0 or len(sf) == 0:
        raise ValueError(f"reverse validation: {len(tf)} target features for {len(tp)} predictions, "
                         f"{len(sf)} source features for {len(sl)} labels")
    classes = np.unique(tp)
    if len(classes) == 1:
        return float(np.mean(sl == classes[0]))
    scaler = StandardScaler().fit(tf)
    with warnings.catch_warnings():
        # lbfgs may stop at max_iter on separable features; the fit is then still usable
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=REVERSE_C, max_iter=1000).fit(scaler.transform(tf), tp)
    return float(np.mean(clf.predict(scaler.transform(sf)) == sl))


#: the rule as written down before it was measured (benchmarks/labelfree_combos.py: rv_images)
REVERSE_EPOCHS, REVERSE_LR, REVERSE_BATCH = 20, 1e-3, 64
#: images larger than this (pixels a side) are shrunk for the reverse network (area
#: interpolation): every case the rule was measured on was ≤ 32 px, and at 64 px the fit
#: takes 4× longer (10 s against 2.5 s per model on two threads)
REVERSE_MAX_SIZE = 32


class _Shrunk(Dataset):
    """``data``'s (image, label) pairs with images above ``size`` px shrunk to ``size``."""

    def __init__(self, data: Dataset, size: int):
        self.data, self.size = data, size

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.data[i]
        return shrink(x, self.size), y


def shrink(x: Tensor, size: int = REVERSE_MAX_SIZE) -> Tensor:
    """[C, H, W] or [N, C, H, W] images with H or W above ``size`` shrunk to size × size (area)."""
    if max(x.shape[-2:]) <= size:
        return x
    batch = x if x.dim() == 4 else x.unsqueeze(0)
    out = F.interpolate(batch, size=(size, size), mode="area")
    return out if x.dim() == 4 else out[0]


def reverse_validation_images(build: Callable[[], nn.Module], target: Dataset, target_predictions: np.ndarray,
                              source_train: Dataset, source_eval: Sequence[Dataset], *, seed: int = 0,
                              device: torch.device | str = "cpu") -> float:
    """Reverse validation from the images (Zhong et al., 2010): how well a network that
    learns the target *as the candidate labels it* recognises the source's classes.

    A new network ``build()`` (seeded by ``seed`` before it is built, so every candidate of
    a comparison starts from the same weights) is trained on ``target``'s images with
    ``target_predictions`` as labels — Adam (lr 1e-3), batch 64, 20 epochs in a seeded
    order, no selection; its BatchNorm statistics are then re-estimated on ``source_train``
    (AdaBN: it meets the source as an adapted model would) and it is scored on the labelled
    images of ``source_train`` and every dataset of ``source_eval``:

        RV = mean over those source images of 1[r(x_s) = y_s]   (a fraction; higher is better)

    Only the labels differ between candidates, so RV ranks labellings of the same target:
    a right labelling teaches the network the classes, a wrong or collapsed one teaches it
    something the source contradicts. Images above :data:`REVERSE_MAX_SIZE` px are shrunk.
    A small, fixed fit rather than :mod:`adapt.train`'s loop: no recipe, no epoch selection,
    no checkpoint — the published rule with its constants, nothing to tune.

    target: a dataset of (image [C, H, W], label) — labels ignored; target_predictions [n]:
    the candidate's class for each, in order; source_train / source_eval: labelled datasets.
    """
    labels = torch.as_tensor(np.asarray(target_predictions), dtype=torch.long)
    if len(labels) != len(target):  # type: ignore[arg-type]
        raise ValueError(f"reverse validation: {len(labels)} predictions for {len(target)} target images")  # type: ignore[arg-type]
    images = torch.stack([shrink(target[i][0]) for i in range(len(labels))])
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        return _fit_and_score(build, images, labels, source_train, source_eval, seed, device)


def _fit_and_score(build: Callable[[], nn.Module], images: Tensor, labels: Tensor, source_train: Dataset,
                   source_eval: Sequence[Dataset], seed: int, device: torch.device | str) -> float:
    torch.manual_seed(seed)  # the same initial weights for every candidate
    net = build().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=REVERSE_LR)
    order = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(REVERSE_EPOCHS):
        perm = torch.randperm(len(images), generator=order)
        for i in range(0, len(images), REVERSE_BATCH):
            idx = perm[i:i + REVERSE_BATCH]
            if len(idx) < 2:  # BatchNorm needs two images in a batch
                continue
            loss = F.cross_entropy(net(images[idx].to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    adabn(net, DataLoader(_Shrunk(source_train, REVERSE_MAX_SIZE), batch_size=256, shuffle=False), device)
    right = []
    for data in (source_train, *source_eval):
        got = predict(net, _Shrunk(data, REVERSE_MAX_SIZE), device)
        right.append(got["probs"].argmax(1) == got["labels"])
    right_all = np.concatenate(right)
    if not len(right_all):
        raise ValueError("reverse validation: no labelled source images to score the reverse network on")
    return float(right_all.mean())
