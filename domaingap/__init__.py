"""domaingap — the orchestration: what runs a recipe or a command end to end.

The project's three top-level packages are its layers (docs/architecture.md):

* ``adapt/`` — the base both sides stand on (errors, io, recipe schema, data, models,
  label-free accuracy estimators) and the training side (the one loop, the methods);
* ``diagnostics/`` — the measurement side (gap statistics, features, attribution, the audit's
  verdicts, the HTML report, drift);
* ``domaingap/`` (here) — the orchestration that joins them: loading a run's domains, the
  run folder, the pipeline of ``adapt-run``, the run audit, sweeps, and the two commands
  (``adapt_run.py`` is ``adapt-run``, ``diagnose.py`` is ``diagnose``).

Nothing under ``adapt/`` or ``diagnostics/`` imports this package (tests/test_architecture.py);
the Python API (``adapt.run``, ``diagnostics.audit_models``, ...) is re-exported lazily from the
two packages' ``__init__``.
"""
