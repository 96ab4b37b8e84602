"""Run by tests/test_distributed.py under torchrun: train a tiny model data-parallel and
save this rank's final weights to OUT/rank<r>.pt."""

import sys
from pathlib import Path

import torch

from adapt import distributed
from adapt.data import DomainSpec, load_domain
from adapt.methods.source_only import SourceOnly
from adapt.models import build_model
from adapt.recipe import TrainConfig
from adapt.train import fit

out = Path(sys.argv[1])
torch.set_num_threads(1)
ctx = distributed.init_from_env(torch.device("cpu"))
ds = load_domain(DomainSpec(kind="phantom-cxr", site="A", n=128), image_size=32, seed=0)
torch.manual_seed(0)
model = build_model("small_cnn", 2, 1)
cfg = TrainConfig(epochs=2, batch_size=16, device="cpu", patience=None, lr=3e-3)
res = fit(model, SourceOnly(), ds, cfg=cfg, out_dir=out / "ckpt", seed=0, ctx=ctx, progress=False)
torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out / f"rank{ctx.rank}.pt")
(out / f"steps{ctx.rank}.txt").write_text(str(res.epochs_run))
distributed.shutdown()
