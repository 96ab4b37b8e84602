"""Multi-process data-parallel training with torch.distributed (gloo on CPU, NCCL on GPU).

``torchrun --nproc-per-node N -m domaingap.adapt_run RECIPE`` (or ``adapt-run RECIPE --nproc N``)
starts N ranks. Each rank reads its own shard of every epoch's batch order; after each
backward pass the gradients are averaged across ranks with ``all_reduce`` — exactly what
``DistributedDataParallel`` does — and BatchNorm buffers are averaged at the end of each
epoch, so every rank holds identical weights. The gradient all-reduce is explicit rather
than a ``DistributedDataParallel`` wrapper because methods call ``model.features`` and
``model.head`` separately (DANN, MixStyle), which DDP's forward hook would not see.
Only rank 0 writes files.

Across machines (``torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT``,
docs/scaleout.md) a rank can vanish: its machine reboots, its process is killed. The
other ranks then fail in their next collective; :func:`stop_if_a_rank_is_lost` turns that
failure into :class:`RankLost`, which ``adapt-run`` prints as one ``error:`` line (exit 1)
instead of a traceback. A rank that hangs without dying is caught by the collective
timeout, ``DOMAINGAP_DIST_TIMEOUT_S`` seconds (default 1800, PyTorch's: long enough for
rank 0's audit, which the other ranks wait for).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from adapt.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``; ``is_main`` writes files."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


SINGLE = DistContext()
#: seconds a collective (and joining the process group) may wait for the other ranks
DEFAULT_TIMEOUT_S = 1800


class RankLost(RuntimeError):
    """Another rank stopped answering (died, or hung past the timeout): this one stops too."""


def timeout_s() -> float:
    """The collective timeout: ``DOMAINGAP_DIST_TIMEOUT_S`` or :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get("DOMAINGAP_DIST_TIMEOUT_S", "").strip()
    if not raw:
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < 1e7:
        raise UserError(f"DOMAINGAP_DIST_TIMEOUT_S: a number of seconds above 0, got {raw!r}")
    return value


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR...). Without those variables this is a single-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda" and device.index is None:
            # one GPU per process: torchrun's LOCAL_RANK is this rank's GPU on its machine
            # (without it every rank of a machine would share GPU 0 and NCCL refuses)
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def stop_if_a_rank_is_lost(ctx: DistContext):
    """Re-raise a failed collective (gloo's "Connection reset by peer", NCCL's errors, a
    timeout) as a one-line :class:`RankLost`; anything else passes unchanged."""
    try:
        yield
    except RuntimeError as exc:
        text = str(exc)
        if not ctx.enabled or not (isinstance(exc, getattr(dist, "DistError", ())) or "gloo" in text
                                   or "NCCL" in text or "Timed out" in text):
            raise
        detail = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        detail = detail.split("] ", 1)[-1].split(". This is typically", 1)[0][:200]  # gloo's source path and advice off
        raise RankLost(f"rank {ctx.rank} of {ctx.world_size}: another rank stopped or stopped answering "
                       f"({detail}); this rank stops too — continue with the same launch on every node plus "
                       "--resume") from None


def all_reduce_gradients(params: list[nn.Parameter], ctx: DistContext) -> None:
    """Average ``.grad`` over ranks (a parameter without a gradient counts as zero)."""
    if not ctx.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(ctx.world_size)


def average_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Average floating buffers (BatchNorm running stats) so all ranks agree."""
    if not ctx.enabled:
        return
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(ctx.world_size)


def all_reduce_mean(value: float, ctx: DistContext) -> float:
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item() / ctx.world_size)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
