"""Every label-free accuracy estimate of one model at once (the study and the audit
call this; each estimator's formula lives in its own module)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from adapt.accuracy_estimation.agreement import agreement_estimate
from adapt.accuracy_estimation.atc import estimate_atc
from adapt.accuracy_estimation.cot import estimate_cot
from adapt.accuracy_estimation.doc import estimate_doc

#: estimator name → what it needs: "source" (held-out labelled source predictions),
#: "others" (other models' target predictions on the same images)
ESTIMATORS = {
    "atc": "source",            # ATC, negative-entropy score
    "atc_maxprob": "source",    # ATC, max-softmax score
    "doc": "source",
    "cot": "source",
    "avg_conf": "",             # mean max-softmax: the naive baseline every paper compares with
    "agreement": "others",       # median agreement with the other models
    "agreement_mean": "others",  # mean agreement (Jiang et al.'s average over copies)
}


def estimate_all(target_probs: np.ndarray, source_probs: np.ndarray | None = None,
                 source_labels: np.ndarray | None = None,
                 other_target_preds: list[np.ndarray] | None = None, seed: int = 0,
                 known: Mapping[str, float] | None = None) -> dict[str, float]:
    """Estimated target accuracy [0, 1] by each estimator whose inputs are given.

    ``target_probs`` [n_t, K]; ``source_probs`` [n_s, K] with ``source_labels`` [n_s]:
    held-out labelled source images (as the model is deployed on the source);
    ``other_target_preds`` [M, n_t]: other models' predicted labels on the same target
    images, in the same order (agreement). ``known``: COT already computed from these same
    target probabilities, source labels and seed (the deployment ranking's,
    :func:`diagnostics.ranking.rank_by_estimate`) — taken, not computed again (an optimal
    transport problem per model)."""
    pt = np.asarray(target_probs, dtype=np.float64)
    out = {"avg_conf": float(pt.max(1).mean())}
    if source_probs is not None and source_labels is not None and len(source_labels):
        out["atc"] = estimate_atc(source_probs, source_labels, pt, "neg_entropy")
        out["atc_maxprob"] = estimate_atc(source_probs, source_labels, pt, "max_softmax")
        out["doc"] = estimate_doc(source_probs, source_labels, pt)
        cot = (known or {}).get("cot")
        out["cot"] = float(cot) if cot is not None else estimate_cot(pt, source_labels, seed=seed)
    if other_target_preds:
        out["agreement"] = agreement_estimate(pt.argmax(1), other_target_preds, "median")
        out["agreement_mean"] = agreement_estimate(pt.argmax(1), other_target_preds, "mean")
    return out
