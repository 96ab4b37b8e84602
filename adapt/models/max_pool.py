"""2x2 max-pooling on the CPU from four strided corners, equal bit for bit to PyTorch's
pooling — values, gradients and double gradients — and faster than its NCHW kernel.

With a, b, c, d the four corners of each 2x2 window (``x[..., 0::2, 0::2]``,
``x[..., 0::2, 1::2]``, ``x[..., 1::2, 0::2]``, ``x[..., 1::2, 1::2]``):

    y = max(max(a, b), max(c, d))

A maximum rounds nothing, so y is the kernel's output exactly. The kernel's backward sends
the whole gradient to the *first* maximum of each window in row-major order (a later value
wins only if strictly greater); three comparisons made in the forward pass —

    b > a,   d > c,   max(c, d) > max(a, b)

— name that element, and the backward hands PyTorch's own pooling backward
(``max_pool2d_with_indices_backward``) the flat index it would have recorded,

    index = (2i) · W + 2j + (max(c,d) > max(a,b) ? W + [d > c] : [b > a]),

so the gradients are the kernel's, and a second derivative (the backward op is
differentiable) is too. A batch with a NaN in any window falls back to the kernel (its rule
there differs: the last NaN wins). On one thread the strided form is ~4x faster forward and
the whole forward + backward 1.2–1.9x (64 images, 16–64 channels; ``benchmarks/bench_maxpool.py``
times whole epochs): PyTorch's NCHW CPU kernel walks each window with scalar code, while each
of the few elementwise operations here runs vectorised. It also keeps three boolean maps (0.75 byte per input element) where the
kernel keeps int64 indices (2 bytes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _whole_windows(x: Tensor) -> Tensor:
    """``x`` without an odd last row/column (floor mode: PyTorch's pooling drops them)."""
    return x[..., :x.shape[-2] // 2 * 2, :x.shape[-1] // 2 * 2]


def _corners(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x = _whole_windows(x)
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def max_pool2x2_values(x: Tensor) -> Tensor:
    """``F.max_pool2d(x, 2)``'s values: [N, C, H, W] → [N, C, H//2, W//2], no gradient kept.

    Rows first — the maximum of each pair of rows reads whole rows (unit stride), then of each
    pair of columns — two passes instead of three over strided corners: 7.8 against 11.2 ms on
    a 256×16×64×64 batch at one thread (the same values: a maximum rounds nothing)."""
    x = _whole_windows(x)
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


class _FirstMaximumPool(torch.autograd.Function):
    """The strided maximum forward; the kernel's backward on the indices of each window's
    first maximum (module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        a, b, c, d = _corners(x)
        top, bottom = torch.maximum(a, b), torch.maximum(c, d)
        y = torch.maximum(top, bottom)
        if bool(torch.isnan(y).any()):  # the kernel's NaN rule differs (the last NaN wins): use it
            y, indices = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
            ctx.save_for_backward(x, indices)
            return y
        ctx.save_for_backward(x, b > a, d > c, bottom > top)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        if len(ctx.saved_tensors) == 2:
            x, indices = ctx.saved_tensors
        else:
            x, right_on_top, right_below, from_bottom = ctx.saved_tensors
            width = x.shape[-1]
            right = right_on_top.to(torch.int32)
            # offset within the window: from_bottom ? W + right_below : right_on_top
            offset = (right_below.to(torch.int32) + width - right).mul_(from_bottom).add_(right)
            h, w = grad.shape[-2:]
            corner = (torch.arange(0, 2 * h, 2, device=x.device) * width).view(-1, 1) \
                + torch.arange(0, 2 * w, 2, device=x.device)  # int64: the window's top-left element
            indices = offset + corner
        return torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                               indices)


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` computed from elementwise maxima on a CPU: the same values bit for
    bit (inference: scoring, AdaBN, feature extraction — :func:`max_pool2x2_values`, ~10x
    faster than PyTorch's NCHW kernel) and, when a gradient is wanted (training, Integrated
    Gradients), the same gradients as the kernel's (:class:`_FirstMaximumPool`). Off the CPU, while
    tracing or exporting, or on an input smaller than a window it is PyTorch's pooling."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() \
                or x.dim() != 4 or min(x.shape[-2:]) < 2:
            return super().forward(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _FirstMaximumPool.apply(x)
        return max_pool2x2_values(x)
