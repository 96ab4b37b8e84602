"""torch.distributed data parallelism on CPU (gloo): two ranks end with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def torchrun(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    proc = torchrun([str(HERE / "_ddp_worker.py"), str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # ranks saw different shards, yet trained: weights moved from the initialisation
    torch.manual_seed(0)
    from adapt.models import build_model

    init = build_model("small_cnn", 2, 1).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0 if w0[k].is_floating_point())
    # only rank 0 wrote checkpoints
    assert (tmp_path / "ckpt" / "last.pt").exists()


@pytest.mark.slow
def test_adapt_run_nproc_2(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "name: tiny\n"
        "data: {source: {kind: phantom-cxr, site: A, n: 96}, target: {kind: phantom-cxr, site: B, n: 64},"
        " image_size: 32}\n"
        "train: {epochs: 1, batch_size: 16, device: cpu, threads: 1}\n"
        "method: {runs: [{name: dann, objective: dann, epochs: 1}]}\n"
        f"output: {{dir: {tmp_path / 'runs'}}}\n"
        "diagnostics: {enabled: false}\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "domaingap.adapt_run", str(recipe), "--nproc", "2", "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "runs" / "tiny" / "metrics.json").exists()
    assert (tmp_path / "runs" / "tiny" / "methods" / "dann" / "model.pt").exists()
    # the main rank alone extracts the drift reference's features (no sharded collective)
    assert (tmp_path / "runs" / "tiny" / "drift_reference.npz").exists()


def test_each_rank_of_a_machine_takes_its_own_gpu(monkeypatch):
    """Under torchrun with NCCL, rank LOCAL_RANK of a machine trains on GPU LOCAL_RANK
    (the process group itself is stubbed: this runs without GPUs)."""
    import torch.distributed as dist

    from adapt import distributed

    chosen, joined = [], []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: joined.append((backend, timeout)))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("DOMAINGAP_DIST_TIMEOUT_S", "90")
    ctx = distributed.init_from_env(torch.device("cuda"))
    assert chosen == [1] and ctx.rank == 3 and ctx.world_size == 4
    assert joined[0][0] == "nccl" and joined[0][1].total_seconds() == 90
