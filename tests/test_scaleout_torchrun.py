"""torchrun across two "nodes" on one host: two torchrun agents (``--nnodes 2``, one
process each, gloo) meet through a c10d rendezvous, exactly as two machines would.

* The two-node run equals a single process that steps through the same global batches
  (each step: the union of the ranks' batches), within float tolerance. A plain single
  process with its own batch order visits other batches and ends elsewhere — the
  tolerance tells the two apart (BatchNorm swapped for GroupNorm in the test's model: see
  tests/_ddp_nodes_worker.py).
* A node that dies (or hangs) mid-training stops the other with one ``error:`` line, not a
  hang."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(rank: int, port: int, run_id: str, logs: Path, *command: str, **env_vars: str) -> subprocess.Popen:
    """One "machine": a torchrun agent with one worker; the worker's stdout/stderr go to
    files under ``logs/`` (torchrun's --redirects), the agent's to ``logs/agent<rank>.log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent), **env_vars}
    logs.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
           "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", f"localhost:{port}",
           "--rdzv_id", run_id, "--rdzv_conf", "join_timeout=120", "--log-dir", str(logs / f"node{rank}"),
           "--redirects", "3", *command]
    return subprocess.Popen(cmd, cwd=logs, env=env, stdout=open(logs / f"agent{rank}.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _worker_stderr(logs: Path, rank: int) -> str:
    return "".join(p.read_text() for p in sorted((logs / f"node{rank}").rglob("stderr.log")))


def _kill_node(agent: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to a node's workers (torchrun starts them in sessions of their own) and,
    when it is SIGKILL, to its agent: the machine is gone. SIGSTOP: its workers hang."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == agent.pid:  # the parent pid
            children.append(int(stat.parent.name))
    for pid in [*children, agent.pid] if sig == signal.SIGKILL else children:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_two_nodes_equal_one_process_on_the_same_global_batches(tmp_path):
    from tests._ddp_nodes_worker import train

    port, logs = _free_port(), tmp_path / "logs"
    nodes = [_node(r, port, "equal", logs, str(HERE / "_ddp_nodes_worker.py"), str(tmp_path)) for r in range(2)]
    try:
        codes = [n.wait(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            _kill_node(n) if n.poll() is None else None
    assert codes == [0, 0], [(logs / f"agent{r}.log").read_text()[-2000:] + _worker_stderr(logs, r)[-2000:]
                             for r in range(2)]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # the two machines hold the same weights

    replay = train(tmp_path / "replay", replay_world=2)  # one process, the two ranks' global batches
    plain = train(tmp_path / "plain")  # one process, its own batches of the same size as a rank's
    for k in w0:
        torch.testing.assert_close(replay[k], w0[k], atol=1e-4, rtol=1e-4, msg=k)
    farthest = max(float((plain[k] - w0[k]).abs().max()) for k in w0 if w0[k].is_floating_point())
    assert farthest > 1e-3  # other batches, other weights: the tolerance above discriminates


TINY = """
name: tiny
data: {source: {kind: phantom-cxr, site: A, n: 96}, target: {kind: phantom-cxr, site: B, n: 64}, image_size: 32}
train: {epochs: 500, batch_size: 16, device: cpu, threads: 1, patience: null}
method: {runs: [{name: hist, objective: source_only, style: histogram, epochs: 1}]}
output: {dir: RUNS}
diagnostics: {enabled: false}
"""


@pytest.mark.parametrize("how", ["dies", "hangs"])
def test_a_node_that_dies_or_hangs_stops_the_other_with_one_line(tmp_path, how):
    """"dies": the machine is gone (SIGKILL); the other fails in its next collective at once.
    "hangs": its process is frozen (SIGSTOP); the other gives up after the collective
    timeout (DOMAINGAP_DIST_TIMEOUT_S, the user's setting: 8 s here, so that the test
    does not sit out a longer wait)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY.replace("RUNS", str(tmp_path / "runs")))
    port, logs = _free_port(), tmp_path / "logs"
    nodes = [_node(r, port, how, logs, "-m", "domaingap.adapt_run", str(recipe), "--quiet",
                   DOMAINGAP_DIST_TIMEOUT_S="8") for r in range(2)]
    try:
        # the source model is training on both nodes (rank 0 has checkpointed an epoch)
        started = tmp_path / "runs" / ".tiny.partial" / "source" / "last.pt"
        deadline = time.monotonic() + 300
        while not started.exists():
            assert all(n.poll() is None for n in nodes) and time.monotonic() < deadline, \
                (logs / "agent0.log").read_text()[-3000:]
            time.sleep(0.2)
        _kill_node(nodes[1], signal.SIGKILL if how == "dies" else signal.SIGSTOP)  # the second machine
        code = nodes[0].wait(timeout=180)  # a hang fails here
    finally:
        for n in nodes:
            _kill_node(n) if n.poll() is None else None
    assert code != 0
    err = _worker_stderr(logs, 0)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: rank 0 of 2: another rank stopped"), err[-3000:]
    assert "--resume" in lines[0]
