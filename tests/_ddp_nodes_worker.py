"""Run by tests/test_scaleout_torchrun.py, under torchrun (one process per "node") or in
the test itself as the single-process reference: train a tiny BatchNorm-free CNN and save
the final weights to OUT/rank<r>.pt.

BatchNorm is swapped for GroupNorm (per-image statistics): then the average of the ranks'
batch-mean gradients is exactly the gradient of one process on the union of their
batches, and the data-parallel run can be compared with a single process number for
number. ``replay_world=W`` makes the single process visit, at each step, the union of the
W ranks' batches of that step (batch size W×B): the global batches of the W-rank run."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from adapt import distributed
from adapt.data import DomainSpec, load_domain
from adapt.distributed import SINGLE, DistContext
from adapt.methods.source_only import SourceOnly
from adapt.models import build_model
from adapt.recipe import TrainConfig

BATCH = 8


def _group_norm(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.GroupNorm(4, child.num_features))
        else:
            _group_norm(child)
    return model


def _replayed_order(world: int):
    """adapt.batch_order.epoch_order of one process replaying ``world`` ranks' steps."""
    from adapt.batch_order import epoch_order

    def order(n, epoch, seed, ctx=SINGLE, weights=None):
        shards = [epoch_order(n, epoch, seed, DistContext(r, world), weights) for r in range(world)]
        return [i for k in range(0, len(shards[0]), BATCH) for shard in shards for i in shard[k:k + BATCH]]
    return order


def train(out: Path, ctx: DistContext = SINGLE, replay_world: int | None = None) -> dict[str, torch.Tensor]:
    import adapt.train as train_mod

    torch.set_num_threads(1)
    ds = load_domain(DomainSpec(kind="phantom-cxr", site="A", n=64), image_size=32, seed=0)
    torch.manual_seed(0)
    model = _group_norm(build_model("small_cnn", 2, 1))
    batch = BATCH * (replay_world or 1)
    cfg = TrainConfig(epochs=2, batch_size=batch, device="cpu", patience=None, lr=3e-3, precise_bn=False)
    real_order = train_mod.epoch_order
    if replay_world:
        train_mod.epoch_order = _replayed_order(replay_world)
    try:
        train_mod.fit(model, SourceOnly(), ds, cfg=cfg, out_dir=out / f"ckpt{ctx.rank}", seed=0, ctx=ctx,
                      progress=False)
    finally:
        train_mod.epoch_order = real_order
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(weights, out / f"rank{ctx.rank}.pt")
    return weights


if __name__ == "__main__":
    context = distributed.init_from_env(torch.device("cpu"))
    try:
        train(Path(sys.argv[1]), context)
    finally:
        distributed.shutdown()
