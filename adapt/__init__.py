"""domaingap.adapt — train a source model and adapt it to a target domain.

The Python API, importable from the package (each name is loaded on first use, so
that ``import adapt.errors`` and the CLIs stay quick):

* :func:`run` / :func:`load_run` / :class:`RunResult` — a recipe end to end (a
  :class:`Recipe` or a YAML path, overrides as a dict), and a run folder read back;
* :func:`adapt_model` / :class:`AdaptResult` / :data:`METHODS` — one named method on
  your own model, no YAML;
* :func:`wrap_model` — your ``nn.Module`` as a :class:`Classifier` (feature/head split);
* :func:`build_model`, :func:`load_checkpoint`, :func:`as_domain`, :func:`load_recipe`;
* :class:`UserError` — every bad-input error (a :class:`ValueError`).
"""

from __future__ import annotations

from adapt.lazy import lazy_exports

from adapt.version import __version__

__all__ = [
    "AdaptResult", "Classifier", "METHODS", "Recipe", "RunResult", "UserError", "__version__", "adapt_model",
    "as_domain", "build_model", "load_checkpoint", "load_recipe", "load_run", "run", "wrap_model",
]

#: public name -> the module that defines it, imported on first use (PEP 562); the
#: architecture test reads this table as the package's imports
LAZY_EXPORTS = {
    "AdaptResult": "domaingap.own_model",
    "Classifier": "adapt.models",
    "METHODS": "domaingap.own_model",
    "Recipe": "adapt.recipe",
    "RunResult": "domaingap.experiment",
    "UserError": "adapt.errors",
    "adapt_model": "domaingap.own_model",
    "as_domain": "adapt.data.inputs",
    "build_model": "adapt.models",
    "load_checkpoint": "adapt.models",
    "load_recipe": "adapt.recipe",
    "load_run": "domaingap.experiment",
    "run": "domaingap.experiment",
    "wrap_model": "adapt.models.wrap",
}


__getattr__, __dir__ = lazy_exports(__name__, LAZY_EXPORTS, globals())
