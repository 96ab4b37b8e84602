"""Probe the digits → textured-digits shift: why is a source model near chance on the target?

Trains the project's ``small_cnn`` on the source digits with the one training loop
(``adapt.train.fit``: AdamW, cosine schedule, precise BN, best source-val epoch) under
several input settings and prints target-test accuracy with the source BatchNorm
statistics and after AdaBN:

* ``gray``      — ``data.channels: 1``: the RGB target is reduced to luma;
* ``rgb``       — ``data.channels: 3``: the grey source replicated into three channels;
* ``rgb+std``   — 3 channels, every image standardised per channel (a probe-only input layer);
* ``rgb+aug``   — 3 channels, ``data.augment: [invert, colour]`` on the source (``+inv`` / ``+col``: one of them);
* ``rgb+std+aug``.

Run:  python benchmarks/digits_probe.py [--seed 0] [--epochs 15] [--variants rgb rgb+std]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adapt.data.augment import SourceAugment  # noqa: E402
from adapt.data.domain import DomainDataset  # noqa: E402
from adapt.data.real_images import ImageSet, make_digits_shift  # noqa: E402
from adapt.data.splits import stratified_split  # noqa: E402
from adapt.evaluate import evaluate  # noqa: E402
from adapt.methods.adabn import adabn  # noqa: E402
from adapt.models import build_model  # noqa: E402
from adapt.recipe import TrainConfig  # noqa: E402
from adapt.train import fit  # noqa: E402

CLASSES = [str(i) for i in range(10)]


class PerImageStandardize(nn.Module):
    """x → (x − mean_img) / (std_img + eps) per image and channel (probe stand-in)."""

    def forward(self, x: Tensor) -> Tensor:
        m = x.mean(dim=(2, 3), keepdim=True)
        s = x.std(dim=(2, 3), keepdim=True)
        return (x - m) / (s + 1e-3)


class _AugDataset(torch.utils.data.Dataset):
    """A dataset whose images pass through ``data.augment``'s transform (one seeded stream)."""

    def __init__(self, ds: DomainDataset, aug: SourceAugment, seed: int):
        self.ds, self.aug, self.g = ds, aug, torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return self.aug(x[None], self.g)[0], y


def _domain(part: ImageSet, name: str, channels: int) -> DomainDataset:
    x = part.images
    if channels == 1 and x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return DomainDataset(name=name, classes=[str(i) for i in range(10)], labels=part.labels,
                         ids=[f"{name}/{i}" for i in range(len(part))], channels=channels,
                         image_size=x.shape[-1], images=x.contiguous())


def source_model(variant: str, seed: int, epochs: int, out: Path, kind: str = "textured"):
    """Train the source model of ``variant``; return (model, datasets dict, seconds)."""
    shift = make_digits_shift(kind, seed=seed)
    channels = 1 if variant.startswith("gray") else 3
    src = _domain(shift.source, "source", channels)
    idx = stratified_split(src.labels, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=seed)
    data = {k: src.subset(idx[k]) for k in ("train", "val", "test")}
    data["target_train"] = _domain(shift.target_train, "target_train", channels)
    data["target_test"] = _domain(shift.target_test, "target_test", channels)
    torch.manual_seed(seed)
    model = build_model("small_cnn", 10, channels)
    if "std" in variant:
        model.normalize = PerImageStandardize()
    kinds = [k for k, on in (("invert", "aug" in variant or "inv" in variant),
                             ("colour", "aug" in variant or "col" in variant)) if on]
    train_data = _AugDataset(data["train"], SourceAugment(kinds), seed) if kinds else data["train"]
    data["train_aug"] = train_data
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=2e-3, patience=None, device="cpu", threads=1)

    def score(m: nn.Module) -> tuple[float, dict[str, float]]:
        acc = evaluate(m, data["val"], CLASSES, "cpu")["accuracy"]
        return acc, {"val_accuracy": acc}

    t0 = time.perf_counter()
    fit(model, _SourceOnly(), train_data, cfg=cfg, out_dir=out / f"src_{variant}", seed=seed, score_fn=score,
        progress=False)
    return model, data, time.perf_counter() - t0


def run_variant(variant: str, seed: int, epochs: int, out: Path, kind: str = "textured") -> dict[str, float]:
    model, data, seconds = source_model(variant, seed, epochs, out, kind)
    res = {"source_test": evaluate(model, data["test"], CLASSES, "cpu")["accuracy"],
           "target_test": evaluate(model, data["target_test"], CLASSES, "cpu")["accuracy"]}
    adabn(model, data["target_train"].images(), "cpu")
    res["target_test_adabn"] = evaluate(model, data["target_test"], CLASSES, "cpu")["accuracy"]
    res["seconds"] = seconds
    return res


class JointDANN:
    """DANN with one joint forward of cat(xs, xt) (pytorch-adapt / TLlib BatchNorm convention)."""

    def __init__(self, model: nn.Module, weight: float):
        from adapt.methods.dann import DANN

        self.inner = DANN.for_model(model, domain_weight=weight)
        self.name, self.uses_target = "dann_joint", True

    def modules(self):
        return self.inner.modules()

    def loss(self, model, xs, ys, xt, progress):
        import torch.nn.functional as F

        from adapt.methods.dann import grad_reverse

        lam = self.inner.lambda_at(progress)
        f = model.features(torch.cat([xs, xt]))
        logits = model.head(f[: len(xs)])
        cls = F.cross_entropy(logits, ys)
        d = self.inner.discriminator(grad_reverse(f, lam))
        dom = torch.cat([torch.zeros(len(xs)), torch.ones(len(xt))]).to(d.device)
        ls = F.binary_cross_entropy_with_logits(d[: len(xs)], dom[: len(xs)])
        lt = F.binary_cross_entropy_with_logits(d[len(xs):], dom[len(xs):])
        return cls + ls + lt, {"class_loss": cls.item(), "domain_loss": (ls + lt).item()}


def dann_study(variant: str, seed: int, src_epochs: int, epochs: int, weight: float, out: Path,
               kind: str = "textured") -> None:
    """DANN from the same source model under four BatchNorm settings; IM pick and oracle.

    source_bn: separate forwards, target scored with the source statistics precise BN
    re-estimates (the old default); per_domain: separate forwards, target scored with
    target statistics (AdaBN); joint: one forward of cat(xs, xt), PyTorch's running
    averages of the mixed batches (pytorch-adapt / TLlib); joint_exact: the same training,
    statistics re-estimated exactly on an equal mix of source and target images."""
    import copy

    from adapt.methods.dann import DANN
    from adapt.selection import label_free_scores
    from adapt.evaluate import predict

    source, data, _ = source_model(variant, seed, src_epochs, out, kind)
    tt, te = data["target_train"], data["target_test"]

    def deployed(m: nn.Module, mode: str) -> nn.Module:
        m = copy.deepcopy(m)
        if mode == "per_domain":
            adabn(m, tt.images(), "cpu")
        elif mode == "joint_exact":
            n = min(len(tt), len(data["train"]))
            adabn(m, torch.cat([data["train"].images()[:n], tt.images()[:n]]), "cpu")
        return m

    rows = []
    for mode in ("source_bn", "per_domain", "joint", "joint_exact"):
        model = copy.deepcopy(source)
        obj = JointDANN(model, weight) if mode.startswith("joint") else DANN.for_model(model, domain_weight=weight)
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=1e-3, patience=None, device="cpu", threads=1,
                          schedule="dann", precise_bn=not mode.startswith("joint"))
        hist = []

        def score(m: nn.Module, _mode=mode, _hist=hist) -> tuple[float, dict[str, float]]:
            d = deployed(m, _mode)
            im = label_free_scores(predict(d, tt, "cpu")["probs"])["im"]
            acc = evaluate(d, te, CLASSES, "cpu")["accuracy"]
            _hist.append((im, acc))
            return im, {"im": im}

        t0 = time.perf_counter()
        fit(model, obj, data["train_aug"], cfg=cfg, out_dir=out / f"dann_{mode}", seed=seed, score_fn=score,
            target_train=tt, progress=False)
        pick = max(range(len(hist)), key=lambda i: hist[i][0])
        on_source = deployed(model, mode)
        if mode == "per_domain":  # the source is deployed with source statistics
            on_source = copy.deepcopy(model)
            adabn(on_source, data["train"].images(), "cpu")
        src_acc = evaluate(on_source, data["test"], CLASSES, "cpu")["accuracy"]
        rows.append((mode, hist[pick][1], max(a for _, a in hist), src_acc, pick + 1, time.perf_counter() - t0))
        print(f"| {kind} {variant} w={weight} | {mode} | {100 * rows[-1][1]:.1f} | {100 * rows[-1][2]:.1f} | "
              f"{100 * src_acc:.1f} | {pick + 1} | " + " ".join(f"{100 * a:.0f}" for _, a in hist)
              + f" | {rows[-1][5]:.0f} |", flush=True)


def _SourceOnly():
    from adapt.methods.source_only import SourceOnly

    return SourceOnly(0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--variants", nargs="+", default=["gray", "rgb", "rgb+std", "rgb+aug", "rgb+std+aug"])
    ap.add_argument("--shift", default="textured", choices=["textured", "scanner"])
    ap.add_argument("--dann", action="store_true", help="DANN under four BatchNorm settings instead")
    ap.add_argument("--dann-epochs", type=int, default=10)
    ap.add_argument("--weight", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.dann:
        print("| shift, input | BN convention | target (IM pick) | target (oracle) | source | epoch | per epoch | s |")
        print("| --- | --- | ---: | ---: | ---: | ---: | --- | ---: |")
        with tempfile.TemporaryDirectory() as tmp:
            for v in args.variants:
                dann_study(v, args.seed, args.epochs, args.dann_epochs, args.weight, Path(tmp), args.shift)
        return 0
    print(f"seed {args.seed}, {args.epochs} source epochs; accuracy %")
    print("| input | source test | target test | target test, AdaBN | s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        for v in args.variants:
            r = run_variant(v, args.seed, args.epochs, Path(tmp), args.shift)
            print(f"| {v} | {100 * r['source_test']:.1f} | {100 * r['target_test']:.1f} | "
                  f"{100 * r['target_test_adabn']:.1f} | {r['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
