"""The domain gap between two sets of images or feature arrays, from Python.

:func:`domain_gap` is ``diagnose gap`` as a function: it turns each side into features
(feature arrays are taken as they are; images go through :func:`extract_features`)
and calls :func:`diagnostics.gap.measure_gap`, which runs the MMD permutation test, the
classifier two-sample test, the Fréchet distance with its bootstrap interval, the
domain-classifier AUC / proxy A-distance and the Wasserstein-2 distance. No statistic
is computed here. The result is a :class:`~diagnostics.gap.GapResult`: typed fields,
``to_dict()`` (the audit's ``gap`` section) and ``details()`` (every figure).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from adapt.data.inputs import as_domain, is_image_batch
from adapt.errors import UserError
from diagnostics.features import FeatureSet, extract_features
from diagnostics.gap import GapResult, measure_gap
from diagnostics.moments import Moments

__all__ = ["domain_gap", "as_features"]


def _feature_array(data: Any, argument: str) -> FeatureSet | None:
    """A ``[N, D]`` array or tensor as a FeatureSet (None when ``data`` is not one)."""
    if isinstance(data, FeatureSet):
        return data
    if not isinstance(data, (np.ndarray, torch.Tensor)) or data.ndim != 2:
        return None
    x = (data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)).astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{argument}: features must be finite")
    return FeatureSet(features=x, labels=np.full(len(x), -1, np.int64), probs=None,
                      moments=Moments.from_features(torch.from_numpy(x)), extractor="features given by the caller",
                      kind="array", name=argument)


def as_features(
    data: Any,
    *,
    argument: str,
    features: str = "pixels",
    model: nn.Module | None = None,
    image_size: int = 64,
    channels: int = 1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
) -> FeatureSet:
    """``data`` as a :class:`FeatureSet`: a ``[N, D]`` array/tensor or FeatureSet as it is;
    images (a ``[N, C, H, W]`` tensor, a DomainDataset, a folder, a CSV, a phantom spec)
    through ``extract_features(data, model, features)``.

    Examples
    --------
    >>> import numpy as np
    >>> from diagnostics.input_gap import as_features
    >>> as_features(np.zeros((4, 3)), argument="source").dim
    3
    """
    fs = _feature_array(data, argument)
    if fs is not None:
        return fs
    if not is_image_batch(data) and isinstance(data, (np.ndarray, torch.Tensor)):
        raise UserError(f"{argument}: expected features [N, D] or images [N, C, H, W], got shape {tuple(data.shape)}")
    if features == "model" and model is None:
        raise UserError("features: 'model' needs model=<a Classifier>; without one use 'pixels' or a "
                        "torchvision architecture name")
    ds = as_domain(data, argument=argument, image_size=image_size, channels=channels, seed=seed)
    return extract_features(ds, model, features, batch_size=batch_size, device=device, progress=False, shard=False)


def domain_gap(
    source: Any,
    target: Any,
    *,
    features: str | None = None,
    model: nn.Module | None = None,
    permutations: int = 200,
    bootstrap: int = 100,
    max_points: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
    image_size: int = 64,
    channels: int = 1,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
) -> GapResult:
    """Measure the gap between ``source`` and ``target``: two tests, two distances.

    Parameters
    ----------
    source, target : array, tensor, DomainDataset, str or Path
        Features ``[N, D]`` (used as they are), images ``[N, C, H, W]`` in [0, 1], a
        DomainDataset, an ImageFolder folder, a CSV manifest or ``"phantom-cxr:A[:N]"``.
        Each side needs at least 5 rows; both the same feature width.
    features : str, optional
        How images become features: ``"model"`` (the penultimate layer of ``model``),
        ``"pixels"`` (images averaged down to 16×16) or a torchvision architecture in the
        torch cache (``"inception_v3"``). Default: ``"model"`` with a model, else ``"pixels"``.
    model : Classifier, optional
        A trained classifier (:func:`adapt.models.build_model`, a checkpoint, or
        :func:`adapt.models.wrap.wrap_model` around your own module).
    permutations : int
        Permutations of the MMD and classifier tests (at least 19 to reach p < 0.05).
    bootstrap : int
        Bootstrap resamples of the Fréchet interval (0 skips it).
    max_points : int
        Rows per side used by MMD, the classifiers and transport (seeded subsample).
    alpha : float
        Level at which the tests are called decidable.
    seed : int
        Seeds every random choice (subsamples, permutations, bootstrap, folds).
    image_size, channels : int
        Size and channels of images read from files or the phantom.
    device, batch_size
        For feature extraction.

    Returns
    -------
    GapResult
        ``.mmd.p_value``, ``.classifier_test.p_value`` / ``.auc``,
        ``.frechet_distance`` with ``.frechet_interval`` (low, high),
        ``.domain.proxy_a_distance``, ``.transport.distance``; ``to_dict()``.

    Examples
    --------
    Two samples of the same distribution and a shifted one:

    >>> import numpy as np
    >>> from diagnostics import domain_gap
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    >>> same = domain_gap(a, b, permutations=99, bootstrap=20, seed=0)
    >>> shifted = domain_gap(a, b + 1.5, permutations=99, bootstrap=20, seed=0)
    >>> bool(same.mmd.p_value > 0.05), bool(shifted.mmd.p_value < 0.05)
    (True, True)
    >>> sorted(shifted.to_dict())
    ['classifier_test', 'domain_classifier', 'frechet', 'mmd', 'transport']

    Images work too: here two phantom scanner sites, as pixel features.

    >>> gap = domain_gap("phantom-cxr:A:40", "phantom-cxr:B:40", image_size=32, permutations=99,
    ...                  bootstrap=0, seed=0)
    >>> bool(gap.mmd.p_value < 0.05)
    True
    """
    if not isinstance(permutations, int) or permutations < 1:
        raise UserError(f"permutations: must be a positive integer, got {permutations!r}")
    if not isinstance(bootstrap, int) or bootstrap < 0:
        raise UserError(f"bootstrap: must be a non-negative integer, got {bootstrap!r}")
    if not 0 < alpha < 1:
        raise UserError(f"alpha: must lie in (0, 1), got {alpha}")
    kind = features or ("model" if model is not None else "pixels")
    common = dict(features=kind, model=model, image_size=image_size, channels=channels, seed=seed,
                  device=device, batch_size=batch_size)
    fs = as_features(source, argument="source", **common)
    ft = as_features(target, argument="target", **common)
    if fs.kind == "array" or ft.kind == "array":  # arrays carry no extractor sentence to compare
        if fs.kind != ft.kind:
            raise UserError("source, target: one is a feature array and the other images; give both the same way")
    return measure_gap(fs, ft, permutations=permutations, seed=seed, max_points=max_points,
                       bootstrap=bootstrap, alpha=alpha)
