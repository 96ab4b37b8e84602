"""Counterfactual occlusion: hide a region (each image's mean intensity in its place)
and count the predictions that change. Attention alone is not reliance; a region the
decisions depend on changes them when hidden (Zech et al., PLoS Med 2018 used the
same idea for hospital tokens). Same-size control patches elsewhere give the base
rate of flips that hiding *any* patch causes."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from adapt.errors import UserError
from diagnostics.attribution.predictions import check_images, predict
from diagnostics.attribution.regions import Box, box_iou, box_mask, boxes_np, valid_box
from diagnostics.attribution.results import OcclusionResult


def _region_weights(region, n: int, h: int, w: int) -> Tensor:
    """[N, 1, H, W] float {0, 1} from a box, [N, 4] boxes, or an [H, W] / [N, H, W] mask."""
    r = region.detach().cpu().numpy() if isinstance(region, Tensor) else np.asarray(region)
    if r.ndim == 2 and r.shape == (h, w):
        k = np.broadcast_to(r > 0.5, (n, h, w))
    elif r.ndim == 3 and r.shape == (n, h, w):
        k = r > 0.5
    elif r.shape[-1] == 4 and r.ndim in (1, 2):
        b = boxes_np(r, n)
        k = np.stack([box_mask(h, w, bi) if valid_box(bi) else np.zeros((h, w), bool) for bi in b]) \
            if n else np.zeros((0, h, w), bool)
    else:
        raise UserError(f"occlusion region: expected a box, [N, 4] boxes or an [H, W]/[N, H, W] mask, "
                        f"got shape {r.shape}")
    return torch.from_numpy(np.ascontiguousarray(k, dtype=np.float32)).unsqueeze(1)


def occlude(images: Tensor, region, fill: str | float = "image_mean") -> Tensor:
    """Images with ``region`` replaced by ``fill``: "image_mean" (each image's own mean
    per channel — removes the content without adding an edge as bright as black or
    white would), "zeros", or a number."""
    images = check_images(images, "occlude")
    n, _, h, w = images.shape
    k = _region_weights(region, n, h, w).to(images.device)
    if fill == "image_mean":
        value = images.mean(dim=(2, 3), keepdim=True)
    elif fill == "zeros":
        value = torch.zeros(1, device=images.device)
    elif isinstance(fill, (int, float)) and not isinstance(fill, bool):
        value = torch.full((1,), float(fill), device=images.device)
    else:
        raise UserError(f"occlude: fill={fill!r} is not 'image_mean', 'zeros' or a number")
    return images * (1 - k) + value * k


def occlusion_flips(model: nn.Module, images: Tensor, region, fill: str | float = "image_mean",
                    labels=None, batch_size: int = 256,
                    predictions: Tensor | None = None) -> OcclusionResult:
    """Occlude ``region`` (box, [N, 4] boxes — rows of −1 leave that image untouched — or
    mask) in every image and count the predictions that change. ``predictions``: the
    un-occluded predictions, when already known (saves one pass)."""
    images = check_images(images, "occlusion_flips")
    before = predict(model, images, batch_size) if predictions is None else torch.as_tensor(predictions).long()
    after = predict(model, occlude(images, region, fill), batch_size)
    flipped = (before != after).nonzero().flatten().tolist()
    n = len(images)
    acc_b = acc_a = None
    if labels is not None:
        lab = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
        known = lab >= 0
        if known.any():
            acc_b = float((before[known] == lab[known]).float().mean())
            acc_a = float((after[known] == lab[known]).float().mean())
    return OcclusionResult(len(flipped) / n if n else float("nan"), n, flipped, acc_b, acc_a)



def control_boxes(h: int, w: int, size: tuple[int, int], avoid: list[Box], band: np.ndarray,
                   k: int, rng: np.random.Generator) -> list[Box]:
    """Up to k same-size boxes away from the candidates and the border band: the flips
    their occlusion causes are the base rate of hiding *any* patch of this size."""
    sh, sw = size
    out: list[Box] = []
    for _ in range(50 * k):
        if len(out) == k:
            break
        y0 = int(rng.integers(0, h - sh + 1))
        x0 = int(rng.integers(0, w - sw + 1))
        b = (x0, y0, x0 + sw, y0 + sh)
        if all(box_iou(b, a) == 0 for a in avoid) and not band[y0 : y0 + sh, x0 : x0 + sw].any():
            out.append(b)
    return out
