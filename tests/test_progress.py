"""What a run prints: bars only on a terminal, plain per-epoch lines, no third-party noise."""

from __future__ import annotations

import io
import json
import subprocess
import sys

from adapt.progress import progress_bar, reporter


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_bar_is_drawn_only_when_stderr_is_a_terminal(monkeypatch):
    for tty in (True, False):
        err = _Stream(tty)
        monkeypatch.setattr(sys, "stderr", err)
        bar = progress_bar(range(3), desc="x", file=err)
        assert bar.disable is (not tty)
        assert list(bar) == [0, 1, 2]  # a disabled bar still iterates
        bar.set_postfix(loss="1.0")
        bar.close()
        assert ("\r" in err.getvalue()) is tty
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert progress_bar(range(3), enabled=False).disable  # --quiet wins on a terminal too


def test_reporter_prints_lines_or_nothing(capsys):
    reporter(True)("epoch 1/1: loss=0.5")
    reporter(False)("hidden")
    assert capsys.readouterr().out == "epoch 1/1: loss=0.5\n"


def test_adapt_run_in_a_log_has_no_carriage_returns_and_no_deprecation_noise(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: tiny\nseed: 0\n"
        "data: {source: {kind: phantom-cxr, site: A, n: 120}, target: {kind: phantom-cxr, site: B, n: 120},"
        " image_size: 32}\n"
        "train: {epochs: 1, batch_size: 32, device: cpu, threads: 1}\n"
        # label-free selection imports pytorch-adapt (and torchmetrics, which warned about pkg_resources)
        "method: {selection: im, runs: [{name: hist, objective: source_only, style: histogram, epochs: 1}]}\n"
        "diagnostics: {enabled: false}\n"
    )
    proc = subprocess.run([sys.executable, "-m", "domaingap.adapt_run", str(recipe), f"output.dir={tmp_path / 'runs'}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pkg_resources" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    assert "\r" not in proc.stderr and "\r" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert any(line.startswith("source epoch 1/1: ") for line in lines), proc.stdout
    assert any(line.startswith("hist epoch 1/1: ") and "im=" in line for line in lines), proc.stdout
    # a fresh run is staged in a hidden folder: what the log names is where the files end up
    assert ".tiny.partial" not in proc.stdout, proc.stdout
    assert any(line.startswith("drift reference: ") and str(tmp_path / "runs" / "tiny" / "drift_reference.npz")
               in line for line in lines), proc.stdout
    # the log says which model ships and why — the deployment metrics.json records
    deployed = json.loads((tmp_path / "runs" / "tiny" / "metrics.json").read_text())["deployment"]["model"]
    said = [line for line in lines if line.startswith("Deployed: ")]
    assert len(said) == 1 and said[0].startswith(f"Deployed: {deployed} — "), proc.stdout
