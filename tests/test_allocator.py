"""adapt/allocator.py: the commands keep freed memory mapped (large tensors come from the
heap, not from mappings of their own), the opt-out leaves glibc alone, and the numbers a run
computes are bit for bit the same either way. The speed is measured in
benchmarks/bench_allocator.py, never here."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import ctypes, hashlib, json, sys
sys.path.insert(0, ROOT)
from adapt.allocator import retain_freed_memory
kept = retain_freed_memory()
import torch
from adapt.methods.adabn import adabn, batchnorm_layers
from adapt.models import build_model

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
before = libc.mallinfo2().hblkhd
big = torch.ones(16 << 20)  # 64 MiB: above glibc's largest mmap threshold
mapped = libc.mallinfo2().hblkhd - before
del big

torch.manual_seed(0)
model = build_model("small_cnn", 2, 1)
g = torch.Generator().manual_seed(1)
x, y = torch.rand(96, 1, 32, 32, generator=g), torch.randint(0, 2, (96,), generator=g)
opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
for i in range(0, 96, 32):
    loss = torch.nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
    opt.zero_grad()
    loss.backward()
    opt.step()
adabn(model, x, "cpu", batch_size=48)
h = hashlib.sha256()
for t in model.state_dict().values():
    h.update(t.contiguous().numpy().tobytes())
print(json.dumps({"kept": kept, "mapped": mapped, "digest": h.hexdigest()}))
"""


def _glibc_has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_has_mallinfo2(), reason="glibc >= 2.33 only (mallinfo2)")
def test_large_tensors_stay_in_the_heap_unless_opted_out_and_the_numbers_do_not_change(monkeypatch):
    import torch

    # this process, the setting on (tests/conftest.py sets it as the commands do; the child
    # code sets it again, here whatever the caller's environment says)
    monkeypatch.delenv("DOMAINGAP_KEEP_FREED_MEMORY", raising=False)
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(CHILD.replace("ROOT", repr(str(ROOT))).replace("print(json.dumps(", "result = (("),
                     "child", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    kept = namespace["result"]
    # a process that opts out
    env = {**os.environ, "DOMAINGAP_KEEP_FREED_MEMORY": "0", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD.replace("ROOT", repr(str(ROOT)))], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert kept["kept"] and kept["mapped"] < 1 << 20  # from the heap: no mapping of its own
    assert not plain["kept"] and plain["mapped"] >= 64 << 20  # glibc as it comes: mmap
    assert kept["digest"] == plain["digest"]  # trained and re-estimated weights, bit for bit


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
