"""The one training loop. Every method plugs into it; none owns a loop.

Read :func:`fit` top to bottom, like torchvision's ``references/classification/train.py``:

1. :func:`_setup` — optimiser groups, schedule bookkeeping, device placement;
2. :func:`_resume_or_start` — the loop state, from ``last.pt`` when resuming;
3. per epoch: :func:`_seed_epoch` fixes the epoch's randomness from the seed (so a killed
   run resumes to the same weights); :func:`train_one_epoch` applies the transfer
   strategy and, for every source batch (plus a target batch when a component declares
   ``uses_target``), restyles the source images (FDA / histogram matching), computes the
   objective's loss plus penalties (EWC), checks it is finite, steps the optimiser and the
   schedule; :func:`_score_epoch` scores the model (source validation accuracy, or a
   label-free selector); :func:`_select_and_checkpoint` writes ``last.pt`` atomically and
   ``best.pt`` when the score improved; after ``patience`` epochs without improvement
   the loop stops early;
4. :func:`_restore_best` rolls back to the best epoch.
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

from adapt import distributed as dist_utils
from adapt.batch_order import batches_per_epoch, cycle, epoch_order
from adapt.distributed import SINGLE, DistContext
from adapt.errors import UserError, exception_line
from adapt.fingerprint import check_fingerprint
from adapt.io import atomic_torch_save, torch_load
from adapt.methods.adabn import adabn, batchnorm_layers
from adapt.methods.base import EpochStart, FeatureStyle, ImageStyle, MethodParts, Objective, Penalty
from adapt.progress import progress_bar, reporter
from adapt.recipe import StrategyConfig, TrainConfig
from adapt.strategies import apply_strategy, freeze_bn_stats, param_groups

#: a score function returns (score, logs); higher is better; a score of None means no
#: selection (the last epoch is the best, as without a score function)
ScoreFn = Callable[[nn.Module], "tuple[float | None, dict[str, float]]"]


@dataclass
class FitResult:
    """What :func:`fit` did. ``history`` has one dict of logs per epoch."""

    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    best_checkpoint: str | None = None
    #: training time, the parts before a resume included
    seconds: float = 0.0
    #: of which spent before this process resumed the run
    earlier_seconds: float = 0.0
    guard: dict[str, Any] | None = None  # adapt.guard: its reference and trip, if any

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at training progress p in [0, 1].

    cosine: (1 + cos(pi p)) / 2; dann: mu_p / mu_0 = 1 / (1 + 10 p)^0.75 (Ganin et al.
    2016, the schedule DANN trains with); constant: 1. ``progress`` is clipped to [0, 1].
    """
    p = min(max(float(progress), 0.0), 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "dann":
        return 1.0 / (1.0 + 10.0 * p) ** 0.75
    return 1.0


@dataclass
class _Loop:
    """What stays fixed while :func:`fit` runs."""

    model: nn.Module
    trainable: nn.ModuleDict  # the model plus the method's extra modules (checkpointed together)
    optimizer: torch.optim.Optimizer
    initial_lrs: list[float]
    device: torch.device
    amp: bool
    schedule: str
    steps_per_epoch: int
    total_steps: int
    epochs: int
    last_path: Path
    best_path: Path
    cfg: TrainConfig
    strategy: StrategyConfig | None
    ctx: DistContext
    seed: int
    num_workers: int
    desc: str  # names the run in progress output and errors
    show_bar: bool
    #: the recipe fields these weights depend on (adapt.fingerprint), stored in every checkpoint
    recipe_fingerprint: dict[str, Any] | None = None
    t0: float = 0.0
    styled: torch.Tensor | None = None  # the training images restyled once (_restyled_once)


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
    recipe_fingerprint: dict[str, Any] | None = None,
    augment: Callable[..., torch.Tensor] | None = None,
    fairness: Any = None, guard: Any = None,
) -> FitResult:
    """Train ``model`` with ``objective``; return a :class:`FitResult`.

    ``augment`` (``data.augment``, e.g. :class:`adapt.data.augment.SourceAugment`)
    transforms every labelled batch, drawing on the epoch's seeded generator, before any
    style transfer; precise BN and scoring see the images unaugmented.
    ``model`` ends holding the best epoch's weights (by ``score_fn``, higher is better;
    without one, the last epoch). Checkpoints go to ``out_dir/last.pt`` (every epoch,
    with optimiser and schedule state, for ``resume``) and ``out_dir/best.pt``.
    ``target_train`` supplies one unlabelled batch per step when the objective, the
    style or the feature style declares ``uses_target`` (and must be given then).
    ``recipe_fingerprint`` (see :mod:`adapt.fingerprint`) is stored in every checkpoint;
    resuming from a ``last.pt`` with another one is a UserError naming the changed keys.
    """
    t0 = time.perf_counter()
    parts = MethodParts(objective, style, feature_style, penalties, augment=augment, fairness=fairness)
    if parts.uses_target() and target_train is None:
        raise ValueError(f"{desc}: a method part uses target batches but no target_train was given")
    say = reporter(progress and ctx.is_main)
    loop = _setup(model, objective, len(source_train), cfg, strategy, ctx, Path(out_dir),
                  epochs=cfg.epochs if epochs is None else epochs, lr=cfg.lr if lr is None else lr,
                  seed=seed, num_workers=num_workers, desc=desc, show_bar=progress and ctx.is_main)
    loop.recipe_fingerprint, loop.t0 = recipe_fingerprint, t0
    state = _resume_or_start(loop, resume, say)
    for part in (p for p in (fairness, guard) if p is not None):  # their state is carried in last.pt
        part.start(state, loop.trainable, model, ctx.is_main)
    earlier = float(state.get("seconds", 0.0))

    if state["epoch"] + 1 < loop.epochs and not state.get("stopped_early", _out_of_patience(state, cfg)):
        for epoch in range(state["epoch"] + 1, loop.epochs):
            generator = _seed_epoch(seed, epoch)
            logs = train_one_epoch(loop, parts, source_train, target_train if parts.uses_target() else None,
                                   epoch=epoch, generator=generator, sample_weights=sample_weights)
            if cfg.precise_bn:
                _precise_bn(model, source_train, seed, loop.device)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": _head_lr(loop.optimizer), **logs}
            score = _score_epoch(loop, score_fn, epoch, record)
            if guard is not None:  # adapt.guard: may trip (rollback or stop)
                score = guard.after_epoch(loop.trainable, model, epoch, state, record, score, ctx.is_main, desc, say)
            state["fairness"] = fairness.state_dict() if fairness is not None else None
            improved = _select_and_checkpoint(loop, state, epoch, score, record)
            say(_epoch_line(desc, epoch, loop.epochs, record, improved))
            dist_utils.barrier(ctx)
            if state["stopped_early"]:
                if not (state.get("guard") or {}).get("tripped"):  # the guard has said why
                    say(f"{desc}: no improvement for {cfg.patience} epochs; "
                        f"stopping and rolling back to epoch {state['best_epoch'] + 1}")
                break

    _restore_best(loop.trainable, loop.best_path, loop.device)
    return _result(state, loop.best_path, earlier + time.perf_counter() - t0, earlier)


def _setup(model: nn.Module, objective: Objective, n_train: int, cfg: TrainConfig,
           strategy: StrategyConfig | None, ctx: DistContext, out_dir: Path, *, epochs: int,
           lr: float, seed: int, num_workers: int, desc: str, show_bar: bool) -> _Loop:
    """Optimiser (discriminative parameter groups), schedule bookkeeping, devices."""
    device = next(model.parameters()).device
    extras = objective.modules()
    for m in extras.values():
        m.to(device)
    groups = param_groups(model, lr=lr, backbone_lr_mult=strategy.backbone_lr_mult if strategy else 1.0,
                          weight_decay=cfg.weight_decay, extra=extras or None)
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=lr)
    steps_per_epoch = batches_per_epoch(n_train, cfg.batch_size, ctx)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return _Loop(
        model=model, trainable=nn.ModuleDict({"model": model, **extras}), optimizer=optimizer,
        initial_lrs=[g["lr"] for g in optimizer.param_groups], device=device,
        amp=cfg.amp and device.type == "cuda", schedule=cfg.schedule, steps_per_epoch=steps_per_epoch,
        total_steps=max(1, steps_per_epoch * epochs), epochs=epochs,
        last_path=out_dir / "last.pt", best_path=out_dir / "best.pt", cfg=cfg, strategy=strategy,
        ctx=ctx, seed=seed, num_workers=num_workers, desc=desc, show_bar=show_bar,
    )


def _resume_or_start(loop: _Loop, resume: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """The loop state: from ``last.pt`` (weights, optimiser, history) when resuming,
    else fresh — and then stale checkpoints of an earlier run are removed."""
    if resume and loop.last_path.exists():
        ckpt = _load_training_checkpoint(loop.last_path, ("trainable", "optimizer", "state"))
        if loop.recipe_fingerprint is not None:
            check_fingerprint(loop.last_path, ckpt.get("recipe_fingerprint"), loop.recipe_fingerprint["fields"])
        try:
            loop.trainable.load_state_dict(ckpt["trainable"])
            loop.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{loop.last_path}: does not fit this run's model or optimiser "
                            f"({exception_line(e)[:200]})") from None
        state = ckpt["state"]
        say(f"{loop.desc}: resuming after epoch {state['epoch'] + 1} from {loop.last_path}")
        return state
    if loop.ctx.is_main:
        loop.last_path.parent.mkdir(parents=True, exist_ok=True)
        for stale in (loop.last_path, loop.best_path):
            stale.unlink(missing_ok=True)
    return {"epoch": -1, "best_score": -math.inf, "best_epoch": -1, "bad_epochs": 0, "history": [],
            "seconds": 0.0, "stopped_early": False}


def _out_of_patience(state: dict[str, Any], cfg: TrainConfig) -> bool:
    return cfg.patience is not None and state["bad_epochs"] >= cfg.patience


def _seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Fix the epoch's randomness from (seed, epoch) alone, so resume is exact; returns
    the generator the image style draws from."""
    torch.manual_seed(seed * 10_007 + epoch)
    return torch.Generator().manual_seed(seed * 10_007 + epoch + 1)


def train_one_epoch(
    loop: _Loop,
    parts: MethodParts,
    source_train: Dataset,
    target_train: Dataset | None,
    *,
    epoch: int,
    generator: torch.Generator,
    sample_weights: np.ndarray | None = None,
) -> dict[str, float]:
    """One pass over this rank's share of ``source_train``; returns the mean of every
    step's logs (averaged over ranks), after the logs of the objective's ``start_epoch``
    when it has one (:class:`adapt.methods.base.EpochStart`). A target batch is drawn
    for every source batch when ``target_train`` is given."""
    model, device, cfg, strategy, ctx = loop.model, loop.device, loop.cfg, loop.strategy, loop.ctx
    if strategy is not None:
        apply_strategy(model, strategy.kind, epoch=epoch, top_k=strategy.top_k,
                       progressive_epochs=strategy.progressive_epochs)
    # SHOT's pseudo-labels / TENT's freezing: after the strategy, before the batches
    epoch_logs = parts.objective.start_epoch(model, epoch) if isinstance(parts.objective, EpochStart) else {}
    loop.trainable.train()
    freeze_bn_stats(model)  # frozen blocks keep their BatchNorm running statistics
    if parts.feature_style is not None:
        parts.feature_style.attach(model)

    order = epoch_order(len(source_train), epoch, loop.seed, ctx, sample_weights)
    loader = DataLoader(source_train, batch_size=cfg.batch_size, sampler=order,
                        num_workers=0 if ctx.enabled else loop.num_workers, drop_last=False,
                        persistent_workers=False)
    target_iter = None if target_train is None else _target_batches(target_train, epoch, loop.seed, cfg, ctx)

    styled = _restyled_once(loop, parts, source_train)
    sums: dict[str, float] = {}
    bar = progress_bar(loader, enabled=loop.show_bar, desc=f"{loop.desc} {epoch + 1}/{loop.epochs}", leave=False,
                       dynamic_ncols=True)
    for step, (xs, ys) in enumerate(bar):
        if parts.fairness is not None:
            parts.fairness.set_batch(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])
        p = (epoch * loop.steps_per_epoch + step) / loop.total_steps
        for g, lr0 in zip(loop.optimizer.param_groups, loop.initial_lrs):
            g["lr"] = lr0 * lr_factor(loop.schedule, p)
        xs = xs.to(device, non_blocking=True)
        ys = torch.as_tensor(ys).to(device, non_blocking=True)
        xt = None if target_iter is None else next(target_iter)[0].to(device, non_blocking=True)
        if styled is not None:  # the batch's images, restyled when the run began
            xs = styled[torch.as_tensor(order[step * cfg.batch_size:(step + 1) * cfg.batch_size])]
        loss, logs = _step_loss(loop, parts, xs, ys, xt, p, generator, restyled=styled is not None)
        if not torch.isfinite(loss):
            where = f"{loop.desc}: loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}"
            kept = f"; last good checkpoint kept at {loop.last_path}" if loop.last_path.exists() else ""
            raise TrainingDiverged(f"{where}{kept} (try a lower train.lr or method weight)")
        _optimizer_step(loop, loss)

        logs["loss"] = float(loss.detach())
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{logs['loss']:.3f}")
    bar.close()
    if parts.feature_style is not None:
        parts.feature_style.detach()
    dist_utils.average_buffers(loop.trainable, ctx)
    n_steps = step + 1
    return {**epoch_logs, **{k: dist_utils.all_reduce_mean(v / n_steps, ctx) for k, v in sums.items()}}


def _target_batches(target_train: Dataset, epoch: int, seed: int, cfg: TrainConfig,
                    ctx: DistContext) -> Iterator:
    """Endless unlabelled target batches for one epoch, re-shuffled each pass (seeded)."""
    def target_loader(pass_i: int) -> DataLoader:
        t_order = epoch_order(len(target_train), epoch * 1000 + pass_i, seed + 1, ctx)
        return DataLoader(target_train, batch_size=cfg.batch_size, sampler=t_order,
                          num_workers=0, drop_last=False)
    return cycle(target_loader)


def _restyled_once(loop: _Loop, parts: MethodParts, data: Dataset, cap_mb: int = 512) -> torch.Tensor | None:
    """Every training image restyled once per run (the same rows as restyling each batch:
    tests/test_exact_fast_paths.py) when the style maps each image on its own (``per_image``),
    nothing changes the images before it (no augmentation) and they fit in ``cap_mb``; else None."""
    if parts.style is None or parts.augment is not None or not getattr(parts.style, "per_image", False) \
            or len(data) == 0 or len(data) * data[0][0].numel() * 4 > cap_mb * 2**20:
        return None
    if loop.styled is None:
        images = torch.stack([data[i][0] for i in range(len(data))]).to(loop.device)  # restyled where the step would
        loop.styled = torch.cat([parts.style(images[i:i + loop.cfg.batch_size], None)
                                 for i in range(0, len(images), loop.cfg.batch_size)])
    return loop.styled


def _step_loss(loop: _Loop, parts: MethodParts, xs: torch.Tensor, ys: torch.Tensor,
               xt: torch.Tensor | None, p: float, generator: torch.Generator, restyled: bool = False
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """One step's loss: augment and restyle the source batch (unless ``restyled``), objective, penalties."""
    if parts.augment is not None:
        xs = parts.augment(xs, generator=generator)
    if parts.style is not None and not restyled:
        xs = parts.style(xs, xt, generator=generator)
    if loop.device.type == "cuda":
        xs = xs.contiguous(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last) if xt is not None else None
    with torch.autocast(device_type=loop.device.type, dtype=torch.bfloat16, enabled=loop.amp):
        if parts.feature_style is not None and parts.feature_style.uses_target:
            parts.feature_style.observe_target(loop.model, xt)  # arms MixStyle for this step
        loss, logs = parts.objective.loss(loop.model, xs, ys, xt, p)
        for penalty in parts.penalties:
            pen = penalty(loop.model)
            loss = loss + pen
            logs[f"{penalty.name}_penalty"] = float(pen.detach())
    return loss, logs


def _optimizer_step(loop: _Loop, loss: torch.Tensor) -> None:
    """Backward, gradients averaged over ranks, optional clipping, one optimiser step."""
    loop.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [q for q in loop.trainable.parameters() if q.requires_grad]
    dist_utils.all_reduce_gradients(params, loop.ctx)
    if loop.cfg.max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, loop.cfg.max_grad_norm)
    loop.optimizer.step()


def _head_lr(optimizer: torch.optim.Optimizer) -> float:
    return next((g["lr"] for g in optimizer.param_groups if g.get("name") == "head"),
                optimizer.param_groups[-1]["lr"])


def _score_epoch(loop: _Loop, score_fn: ScoreFn | None, epoch: int, record: dict[str, Any]) -> float:
    """Score the model in eval mode (higher is better); its logs go into ``record``.
    Without a score function the last epoch is the best."""
    loop.trainable.eval()
    score = None
    if score_fn is not None:
        score, score_logs = score_fn(loop.model)
        record.update(score_logs)
    if score is None:  # the epoch number: a resumed run counts on where it stopped
        score = float(epoch)
    record["score"] = score
    return score


def _select_and_checkpoint(loop: _Loop, state: dict[str, Any], epoch: int, score: float,
                           record: dict[str, Any]) -> bool:
    """Update the best epoch and patience count; write ``best.pt`` when the score improved
    and ``last.pt`` (weights, optimiser, state) every epoch. Returns whether it improved."""
    improved = score > state["best_score"]
    if improved:
        state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["epoch"] = epoch
    state["history"].append(record)
    # time and the early stop are part of the state, so that a resumed run reports them
    state["seconds"] = float(state.get("seconds", 0.0)) + time.perf_counter() - loop.t0
    loop.t0 = time.perf_counter()
    state["stopped_early"] = (_out_of_patience(state, loop.cfg) or bool((state.get("guard") or {}).get("tripped"))
                              ) and epoch + 1 < loop.epochs
    if loop.ctx.is_main:
        if improved:
            atomic_torch_save(loop.best_path, {"trainable": loop.trainable.state_dict(), "epoch": epoch,
                                               "recipe_fingerprint": loop.recipe_fingerprint})
        atomic_torch_save(loop.last_path, {
            "trainable": loop.trainable.state_dict(),
            "optimizer": loop.optimizer.state_dict(),
            "state": state,
            "recipe_fingerprint": loop.recipe_fingerprint,
        })
    return improved


#: the per-epoch line's fields, in record order
_SHOWN = ("loss", "train_acc", "class_loss", "domain_loss", "disc_acc", "val_accuracy",
          "source_val_accuracy", "im", "snd", "score")


def _epoch_line(desc: str, epoch: int, epochs: int, record: dict[str, Any], improved: bool) -> str:
    shown = {k: v for k, v in record.items() if k in _SHOWN}
    return (f"{desc} epoch {epoch + 1}/{epochs}: "
            + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            + (" *" if improved else ""))


#: precise BN re-estimates the statistics on at most this many training images
PRECISE_BN_IMAGES = 1024


def precise_bn_covers(model: nn.Module, data: Dataset) -> bool:
    """Whether the last precise-BN pass over ``data`` left *every* BatchNorm layer of
    ``model`` holding the pooled statistics of all of ``data`` (no sample drawn, no layer
    frozen out): then re-estimating them on ``data`` would compute them again, bit for bit
    (same images in the same batches as :func:`domaingap.runs.adabn_on`)."""
    return len(data) <= PRECISE_BN_IMAGES and \
        len(batchnorm_layers(model, trainable_only=True)) == len(batchnorm_layers(model))


def _precise_bn(model: nn.Module, data: Dataset, seed: int, device: torch.device,
                max_images: int = PRECISE_BN_IMAGES) -> None:
    """Re-estimate trainable BatchNorm layers' statistics on a fixed sample of the
    training data (the same images every epoch, so a resumed run matches): the exact
    pooled statistics of that sample, whatever its order (:func:`adapt.methods.adabn.adabn`)."""
    if not batchnorm_layers(model):
        return
    # the whole set in its own order when it fits (the statistics are order-free, and then
    # bit-identical to AdaBN's on the same set, which the epoch's scoring reuses: see
    # precise_bn_covers); a seeded sample otherwise
    order = (list(range(len(data))) if len(data) <= max_images
             else np.random.default_rng([seed, 0xB2]).permutation(len(data))[:max_images].tolist())
    loader = DataLoader(data, batch_size=256, sampler=order)
    adabn(model, loader, device, trainable_only=True)


def _load_training_checkpoint(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """``last.pt`` / ``best.pt`` with the given entries, or a one-line UserError."""
    ckpt = torch_load(path, "checkpoint to resume from")
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in keys):
        raise UserError(f"{path}: not a readable checkpoint to resume from (no {', '.join(keys)})")
    return ckpt


def _restore_best(trainable: nn.Module, best_path: Path, device: torch.device) -> None:
    """Roll back to the best epoch's weights (early stopping / selection)."""
    if best_path.exists():
        ckpt = _load_training_checkpoint(best_path, ("trainable",))
        try:
            trainable.load_state_dict(ckpt["trainable"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{best_path}: does not fit this run's model ({exception_line(e)[:200]})") from None
        trainable.to(device)
    trainable.eval()


def _result(state: dict[str, Any], best_path: Path, seconds: float, earlier: float) -> FitResult:
    return FitResult(
        best_epoch=state["best_epoch"] + 1,
        best_score=float(state["best_score"]),
        epochs_run=state["epoch"] + 1,
        stopped_early=bool(state.get("stopped_early", False)),
        history=state["history"],
        # the file name only: the stage folder may be a staging folder renamed when the run ends
        best_checkpoint=best_path.name if best_path.exists() else None,
        seconds=seconds,
        earlier_seconds=earlier,
        guard=state.get("guard"),
    )
