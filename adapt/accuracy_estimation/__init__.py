"""Label-free estimates of a model's accuracy on an unlabelled target domain.

Pure functions of predicted probabilities (no torch, no model): each estimator in its own
module, with its formula and paper in the docstring. They sit in the base layer of the
architecture (numpy and POT only) so that both sides use them: the audit (measurement)
reports the estimate with its measured error band, and checkpoint selection (training)
can rank epochs by it.

The error band shown next to an estimate is never a guess: it is the error measured by
``benchmarks/labelfree_study.py`` on shifts whose target labels exist but were hidden
from the estimators, shipped as ``calibration.json`` (:mod:`.calibration`).
"""

from adapt.accuracy_estimation.agreement import agreement_estimate, agreement_rate, disagreement_rate
from adapt.accuracy_estimation.atc import atc_estimate, atc_threshold, confidence_scores, estimate_atc
from adapt.accuracy_estimation.cot import cot_error, estimate_cot
from adapt.accuracy_estimation.doc import estimate_doc
from adapt.accuracy_estimation.estimate import ESTIMATORS, estimate_all

__all__ = [
    "ESTIMATORS", "agreement_estimate", "agreement_rate", "atc_estimate", "atc_threshold", "confidence_scores",
    "cot_error", "disagreement_rate", "estimate_all", "estimate_atc", "estimate_cot", "estimate_doc",
]
