"""Prediction entropies as differentiable training terms (CDAN+E, MCC, SHOT, TENT).

With p = softmax(logits) [B, K]:

    H(p_i)      = −Σ_k p_ik log p_ik                     (per-sample entropy, nats)
    w_i         = 1 + exp(−H(p_i))                        (CDAN's entropy weight, Long et al. 2018)
    IM loss     = E_i H(p_i) − H(E_i p_i)                 (SHOT's information maximisation,
                                                           Liang et al. 2020; minimised)

The label-free selectors use pytorch-adapt's validators instead (``adapt.selection``);
these are the training-side terms, in torch and with gradients.
"""

from __future__ import annotations

from torch import Tensor

_EPS = 1e-12


def entropy(probs: Tensor) -> Tensor:
    """Per-row entropy H(p_i) = −Σ_k p_ik log p_ik of probabilities ``probs`` [B, K] → [B] (nats)."""
    return -(probs * probs.clamp_min(_EPS).log()).sum(dim=1)


def entropy_weights(probs: Tensor) -> Tensor:
    """CDAN's certainty weights w_i = 1 + exp(−H(p_i)) ∈ (1, 2], [B]; no gradient (detached)."""
    return 1.0 + (-entropy(probs.detach())).exp()


def information_maximization(logits: Tensor) -> tuple[Tensor, Tensor]:
    """(mean per-sample entropy E_i H(p_i), entropy of the mean prediction H(E_i p_i)).

    SHOT minimises the first (confident predictions) minus the second (diverse ones):
    ``ent − div``; in fp32 whatever the autocast dtype.
    """
    probs = logits.float().softmax(dim=1)
    return entropy(probs).mean(), entropy(probs.mean(dim=0, keepdim=True))[0]
