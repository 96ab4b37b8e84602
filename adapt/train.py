"""The one training loop. Every method plugs into it; none owns a loop.

Read :func:`fit` top to bottom: per epoch it fixes the epoch's randomness from the
seed (so a killed run resumes to the same weights), applies the transfer strategy,
and for every source batch (plus a target batch when the objective uses one):
restyles the source images (FDA / histogram matching), computes the objective's loss
plus penalties (EWC), checks it is finite, steps the optimiser and the schedule. At the
end of each epoch it scores the model (source validation accuracy, or a label-free
selector), writes ``last.pt`` atomically and ``best.pt`` when the score improved, and
stops early after ``patience`` epochs without improvement — rolling back to the best.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from adapt import distributed as dist_utils
from adapt.distributed import SINGLE, DistContext
from adapt.errors import UserError
from adapt.io import atomic_torch_save
from adapt.methods.base import FeatureStyle, ImageStyle, Objective, Penalty
from adapt.recipe import StrategyConfig, TrainConfig

#: a score function returns (score, logs); higher is better
ScoreFn = Callable[[nn.Module], "tuple[float, dict[str, float]]"]


@dataclass
class FitResult:
    """What :func:`fit` did. ``history`` has one dict of logs per epoch."""

    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: 'cuda' requested but no CUDA device is available (use auto or cpu)")
    return torch.device(name)


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at training progress p in [0, 1].

    cosine: (1 + cos(pi p)) / 2; dann: 1 / (1 + 10 p)^0.75 (Ganin et al. 2016);
    constant: 1.
    """
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    if schedule == "dann":
        return 1.0 / (1.0 + 10.0 * progress) ** 0.75
    return 1.0


def epoch_order(
    n: int,
    epoch: int,
    seed: int,
    ctx: DistContext = SINGLE,
    weights: np.ndarray | None = None,
) -> list[int]:
    """This rank's sample order for one epoch.

    The order depends only on (seed, epoch), so a resumed run sees the same batches.
    ``weights`` (per-sample, e.g. inverse class frequency) draws with replacement —
    the class-balanced sampler. With several ranks every rank takes an equal-length,
    disjoint shard of the same order.
    """
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    if weights is not None:
        order = rng.choice(n, size=n, replace=True, p=weights / weights.sum())
    else:
        order = rng.permutation(n)
    if ctx.enabled:
        per_rank = n // ctx.world_size
        order = order[ctx.rank * per_rank : (ctx.rank + 1) * per_rank]
    return order.tolist()


def _cycle(loader_factory: Callable[[int], DataLoader]) -> Iterator:
    """Endless iterator over a loader, re-shuffled each pass."""
    i = 0
    while True:
        for batch in loader_factory(i):
            yield batch
        i += 1


def _batches_per_epoch(n: int, batch_size: int, ctx: DistContext) -> int:
    per_rank = n // ctx.world_size if ctx.enabled else n
    return max(1, math.ceil(per_rank / batch_size))


def fit(
    model: nn.Module,
    objective: Objective,
    source_train: Dataset,
    *,
    cfg: TrainConfig,
    out_dir: str | Path,
    seed: int,
    score_fn: ScoreFn | None = None,
    target_train: Dataset | None = None,
    style: ImageStyle | None = None,
    feature_style: FeatureStyle | None = None,
    penalties: Sequence[Penalty] = (),
    strategy: StrategyConfig | None = None,
    sample_weights: np.ndarray | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    resume: bool = False,
    desc: str = "train",
    ctx: DistContext = SINGLE,
    progress: bool = True,
    num_workers: int = 0,
    freeze_bn: bool = False,
) -> FitResult:
    """Train ``model`` with ``objective``; return a :class:`FitResult`.

    ``freeze_bn`` keeps every BatchNorm layer in eval mode (running statistics fixed, no
    precise-BN pass): for fine-tuning on a handful of images, whose batches cannot
    estimate the statistics the source weights were trained with.
    ``model`` ends holding the best epoch's weights (by ``score_fn``, higher is better;
    without one, the last epoch). Checkpoints go to ``out_dir/last.pt`` (every epoch,
    with optimiser and schedule state, for ``resume``) and ``out_dir/best.pt``.
    """
    from adapt.models import apply_strategy, freeze_bn_stats, param_groups  # late: torchvision

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    device = next(model.parameters()).device
    epochs = cfg.epochs if epochs is None else epochs
    base_lr = cfg.lr if lr is None else lr
    extras = objective.modules()
    for m in extras.values():
        m.to(device)
    trainable = nn.ModuleDict({"model": model, **extras})

    groups = param_groups(
        model,
        lr=base_lr,
        backbone_lr_mult=strategy.backbone_lr_mult if strategy else 1.0,
        weight_decay=cfg.weight_decay,
        extra=extras or None,
    )
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=base_lr, momentum=cfg.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=base_lr)
    initial_lrs = [g["lr"] for g in optimizer.param_groups]

    steps_per_epoch = _batches_per_epoch(len(source_train), cfg.batch_size, ctx)
    total_steps = max(1, steps_per_epoch * epochs)
    amp = cfg.amp and device.type == "cuda"
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)

    state = {"epoch": -1, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": []}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.exists():
        ckpt = _load_training_checkpoint(last_path)
        trainable.load_state_dict(ckpt["trainable"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        if ctx.is_main and progress:
            tqdm.write(f"{desc}: resuming after epoch {state['epoch'] + 1} from {last_path}")
    elif ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (last_path, best_path):
            stale.unlink(missing_ok=True)

    finished = state["epoch"] + 1 >= epochs
    if finished or (cfg.patience is not None and state["bad_epochs"] >= cfg.patience):
        _restore_best(trainable, best_path, device)
        return _result(state, best_path, time.perf_counter() - t0, stopped=state["bad_epochs"] > 0)

    # A target batch is drawn whenever target data is given: DANN's domain loss, FDA's
    # target spectra and MixStyle's target statistics all need one.
    uses_target = target_train is not None
    stopped_early = False
    for epoch in range(state["epoch"] + 1, epochs):
        # The epoch's randomness depends only on (seed, epoch): resume is exact.
        torch.manual_seed(seed * 10_007 + epoch)
        gen = torch.Generator().manual_seed(seed * 10_007 + epoch + 1)
        if strategy is not None:
            apply_strategy(model, strategy.kind, epoch=epoch, top_k=strategy.top_k,
                           progressive_epochs=strategy.progressive_epochs)
        trainable.train()
        freeze_bn_stats(model)  # frozen blocks keep their BatchNorm running statistics
        if freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        if feature_style is not None:
            feature_style.attach(model)

        order = epoch_order(len(source_train), epoch, seed, ctx, sample_weights)
        loader = DataLoader(source_train, batch_size=cfg.batch_size, sampler=order,
                            num_workers=0 if ctx.enabled else num_workers, drop_last=False,
                            persistent_workers=False)
        target_iter = None
        if uses_target:
            def target_loader(pass_i: int, _epoch: int = epoch) -> DataLoader:
                t_order = epoch_order(len(target_train), _epoch * 1000 + pass_i, seed + 1, ctx)
                return DataLoader(target_train, batch_size=cfg.batch_size, sampler=t_order,
                                  num_workers=0, drop_last=False)
            target_iter = _cycle(target_loader)

        sums: dict[str, float] = {}
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                   disable=not (progress and ctx.is_main), dynamic_ncols=True)
        for step, (xs, ys) in enumerate(bar):
            p = (epoch * steps_per_epoch + step) / total_steps
            for g, lr0 in zip(optimizer.param_groups, initial_lrs):
                g["lr"] = lr0 * lr_factor(cfg.schedule, p)
            xs = xs.to(device, non_blocking=True)
            ys = torch.as_tensor(ys).to(device, non_blocking=True)
            xt = None
            if target_iter is not None:
                xt = next(target_iter)[0].to(device, non_blocking=True)
            if style is not None:
                xs = style(xs, xt, generator=gen)
            if device.type == "cuda":
                xs = xs.contiguous(memory_format=torch.channels_last)
                xt = xt.contiguous(memory_format=torch.channels_last) if xt is not None else None

            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                if feature_style is not None and xt is not None:
                    feature_style.observe_target(model, xt)  # arms MixStyle for this step
                loss, logs = objective.loss(model, xs, ys, xt, p)
                for penalty in penalties:
                    pen = penalty(model)
                    loss = loss + pen
                    logs[f"{penalty.name}_penalty"] = float(pen.detach())
            if not torch.isfinite(loss):
                where = f"{desc}: loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}"
                kept = f"; last good checkpoint kept at {last_path}" if last_path.exists() else ""
                raise TrainingDiverged(f"{where}{kept} (try a lower train.lr or method weight)")

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            params = [q for q in trainable.parameters() if q.requires_grad]
            dist_utils.all_reduce_gradients(params, ctx)
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()

            logs["loss"] = float(loss.detach())
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
        bar.close()
        if feature_style is not None:
            feature_style.detach()
        dist_utils.average_buffers(trainable, ctx)

        if cfg.precise_bn and not freeze_bn:
            _precise_bn(model, source_train, seed, device)
        n_steps = step + 1
        head_lr = next((g["lr"] for g in optimizer.param_groups if g.get("name") == "head"),
                       optimizer.param_groups[-1]["lr"])
        record: dict[str, Any] = {"epoch": epoch + 1, "lr": head_lr}
        record.update({k: dist_utils.all_reduce_mean(v / n_steps, ctx) for k, v in sums.items()})
        trainable.eval()
        if score_fn is not None:
            score, score_logs = score_fn(model)
            record.update(score_logs)
        else:
            score = float(epoch)  # no selector: the last epoch is the best
        record["score"] = score
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        state["history"].append(record)
        if ctx.is_main:
            if improved:
                atomic_torch_save(best_path, {"trainable": trainable.state_dict(), "epoch": epoch})
            atomic_torch_save(last_path, {
                "trainable": trainable.state_dict(),
                "optimizer": optimizer.state_dict(),
                "state": state,
            })
            if progress:
                shown = {k: v for k, v in record.items() if k in (
                    "loss", "train_acc", "class_loss", "domain_loss", "disc_acc", "val_accuracy",
                    "source_val_accuracy", "im", "snd", "score")}
                tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: " + ", ".join(
                    f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
                    + (" *" if improved else ""))
        dist_utils.barrier(ctx)
        if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
            stopped_early = True
            if ctx.is_main and progress:
                tqdm.write(f"{desc}: no improvement for {cfg.patience} epochs; "
                           f"stopping and rolling back to epoch {state['best_epoch'] + 1}")
            break

    _restore_best(trainable, best_path, device)
    return _result(state, best_path, time.perf_counter() - t0, stopped=stopped_early)


def _precise_bn(model: nn.Module, data: Dataset, seed: int, device: torch.device,
                max_images: int = 1024) -> None:
    """Re-estimate trainable BatchNorm layers' statistics on a fixed sample of the
    training data (the same images every epoch, so a resumed run matches)."""
    from adapt.methods.adabn import adabn, batchnorm_layers

    if not batchnorm_layers(model):
        return
    order = np.random.default_rng([seed, 0xB2]).permutation(len(data))[:max_images].tolist()
    loader = DataLoader(data, batch_size=256, sampler=order)
    adabn(model, loader, device, trainable_only=True)


def _load_training_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unreadable checkpoint is the user's file
        raise UserError(f"{path}: cannot resume from this checkpoint ({e.__class__.__name__})") from None


def _restore_best(trainable: nn.Module, best_path: Path, device: torch.device) -> None:
    """Roll back to the best epoch's weights (early stopping / selection)."""
    if best_path.exists():
        ckpt = torch.load(best_path, map_location=device, weights_only=True)
        trainable.load_state_dict(ckpt["trainable"])
    trainable.eval()


def _result(state: dict[str, Any], best_path: Path, seconds: float, stopped: bool) -> FitResult:
    return FitResult(
        best_epoch=state["best_epoch"] + 1,
        best_score=float(state["best_score"]),
        epochs_run=state["epoch"] + 1,
        stopped_early=stopped,
        history=state["history"],
        best_checkpoint=str(best_path) if best_path.exists() else None,
        seconds=seconds,
    )
