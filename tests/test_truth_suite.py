"""The truth suite's small cases, end to end through the ``diagnose gap`` CLI: a source
model trained by ``adapt-run`` on scikit-learn's digits, then planted targets with a known
truth (no shift, covariate shifts with and without labels, a collapse, a pure label shift
with and without labels). Every case must match. The CLIs are called through their
``main`` in this process (``--in-process``: the same parsing and exit codes, without ~3 s
of interpreter start per call); the benchmark's default runs each as its own process."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage")  # the suite's data builders import scikit-image's photos lazily

ROOT = Path(__file__).resolve().parents[1]


def _suite():
    spec = importlib.util.spec_from_file_location("truth_suite", ROOT / "benchmarks" / "truth_suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["truth_suite"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_small_truth_suite_matches_every_case(tmp_path, capsys):
    suite = _suite()
    code = suite.main(["--small", "--in-process", "--out", str(tmp_path / "truth")])
    out = capsys.readouterr().out
    assert code == 0, out
    small = [c.name for c in suite.CASES if c.small]
    assert len(small) >= 6
    for name in small:
        assert f"| {name} |" in out
    assert "**NO**" not in out
