"""domaingap.diagnostics — measure a domain gap and audit an adaptation.

The Python API (statistics are pure functions of arrays; results are dataclasses with
``to_dict()``):

* :func:`domain_gap` — MMD test, classifier two-sample test, Fréchet distance with a
  bootstrap interval, domain-classifier AUC, Wasserstein-2, between images or features;
* :class:`DriftDetector` — ``DriftDetector(x_ref, model=m).predict(x)``;
* the single statistics: :func:`mmd_permutation_test`, :func:`classifier_two_sample_test`,
  :func:`frechet_distance`, :func:`frechet_bootstrap`, :func:`wasserstein_distance`;
* :func:`extract_features` and :class:`FeatureSet`.

Auditing two models and writing the HTML report: :func:`diagnostics.model_audit.audit_models`
(an orchestration module, imported on first use: ``from diagnostics.model_audit import audit_models``,
or ``diagnostics.audit_models``).
"""

from __future__ import annotations

from typing import Any

from diagnostics.domain_gap import domain_gap
from diagnostics.drift import DriftResult
from diagnostics.drift_detector import DriftDetector
from diagnostics.features import FeatureSet, extract_features
from diagnostics.frechet import frechet_bootstrap, frechet_distance
from diagnostics.gap import GapResult
from diagnostics.mmd import MMDResult, mmd_permutation_test
from diagnostics.transport import TransportResult, wasserstein_distance
from diagnostics.two_sample import C2STResult, classifier_two_sample_test

__all__ = [
    "C2STResult", "DriftDetector", "DriftResult", "FeatureSet", "GapResult", "MMDResult", "TransportResult",
    "audit_models", "classifier_two_sample_test", "domain_gap", "extract_features", "frechet_bootstrap",
    "frechet_distance", "mmd_permutation_test", "wasserstein_distance",
]

#: names served by a module of a higher layer, imported on first use (PEP 562); the
#: architecture test reads this table as imports of the package
LAZY_EXPORTS = {"audit_models": "diagnostics.model_audit"}


def __getattr__(name: str) -> Any:
    if name in LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
