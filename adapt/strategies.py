"""Transfer strategies (which backbone blocks train, frozen BatchNorm) and the
optimiser's parameter groups (discriminative learning rates, no decay on norms/biases).

Progressive unfreezing follows Howard & Ruder (ULMFiT, ACL 2018): unfreeze from the top,
one group per stage.
"""

from __future__ import annotations

from torch import nn

from adapt.errors import UserError
from adapt.models import Classifier, unwrap_model

STRATEGIES: tuple[str, ...] = ("feature_extraction", "finetune", "progressive")


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def trainable_block_count(n_blocks: int, kind: str, epoch: int = 0, top_k: int | None = None,
                          progressive_epochs: int = 1) -> int:
    """How many backbone blocks (counted from the top) a strategy trains at ``epoch``.

    feature_extraction: 0. finetune: all, or ``min(top_k, n_blocks)``.
    progressive: ``min(epoch // progressive_epochs, n_blocks)`` — the head alone for the
    first ``progressive_epochs`` epochs, then one more block from the top per stage.
    """
    if kind == "feature_extraction":
        return 0
    if kind == "finetune":
        if top_k is None:
            return n_blocks
        if top_k < 0:
            raise UserError(f"top_k {top_k}: must be >= 0")
        return min(top_k, n_blocks)
    if kind == "progressive":
        if progressive_epochs < 1:
            raise UserError(f"progressive_epochs {progressive_epochs}: must be >= 1")
        if epoch < 0:
            raise UserError(f"epoch {epoch}: must be >= 0")
        return min(epoch // progressive_epochs, n_blocks)
    raise UserError(f"strategy '{kind}': unknown, choose one of {', '.join(STRATEGIES)}")


def apply_strategy(model: Classifier, kind: str, epoch: int = 0, top_k: int | None = None,
                   progressive_epochs: int = 1) -> None:
    """Set ``requires_grad`` for a fine-tuning strategy; the head always trains.

    * ``feature_extraction`` — backbone frozen;
    * ``finetune`` — everything, or only the top ``top_k`` blocks (+ head);
    * ``progressive`` — call at the start of every epoch: head only, then one more
      block from the top every ``progressive_epochs`` epochs (ULMFiT's gradual unfreezing).

    Frozen BatchNorm layers: this function only touches ``requires_grad``. Their running
    statistics would still move in train mode; the training loop calls
    :func:`freeze_bn_stats` after ``model.train()`` so frozen BN layers run in eval mode
    and keep the statistics they came with (as Keras does for frozen layers).
    """
    model = unwrap_model(model)
    blocks = model.blocks()
    n_train = trainable_block_count(len(blocks), kind, epoch, top_k, progressive_epochs)
    for i, block in enumerate(blocks):
        _set_trainable(block, i >= len(blocks) - n_train)
    _set_trainable(model.head, True)


def freeze_bn_stats(model: nn.Module) -> int:
    """Put every BatchNorm layer whose parameters are all frozen into eval mode.

    Call after ``model.train()``: a frozen BN layer then normalises with its stored
    running statistics and does not update them. Returns how many layers were switched.
    BN layers without affine parameters are left alone (nothing says they are frozen).
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
                switched += 1
    return switched


# --------------------------------------------------------------------------- optimiser groups


_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _decay_split(module: nn.Module, seen: set[int]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(params with weight decay, params without): biases and norm parameters get none.

    Parameters already in ``seen`` are skipped (shared parameters go in one group only).
    """
    decay, no_decay = [], []
    for sub in module.modules():
        for p in sub.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if isinstance(sub, _NORM_TYPES) or p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def param_groups(model: Classifier, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0,
                 extra: dict[str, nn.Module] | None = None) -> list[dict]:
    """Optimiser parameter groups with discriminative learning rates.

    Groups (empty ones omitted): ``backbone`` / ``backbone_no_decay`` at
    ``lr * backbone_lr_mult``; ``head`` / ``head_no_decay`` at ``lr``; for each
    ``extra[name]`` module (e.g. a domain discriminator) ``name`` / ``name_no_decay`` at
    ``lr``. ``*_no_decay`` holds biases and normalisation parameters, weight decay 0.

    All backbone parameters are included, frozen or not, so the groups stay the same
    while progressive unfreezing flips ``requires_grad``: a frozen parameter gets no
    gradient, and torch optimisers skip parameters whose ``grad`` is None (no momentum,
    no weight decay). Each dict also carries ``name`` and ``base_lr`` (for schedules).
    """
    model = unwrap_model(model)
    if lr <= 0 or backbone_lr_mult < 0 or weight_decay < 0:
        raise UserError(f"learning rate {lr} / backbone_lr_mult {backbone_lr_mult} / weight_decay "
                        f"{weight_decay}: must be positive / non-negative / non-negative")
    seen: set[int] = set()
    parts: list[tuple[str, nn.Module, float]] = [
        ("backbone", model.backbone, lr * backbone_lr_mult),
        ("head", model.head, lr),
    ]
    for name, module in (extra or {}).items():
        if name in ("backbone", "head"):
            raise UserError(f"extra module name '{name}': reserved, choose another")
        parts.append((name, module, lr))
    groups = []
    for name, module, group_lr in parts:
        decay, no_decay = _decay_split(module, seen)
        for group_name, params, wd in ((name, decay, weight_decay), (f"{name}_no_decay", no_decay, 0.0)):
            if params:
                groups.append({"name": group_name, "params": params, "lr": group_lr,
                               "base_lr": group_lr, "weight_decay": wd})
    return groups
