"""A drift detector object: built once from reference data, called on every new batch.

Like alibi-detect's ``MMDDrift(x_ref).predict(x)``: ``DriftDetector(x_ref, model=m)``
summarises the reference (:func:`diagnostics.drift.build_reference`) and
``detector.predict(x)`` runs the four Holm-corrected tests of
:func:`diagnostics.drift.compare_to_reference` — MMD and classifier tests on the
features, a χ² test on the predicted classes, a Mann–Whitney test of a confidence drop —
plus the Fréchet distance and the collapse check. The statistics live in
:mod:`diagnostics.drift`; this module only turns the caller's data into features.

Two of the four tests need the classifier's outputs, so the detector needs either a
``model`` (a :class:`~adapt.models.Classifier`; images in, features and probabilities
out) or, for data already embedded, the probabilities next to the features
(``probs_ref=`` here, ``probs=`` in :meth:`DriftDetector.predict`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from adapt.errors import UserError
from diagnostics.input_gap import as_features
from diagnostics.drift import (DriftReference, DriftResult, build_reference, compare_to_reference, load_reference,
                               save_reference)
from diagnostics.features import FeatureSet

__all__ = ["DriftDetector"]


def _with_probs(fs: FeatureSet, probs: Any, argument: str, what: str) -> FeatureSet:
    if fs.probs is not None:
        return fs
    if probs is None:
        raise UserError(f"{argument}: the drift tests need the classifier's outputs; pass model=<Classifier> "
                        f"to the detector, or {what}=<[N, K] probabilities> with features")
    p = (probs.detach().cpu().numpy() if isinstance(probs, torch.Tensor) else np.asarray(probs)).astype(np.float32)
    if p.ndim != 2 or len(p) != len(fs):
        raise UserError(f"{what}: expected [{len(fs)}, K] probabilities, got shape {tuple(p.shape)}")
    if not np.isfinite(p).all() or (p < 0).any() or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise UserError(f"{what}: rows must be probabilities (non-negative, summing to 1)")
    fs.probs = p
    return fs


class DriftDetector:
    """Has a new batch moved away from the reference?

    Parameters
    ----------
    x_ref : array, tensor, DomainDataset, str or Path
        Reference data, e.g. held-out target images the deployed model was checked on:
        images (``[N, C, H, W]`` in [0, 1], a DomainDataset, a folder, a CSV,
        ``"phantom-cxr:B:N"``) with ``model``, or features ``[N, D]`` with ``probs_ref``.
        At least 20 rows.
    model : Classifier, optional
        The deployed classifier; its penultimate features and softmax are compared.
    probs_ref : array [N, K], optional
        The classifier's probabilities for feature rows given as ``x_ref``.
    classes : sequence of str, optional
        Class names (default ``"0"``, ``"1"``, ...).
    alpha : float
        Family-wise false-alarm rate per batch (Holm over the four tests).
    permutations : int
        Permutations of the MMD test.
    max_points : int
        Reference features kept (stratified by predicted class) and batch rows tested.
    seed : int
        Seeds the reference subsample and every test.
    image_size, channels, device, batch_size
        For images read from files and for feature extraction.

    Examples
    --------
    >>> import numpy as np
    >>> from diagnostics import DriftDetector
    >>> rng = np.random.default_rng(0)
    >>> def batch(n, shift=0.0):
    ...     x = rng.normal(size=(n, 8)) + shift
    ...     logits = np.stack([x[:, 0], -x[:, 0]], 1)
    ...     p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ...     return x, p
    >>> x_ref, p_ref = batch(200)
    >>> detector = DriftDetector(x_ref, probs_ref=p_ref, permutations=199, seed=0)
    >>> x, p = batch(150)
    >>> detector.predict(x, probs=p).drift
    False
    >>> x, p = batch(150, shift=1.0)
    >>> result = detector.predict(x, probs=p)
    >>> result.drift, result.to_dict()["verdict"]["correction"]
    (True, 'holm')
    """

    def __init__(
        self,
        x_ref: Any,
        *,
        model: nn.Module | None = None,
        probs_ref: Any = None,
        classes: Sequence[str] | None = None,
        alpha: float = 0.01,
        permutations: int = 500,
        max_points: int = 1000,
        seed: int = 0,
        image_size: int = 64,
        channels: int | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 128,
    ) -> None:
        if not 0 < alpha < 1:
            raise UserError(f"alpha: must lie in (0, 1), got {alpha}")
        if not isinstance(permutations, int) or permutations < 1:
            raise UserError(f"permutations: must be a positive integer, got {permutations!r}")
        self.model = model
        self.alpha, self.permutations, self.max_points, self.seed = float(alpha), permutations, max_points, seed
        self.image_size = image_size
        self.channels = int(channels or getattr(model, "in_channels", 1) or 1)
        self.device, self.batch_size = device, batch_size
        fs = _with_probs(self._features(x_ref, "x_ref"), probs_ref, "x_ref", "probs_ref")
        k = fs.probs.shape[1]
        names = [str(i) for i in range(k)] if classes is None else list(classes)
        self.reference: DriftReference = build_reference(fs, names, max_points=max_points, seed=seed)

    def _features(self, data: Any, argument: str) -> FeatureSet:
        return as_features(data, argument=argument, features="model" if self.model is not None else "pixels",
                           model=self.model, image_size=self.image_size, channels=self.channels, seed=self.seed,
                           device=self.device, batch_size=self.batch_size)

    def predict(self, x: Any, *, probs: Any = None) -> DriftResult:
        """Test one batch (at least 20 rows) against the reference.

        Returns a :class:`~diagnostics.drift.DriftResult`: ``.drift`` (bool),
        ``.inconclusive``, ``.verdict`` (one sentence with the evidence), the four raw
        and Holm-adjusted p-values (``.adjusted``), ``.frechet_distance``; ``to_dict()``.
        """
        if self.model is None and probs is None:
            raise UserError("probs: this detector was built from features; pass probs=<[N, K] probabilities>")
        fs = _with_probs(self._features(x, "x"), probs, "x", "probs")
        return compare_to_reference(self.reference, fs, alpha=self.alpha, permutations=self.permutations,
                                    max_points=self.max_points, seed=self.seed)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the reference (``.npz``, no pickles) for :meth:`load`."""
        return save_reference(self.reference, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, model: nn.Module | None = None, **settings: Any) -> DriftDetector:
        """A detector from a saved reference (:meth:`save`, or a run folder's
        ``drift_reference.npz`` together with that run's deployed ``model``)."""
        detector = cls.__new__(cls)
        ref = load_reference(path)
        detector.model = model
        detector.alpha = float(settings.pop("alpha", 0.01))
        detector.permutations = int(settings.pop("permutations", 500))
        detector.max_points = int(settings.pop("max_points", 1000))
        detector.seed = int(settings.pop("seed", 0))
        detector.image_size = int(settings.pop("image_size", ref.meta.get("image_size") or 64))
        detector.channels = int(settings.pop("channels", ref.meta.get("channels") or 1))
        detector.device = settings.pop("device", "cpu")
        detector.batch_size = int(settings.pop("batch_size", 128))
        if settings:
            raise UserError(f"{', '.join(sorted(settings))}: unknown setting(s) of DriftDetector.load")
        detector.reference = ref
        return detector
