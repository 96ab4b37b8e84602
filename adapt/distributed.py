"""Multi-process data-parallel training with torch.distributed (gloo on CPU, NCCL on GPU).

``torchrun --nproc-per-node N -m domaingap.adapt_run RECIPE`` (or ``adapt-run RECIPE --nproc N``)
starts N ranks. Each rank reads its own shard of every epoch's batch order; after each
backward pass the gradients are averaged across ranks with ``all_reduce`` — exactly what
``DistributedDataParallel`` does — and BatchNorm buffers are averaged at the end of each
epoch, so every rank holds identical weights. The gradient all-reduce is explicit rather
than a ``DistributedDataParallel`` wrapper because methods call ``model.features`` and
``model.head`` separately (DANN, MixStyle), which DDP's forward hook would not see.
Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    MASTER_ADDR...). Without those variables this is a single-process run."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
