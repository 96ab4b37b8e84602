"""A sweep's storage URL is checked before anything waits on it: a scheme Optuna cannot
use, a database driver that is not installed (the package named), a server that refuses
or never answers (a bounded connection timeout) — each one `error:` line, exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adapt.errors import UserError
from domaingap import sweep_storage
from domaingap.sweep import run_sweep
from tests.test_sweep import _files

pytest.importorskip("optuna")
ROOT = Path(__file__).resolve().parents[1]


def test_a_scheme_optuna_cannot_store_into_is_named(tmp_path):
    recipe, sweep = _files(tmp_path)
    with pytest.raises(UserError, match="'redis' is not a database Optuna can store a study in"):
        run_sweep(recipe, sweep, storage="redis://localhost:6379/0", say=lambda m: None)
    with pytest.raises(UserError, match="not a database URL"):
        run_sweep(recipe, sweep, storage="localhost:5432", say=lambda m: None)
    assert not (tmp_path / "runs").exists()  # refused before any folder was made


def test_a_missing_postgres_driver_names_the_extra(monkeypatch):
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # "not installed"
    with pytest.raises(UserError) as err:
        sweep_storage.resolve_storage_url("postgresql://me:s3cret@db.example:5432/sweeps")
    assert "domaingap[postgres]" in str(err.value) and "s3cret" not in str(err.value)


def test_a_bare_postgres_url_uses_the_installed_driver():
    pytest.importorskip("psycopg")
    url = sweep_storage.resolve_storage_url("postgresql://me@db.example/sweeps")
    assert url.drivername in ("postgresql+psycopg", "postgresql+psycopg2")


def test_a_server_that_never_answers_is_an_error_after_the_timeout_not_a_hang(tmp_path, monkeypatch):
    """A port that accepts TCP connections but never speaks (a stuck server, a proxy to
    nowhere): without a connection timeout the worker would wait for ever."""
    pytest.importorskip("psycopg")
    recipe, sweep = _files(tmp_path)
    monkeypatch.setattr(sweep_storage, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(UserError, match=rf"--storage postgresql://me:\*\*\*@127.0.0.1:{port}/x: cannot open"):
            run_sweep(recipe, sweep, storage=f"postgresql://me:pw@127.0.0.1:{port}/x", say=lambda m: None)
        assert time.monotonic() - t0 < 60


def test_the_command_says_a_refused_connection_in_one_line(tmp_path):
    pytest.importorskip("psycopg")
    recipe, sweep = _files(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    proc = subprocess.run([sys.executable, "-m", "domaingap.adapt_run", str(recipe), "--sweep", str(sweep),
                           "--storage", f"postgresql://me@127.0.0.1:{port}/sweeps", "--quiet"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --storage postgresql://me@127.0.0.1:{port}/sweeps"), lines
