"""adapt/allocator.py: the commands keep freed memory mapped (large tensors come from the
heap, not from mappings of their own), the opt-out leaves glibc alone, and the numbers a run
computes are bit for bit the same either way. The speed is measured in
benchmarks/bench_allocator.py, never here."""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BENCH = ROOT / "benchmarks" / "bench_allocator.py"
#: the benchmark's own measurement (one definition of the tasks), on a small set of images
SMALL = {"n": 96, "size": 32, "threads": 1}


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_allocator", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _glibc_has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_has_mallinfo2(), reason="glibc >= 2.33 only (mallinfo2)")
def test_large_tensors_stay_in_the_heap_unless_opted_out_and_the_numbers_do_not_change(monkeypatch):
    import torch

    # this process, the setting on (tests/conftest.py sets it as the commands do; the
    # benchmark's child sets it again, here whatever the caller's environment says)
    monkeypatch.delenv("DOMAINGAP_KEEP_FREED_MEMORY", raising=False)
    threads = torch.get_num_threads()
    try:
        kept = _load_bench().child(**SMALL)
    finally:
        torch.set_num_threads(threads)
    # a process that opts out
    env = {**os.environ, "DOMAINGAP_KEEP_FREED_MEMORY": "0", "OMP_NUM_THREADS": "1"}
    args = [f"--{k}={v}" for k, v in SMALL.items()]
    done = subprocess.run([sys.executable, str(BENCH), "--child", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert kept["kept"] and kept["mapped"] < 1 << 20  # from the heap: no mapping of its own
    assert not plain["kept"] and plain["mapped"] >= 64 << 20  # glibc as it comes: mmap
    for task in ("AdaBN estimate", "inference pass", "training epoch"):  # bit for bit
        assert kept[task]["digest"] == plain[task]["digest"], task


@pytest.mark.parametrize("command", ["adapt_run", "diagnose"])
def test_the_commands_keep_freed_memory(command, monkeypatch, tmp_path, capsys):
    import importlib

    module = importlib.import_module(f"domaingap.{command}")
    calls = []
    monkeypatch.setattr(module, "retain_freed_memory", lambda: calls.append(1) or True)
    argv = [str(tmp_path / "missing.yaml")] if command == "adapt_run" else \
        ["gap", "--source", str(tmp_path / "a"), "--target", str(tmp_path / "b")]
    assert module.main(argv) == 2  # a missing input: one error line, after the setting
    assert calls == [1]
