"""The model side of the attribution checks: image checks, the model's device, its
predicted classes (through :func:`adapt.evaluate.predict`, the one prediction loop),
and the frozen eval mode attribution runs in."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from adapt.errors import UserError
from adapt.evaluate import predict as predict_probs


def check_images(images: Tensor, where: str) -> Tensor:
    """``images`` as a float32 [N, C, H, W] tensor; ``where`` names the caller in the error."""
    images = torch.as_tensor(images)
    if images.ndim != 4:
        raise UserError(f"{where}: expected images [N, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise UserError(f"{where}: expected float images in [0, 1], got dtype {images.dtype}")
    return images.float()


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode with parameters that do not require grad, restored on exit.

    Attribution needs gradients w.r.t. the *input* only; freezing the parameters stops
    ``.grad`` from accumulating on the model (which a training loop could otherwise
    pick up) and saves the weight-gradient work in every backward pass.
    """
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def predict(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Predicted class ids [N] int64 of ``images`` [N, C, H, W] (eval mode, restored
    afterwards), ``batch_size`` images per forward pass on the model's device."""
    images = check_images(images, "predict")
    if len(images) == 0:
        return torch.zeros(0, dtype=torch.long)
    labels = torch.full((len(images),), -1, dtype=torch.long)  # unused: predict_probs wants pairs
    out = predict_probs(model, TensorDataset(images, labels), device_of(model), batch_size)
    return torch.from_numpy(out["probs"].argmax(1)).long()
