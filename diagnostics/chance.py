"""Is a model still near chance on the target, however much it improved?

"Adaptation helped: 10 % → 18 %" on ten classes is an improvement to a model nobody can
use. The yardstick is the chance-corrected accuracy (the form of Cohen's kappa,
Cohen 1960, against a fixed baseline):

    κ = (accuracy − chance) / (1 − chance)

with ``chance`` the accuracy of always predicting the most frequent true class (the
target label mix when known, 1/K otherwise) — a model that ignores its input scores
exactly that. κ = 0 is chance, 1 is perfect; a model is "near chance" when κ < ``margin``
(0.25 by default: it recovers less than a quarter of the way from chance to perfect).

Without target labels the proxy is the label-free evidence: the same correction applied
to the mean confidence max_k p(k|x) (a model unsure of everything is near 1/K), or an
information-maximisation score IM = H(E p) − E H(p) below ``im_margin`` · log K (its
outputs carry almost no information about the input).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from adapt.errors import UserError

__all__ = ["ChanceCheck", "chance_corrected", "near_chance", "near_chance_label_free"]


def chance_corrected(accuracy: float, chance: float) -> float:
    """κ = (accuracy − chance) / (1 − chance); ``chance`` in [0, 1)."""
    if not 0.0 <= chance < 1.0:
        raise UserError(f"chance: must be in [0, 1), got {chance}")
    return (float(accuracy) - chance) / (1.0 - chance)


@dataclass
class ChanceCheck:
    """``near``: the model is near chance; ``score`` is κ (or its label-free proxy) and
    ``chance`` the baseline it is measured from; ``basis`` says which evidence was used."""

    near: bool
    score: float
    chance: float
    margin: float
    basis: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def near_chance(accuracy: float, num_classes: int, *, label_mix=None, margin: float = 0.25) -> ChanceCheck:
    """Accuracy-based check (target labels known). ``label_mix`` [K]: the true class
    shares of the scored images (default uniform, chance = 1/K)."""
    if num_classes < 2:
        raise UserError(f"num_classes: at least 2, got {num_classes}")
    if not 0.0 <= accuracy <= 1.0:
        raise UserError(f"accuracy: must be in [0, 1], got {accuracy}")
    chance = 1.0 / num_classes if label_mix is None else float(np.max(np.asarray(label_mix, dtype=float)))
    kappa = chance_corrected(accuracy, min(chance, 1.0 - 1e-12))
    near = kappa < margin
    reason = (f"accuracy {100 * accuracy:.1f}% against chance {100 * chance:.1f}% "
              f"(always the most frequent class): chance-corrected {kappa:.2f}"
              + (f" < {margin:g}" if near else f" ≥ {margin:g}"))
    return ChanceCheck(near=bool(near), score=float(kappa), chance=float(chance), margin=float(margin),
                       basis="accuracy", reason=reason)


def near_chance_label_free(mean_confidence: float, im_score: float, num_classes: int, *,
                           margin: float = 0.25, im_margin: float = 0.1) -> ChanceCheck:
    """Label-free proxy: near chance when the chance-corrected mean confidence is below
    ``margin`` or IM < ``im_margin`` · log K."""
    if num_classes < 2:
        raise UserError(f"num_classes: at least 2, got {num_classes}")
    chance = 1.0 / num_classes
    conf = chance_corrected(mean_confidence, chance)
    im_ratio = float(im_score) / math.log(num_classes)
    near = conf < margin or im_ratio < im_margin
    reason = (f"mean confidence {100 * mean_confidence:.1f}% (chance-corrected {conf:.2f}), "
              f"IM {im_score:.3f} nats = {im_ratio:.2f} of log K")
    return ChanceCheck(near=bool(near), score=float(min(conf, im_ratio)), chance=float(chance),
                       margin=float(margin), basis="label-free (confidence, IM)", reason=reason)
