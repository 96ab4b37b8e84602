"""The shipped examples run, end to end, at a tiny size (and say what they promise)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, argv: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_there_are_three_examples():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "gap_and_drift.py", "imagefolder_audit.py", "own_torchvision_model.py"]


@pytest.mark.slow
def test_imagefolder_audit(tmp_path, monkeypatch, capsys):
    out = _run("imagefolder_audit.py", ["--out", str(tmp_path), "--n", "30"], monkeypatch, capsys)
    assert (tmp_path / "runs" / "a_to_b" / "audit.html").is_file()
    assert "dann" in out and "audit:" in out and "[" in out  # the table, the verdicts, the report


@pytest.mark.slow
def test_gap_and_drift(monkeypatch, capsys):
    out = _run("gap_and_drift.py", ["--n", "40", "--permutations", "49"], monkeypatch, capsys)
    lines = out.splitlines()
    assert lines[0].startswith("MMD²") and "Fréchet" in lines[1]
    # the other site's batch is flagged
    assert any(line.startswith("site A batch: drift=True") for line in lines)


@pytest.mark.slow
def test_own_torchvision_model(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = _run("own_torchvision_model.py", ["--n", "24", "--method", "dann", "--image-size", "16"], monkeypatch, capsys)
    assert out.startswith("dann: target accuracy") and "kept epoch 1 of 1" in out
