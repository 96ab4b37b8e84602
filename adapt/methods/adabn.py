"""AdaBN: re-estimate BatchNorm statistics on the target domain (Li et al., "Revisiting
Batch Normalization For Practical Domain Adaptation", ICLR-W 2017).

All weights stay as trained; only every BatchNorm layer's running mean/variance is
replaced by the target data's. No labels, no gradients.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from adapt.errors import UserError


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers that keep running statistics."""
    return [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _batches(data, batch_size: int) -> Iterable[Tensor]:
    """Yield image tensors from a tensor [N,C,H,W], a DataLoader of (x, y) / x, or a list of batches."""
    if isinstance(data, Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i : i + batch_size]
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


@torch.no_grad()
def adabn(model: nn.Module, target_loader, device: str | torch.device = "cpu", batch_size: int = 64,
          trainable_only: bool = False) -> int:
    """Replace every BatchNorm's running statistics by those of the target data.

    Running stats are reset and accumulated as a count-weighted cumulative average:
    before a batch of b images, after n already seen, momentum = b / (n + b), so the
    running mean is exactly the target mean over all images (with equal batch sizes this
    is PyTorch's ``momentum=None``); the running variance is the count-weighted mean of
    the batches' (unbiased) variances. Only BN layers are in train mode during the pass
    (dropout stays off); momenta and every module's train/eval flag are restored after.

    target_loader: a DataLoader yielding (images, labels) or images, an iterable of
    image batches, or one tensor [N, C, H, W] (split into ``batch_size`` chunks).
    trainable_only: leave BatchNorm layers whose parameters are frozen alone (their
    statistics belong to the frozen weights, e.g. in feature extraction).
    Returns the number of images seen.
    """
    layers = batchnorm_layers(model)
    if trainable_only:
        layers = [m for m in layers if any(p.requires_grad for p in m.parameters(recurse=False))
                  or not list(m.parameters(recurse=False))]
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    # BatchNorm1d after pooling sees one value per channel in a 1-image batch: skip those
    skip_single = any(isinstance(m, nn.BatchNorm1d) for m in layers)
    seen = 0
    try:
        model.eval()
        for m in layers:
            m.reset_running_stats()
            m.train()
        for x in _batches(target_loader, batch_size):
            b = len(x)
            if b == 0:
                continue
            if b == 1 and skip_single:
                continue
            for m in layers:
                m.momentum = b / (seen + b)
            model(x.to(device, non_blocking=True))
            seen += b
    finally:
        for m, mom in momenta.items():
            m.momentum = mom
        for m, mode in modes.items():
            m.train(mode)
    if seen == 0:
        raise UserError("adabn: the target data yielded no images (batches of 1 are skipped with BatchNorm1d)")
    return seen
