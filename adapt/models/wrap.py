"""A model built elsewhere, split into features and head, as a :class:`Classifier`.

Every method, the audit and the drift monitor work on a :class:`Classifier`: images in
[0, 1] -> ``normalize`` -> ``backbone`` (-> ``[B, D]`` features) -> ``head`` (one
``nn.Linear``). A user's own ``nn.Module`` becomes one by naming its final linear
layer: :func:`wrap_model` takes that layer out as the head and keeps the rest, with
the layer replaced by ``nn.Identity``, as the backbone (a torchvision ResNet:
``head="fc"``; a VGG/EfficientNet: ``head="classifier.1"``-style dotted paths). The
backbone must return ``[B, D]`` (or ``[B, D, 1, 1]``) when the head is removed, which
holds for every model whose last step is ``head(flatten(pool(x)))``. The wrapped model
shares the module's parameters (no copy). Save it with ``torch.save(model.state_dict(), ...)``
and rebuild it the same way: :func:`~adapt.models.load_checkpoint` rebuilds only the
built-in architectures (it refuses a wrapped one with a one-line error naming the arch).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adapt.errors import UserError
from adapt.models.modules import Classifier

__all__ = ["ModuleBackbone", "wrap_model"]


class ModuleBackbone(nn.Module):
    """A whole module as one stage: ``flatten(stages(x), 1)``.

    ``blocks()`` is that one stage, so top-k fine-tuning and progressive unfreezing see
    a single block; AdaBN, DANN, CDAN, MCC, CORAL, DAN, SHOT and TENT need no more.
    """

    def __init__(self, body: nn.Module):
        super().__init__()
        self.stages = nn.Sequential(body)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.stages(x), 1)

    def blocks(self) -> list[nn.Module]:
        return list(self.stages)


def _get(module: nn.Module, path: str) -> nn.Module:
    node = module
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() and isinstance(node, (nn.Sequential, nn.ModuleList)) \
            else getattr(node, part, None)
        if node is None:
            raise UserError(f"head: {type(module).__name__} has no submodule {path!r}")
    return node


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = _get(module, parent_path) if parent_path else module
    if name.isdigit() and isinstance(parent, (nn.Sequential, nn.ModuleList)):
        parent[int(name)] = value
    else:
        setattr(parent, name, value)


def wrap_model(
    module: nn.Module,
    *,
    head: str,
    in_channels: int,
    mean: list[float] | tuple[float, ...] | None = None,
    std: list[float] | tuple[float, ...] | None = None,
    arch: str | None = None,
) -> Classifier:
    """``module`` as a :class:`Classifier` whose head is its submodule named ``head``.

    Parameters
    ----------
    module : nn.Module
        The model, taking images ``[B, in_channels, H, W]``. Changed in place: its
        ``head`` submodule is replaced by ``nn.Identity`` (keep a copy if you need the
        original).
    head : str
        Dotted name of the final ``nn.Linear`` (``"fc"`` for a torchvision ResNet).
    in_channels : int
        Channels of the images (1 or 3).
    mean, std : sequence of float, optional
        Per-channel normalisation the module expects of its input; the classifier takes
        images in [0, 1] and normalises them itself. Default: none (mean 0, std 1).
    arch : str, optional
        A name for reports and checkpoints (default: the module's class name).

    Returns
    -------
    Classifier
        Sharing ``module``'s parameters.

    Examples
    --------
    >>> import torch
    >>> from torchvision.models import resnet18
    >>> from adapt.models.wrap import wrap_model
    >>> net = resnet18(num_classes=2)
    >>> clf = wrap_model(net, head="fc", in_channels=3)
    >>> clf.feature_dim, clf.num_classes
    (512, 2)
    >>> clf.features(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 512])
    """
    if not isinstance(module, nn.Module):
        raise UserError(f"model: expected a torch.nn.Module, got {type(module).__name__}")
    if isinstance(module, Classifier):
        return module
    if in_channels not in (1, 3):
        raise UserError(f"in_channels: must be 1 or 3, got {in_channels}")
    layer = _get(module, head)
    if not isinstance(layer, nn.Linear):
        raise UserError(f"head: {head!r} is a {type(layer).__name__}, expected the final nn.Linear")
    mean = [0.0] * in_channels if mean is None else [float(v) for v in mean]
    std = [1.0] * in_channels if std is None else [float(v) for v in std]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) != in_channels:
            raise UserError(f"{name}: {len(values)} values for {in_channels} channels")
    if any(v <= 0 for v in std):
        raise UserError("std: every value must be positive")
    _set(module, head, nn.Identity())
    return Classifier(arch or type(module).__name__, ModuleBackbone(module), layer, in_channels, mean, std)
