"""The ``Examples`` sections of the public modules run as doctests (small built-in data)."""

from __future__ import annotations

import doctest
import importlib

import pytest

#: the modules whose docstrings document the Python API
PUBLIC_MODULES = [
    "adapt.errors",
    "adapt.data.inputs",
    "adapt.models.wrap",
    "domaingap.own_model",
    "domaingap.experiment",
    "diagnostics.input_gap",
    "diagnostics.drift_detector",
    "domaingap.model_audit",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything an example writes by a relative path lands here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name}: no examples"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (see stdout)"
