"""domaingap.diagnostics — measure a domain gap and audit an adaptation.

The Python API (statistics are pure functions of arrays; results are dataclasses with
``to_dict()``):

* :func:`domain_gap` — MMD test, classifier two-sample test, Fréchet distance with a
  bootstrap interval, domain-classifier AUC, Wasserstein-2, between images or features;
* :class:`DriftDetector` — ``DriftDetector(x_ref, model=m).predict(x)``;
* the single statistics: :func:`mmd_permutation_test`, :func:`classifier_two_sample_test`,
  :func:`frechet_distance`, :func:`frechet_bootstrap`, :func:`wasserstein_distance`;
* :func:`extract_features` and :class:`FeatureSet`;
* :func:`audit_models` — two models on two domains: the verdicts and the HTML report.

Every name is loaded on first use.
"""

from __future__ import annotations

from adapt.lazy import lazy_exports

__all__ = [
    "C2STResult", "DriftDetector", "DriftResult", "FeatureSet", "GapResult", "MMDResult", "ModelAudit",
    "TransportResult",
    "audit_models", "classifier_two_sample_test", "domain_gap", "extract_features", "frechet_bootstrap",
    "frechet_distance", "mmd_permutation_test", "wasserstein_distance",
]

#: public name -> the module that defines it, imported on first use (PEP 562: the CLIs
#: stay quick); the architecture test reads this table as the package's imports
LAZY_EXPORTS = {
    "C2STResult": "diagnostics.two_sample",
    "DriftDetector": "diagnostics.drift_detector",
    "DriftResult": "diagnostics.drift",
    "FeatureSet": "diagnostics.features",
    "GapResult": "diagnostics.gap",
    "MMDResult": "diagnostics.mmd",
    "ModelAudit": "domaingap.model_audit",
    "TransportResult": "diagnostics.transport",
    "audit_models": "domaingap.model_audit",
    "classifier_two_sample_test": "diagnostics.two_sample",
    "domain_gap": "diagnostics.input_gap",
    "extract_features": "diagnostics.features",
    "frechet_bootstrap": "diagnostics.frechet",
    "frechet_distance": "diagnostics.frechet",
    "mmd_permutation_test": "diagnostics.mmd",
    "wasserstein_distance": "diagnostics.transport",
}


__getattr__, __dir__ = lazy_exports(__name__, LAZY_EXPORTS, globals())
