"""AdaBN: re-estimate BatchNorm statistics on the target domain (Li et al., "Revisiting
Batch Normalization For Practical Domain Adaptation", ICLR-W 2017).

All weights stay as trained; only every BatchNorm layer's running mean/variance is
replaced by the target data's. No labels, no gradients. The same routine re-estimates
the source statistics after every training epoch ("precise BN", ``adapt.train``).

**Exact and order-free.** A BatchNorm layer in eval mode normalises its input with
``running_mean`` / ``running_var``; the statistics that make the deployed model
normalise the data set *as a whole* are the pooled per-channel mean and (unbiased)
variance of that layer's input over every image and position,

    μ = (1/n) Σ_i x_i,        σ² = (1/(n−1)) Σ_i (x_i − μ)²,

where the input is computed with every upstream BatchNorm already holding *its* final
statistics (eval mode). So the layers are estimated one at a time in forward order,
each in one pass over the data that stops right after that layer's input is seen
(a pass over the first k layers only). Batch moments are merged with Chan et al.'s
pairwise update in float64 (Chan, Golub & LeVeque 1983):

    n = n_a + n_b,  δ = μ_b − μ_a,  μ = μ_a + δ n_b / n,  M2 = M2_a + M2_b + δ² n_a n_b / n,

which includes the between-batch term δ² n_a n_b / n: the result is the same for any
batch size and any batch order (a class-sorted folder gives the statistics of its
shuffled copy). The mean of per-batch variances that a train-mode pass with PyTorch's
cumulative momentum gives leaves that term out and, on class-sorted data, also
normalises deeper layers with one-class batch statistics.

Cost. Generic models: a pass over the first k layers for each of the L layers (≈ L/2
full forward passes). Models whose forward starts with a chain of modules (an
``nn.Sequential``, or a model naming that chain in ``sequential_prefix()``, as
:class:`adapt.models.Classifier` does) are swept once along the chain instead: the
activations of the whole set are kept between modules, each BatchNorm met on the way
takes its statistics from the activations in hand and then normalises them for the next
module, so the chain costs one forward pass (a module that is not a plain chain, such as
a residual block, gets the generic prefix passes inside it only). The result is the same
as the generic route's (tested); the activations are kept only while they fit in
``cache_mb``, beyond which the remaining layers take the generic route. Batches read from
a loader are kept in memory (up to ``cache_mb``) so files are decoded once.

A run with ``objective: none`` (registered here) trains nothing: with ``adabn: true`` it
is AdaBN alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from adapt.data.domain import DomainDataset
from adapt.errors import UserError
from adapt.evaluate import predict
from adapt.method_registry import BuildContext, ObjectiveSpec, register

_BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(model: nn.Module, trainable_only: bool = False) -> list[_BatchNorm]:
    """BatchNorm layers that keep running statistics; with ``trainable_only``, those whose
    affine parameters are trainable or that have none (what :func:`adabn` re-estimates then)."""
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if trainable_only:
        layers = [m for m in layers if any(p.requires_grad for p in m.parameters(recurse=False))
                  or not list(m.parameters(recurse=False))]
    return layers


def _batches(data, batch_size: int) -> Iterable[Tensor]:
    """Yield image tensors from a tensor [N,C,H,W], a DataLoader of (x, y) / x, or a list of batches."""
    if isinstance(data, Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i : i + batch_size]
        return
    for item in data:
        yield item[0] if isinstance(item, (tuple, list)) else item


class _Replay:
    """Iterate the image batches of ``data`` as often as needed.

    The first pass keeps the batches (CPU) while they fit in ``cap_bytes``; later passes
    replay them. Beyond the cap a re-iterable source (DataLoader, list) is read again; a
    one-shot iterator is always kept, as it cannot be read twice.
    """

    def __init__(self, data, batch_size: int, cap_bytes: int):
        self.data, self.batch_size, self.cap_bytes = data, batch_size, cap_bytes
        self.cache: list[Tensor] | None = None

    def __iter__(self) -> Iterator[Tensor]:
        if isinstance(self.data, Tensor):
            yield from _batches(self.data, self.batch_size)
            return
        if self.cache is not None:
            yield from self.cache
            return
        one_shot = isinstance(self.data, Iterator)
        cache: list[Tensor] | None = []
        size = 0
        for x in _batches(self.data, self.batch_size):
            if cache is not None:
                size += x.numel() * x.element_size()
                if size > self.cap_bytes and not one_shot:
                    cache = None
                else:
                    cache.append(x)
            yield x
        self.cache = cache


class _Stop(Exception):
    """Raised by a pre-hook to end a forward pass once the wanted layer's input is seen."""


def batch_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` [B, C, ...] (every element of channel
    c is one sample of c), in ``x``'s dtype.

    A contiguous (NCHW) batch on a CPU goes through PyTorch's BatchNorm statistics kernel
    (``torch.batch_norm_update_stats``, what a training-mode BatchNorm computes): the same
    two-pass reduction as ``torch.var_mean(x, dim=[0, 2, ...], correction=0)`` — equal to
    it within ~1e-7 relative, the mean bit for bit — and 2.7-3x faster, where ``var_mean``
    reduces across strided dimensions (``benchmarks/bench_adabn.py``). Anything else
    (channels-last, where that CPU kernel sums naively: 2e-4 relative error on a 256x16x64x64
    batch; other devices) keeps ``var_mean``.
    """
    if x.device.type == "cpu" and x.is_contiguous():
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        return mean, var
    var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
    return mean, var


class ChannelMoments:
    """Streaming per-channel count, mean and M2 (float64), merged with Chan's update."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor) -> None:
        """Add a BatchNorm input [B, C, ...]: every element of channel c is one sample of c."""
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):  # half precision (AMP): sum in float32
            x = x.float()
        m = x.numel() // x.shape[1] if x.shape[1] else 0
        if m == 0:
            return
        # the batch's own moments in its dtype, merged across batches in float64: as exact
        # as a float64 copy of every activation, without making one (that copy was a
        # quarter of the cost)
        mean_b, var_b = batch_moments(x)
        mean_b = mean_b.double()
        m2_b = var_b.double() * m
        if self.mean is None:
            self.n, self.mean, self.m2 = m, mean_b, m2_b
            return
        n = self.n + m
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (m / n)
        self.m2 = self.m2 + m2_b + delta.pow(2) * (self.n * m / n)
        self.n = n

    def variance(self) -> Tensor:
        """Unbiased variance M2 / (n − 1) (what PyTorch's running_var holds); 0 for n = 1."""
        return self.m2 / max(self.n - 1, 1)


def _forward_order(model: nn.Module, layers: list[_BatchNorm], x: Tensor) -> list[_BatchNorm]:
    """``layers`` in the order a forward pass of ``x`` first calls them (unused ones left out).

    Only the order is wanted: callers pass one image (eval mode: the batch size does not
    change which layers are called); a whole batch here cost a full forward pass."""
    order: list[_BatchNorm] = []
    wanted = set(map(id, layers))

    def hook(module: nn.Module, _inputs) -> None:
        if id(module) in wanted and module not in order:
            order.append(module)

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def _input_moments(model: nn.Module, layer: _BatchNorm, batches: _Replay, device) -> ChannelMoments:
    """Pooled per-channel moments of ``layer``'s input over every batch (eval-mode forward)."""
    moments = ChannelMoments()

    def hook(_module: nn.Module, inputs) -> None:
        moments.update(inputs[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(hook)
    try:
        for x in batches:
            try:
                model(x.to(device, non_blocking=True))
            except _Stop:
                pass
    finally:
        handle.remove()
    return moments


def _flatten_chain(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """Plain ``nn.Sequential`` containers (no hooks, not subclassed) expanded into their
    children, recursively: the list whose composition is the same function."""
    out: list[nn.Module] = []
    for m in modules:
        if type(m) is nn.Sequential and not (m._forward_hooks or m._forward_pre_hooks):
            out.extend(_flatten_chain(m))
        else:
            out.append(m)
    return out


def _chain_of(model: nn.Module) -> list[nn.Module] | None:
    """The modules whose composition is the first part of ``model``'s forward, or None."""
    prefix = getattr(model, "sequential_prefix", None)
    if callable(prefix):
        return _flatten_chain(prefix())
    if type(model) is nn.Sequential:
        return _flatten_chain([model])
    return None


def _sweep_chain(chain: list[nn.Module], todo: list[_BatchNorm], acts: list[Tensor], device,
                 cap_bytes: int, to_the_end: bool = False) -> tuple[set[int], list[Tensor] | None]:
    """Set the statistics of the ``todo`` layers met along ``chain`` from the set's
    activations ``acts`` (kept between modules); return the ids of the layers done and,
    with ``to_the_end``, the chain's output for every batch (else None). Stops early (the
    rest to the generic route) once the activations would exceed ``cap_bytes``."""
    wanted, done = set(map(id, todo)), set()
    acts = [a.to(device, non_blocking=True) for a in acts]
    for module in chain:
        inner = [m for m in module.modules() if id(m) in wanted and id(m) not in done]
        # a BatchNorm that is itself the module: its input is ``acts``, the pass stops at once
        for layer in _forward_order(module, inner, acts[0][:1]) if inner else []:
            _set_statistics(layer, _input_moments(module, layer, acts, device))
            done.add(id(layer))
        if len(done) == len(wanted) and not to_the_end:
            break
        size, nxt = 0, []
        for a in acts:
            out = module(a)
            size += out.numel() * out.element_size()
            if size > cap_bytes:
                return done, None
            nxt.append(out)
        acts = nxt
    return done, acts if to_the_end else None


def _set_statistics(layer: _BatchNorm, moments: ChannelMoments) -> None:
    layer.running_mean.copy_(moments.mean.to(layer.running_mean.dtype))
    layer.running_var.copy_(moments.variance().to(layer.running_var.dtype))


@torch.no_grad()
def adabn(model: nn.Module, target_loader, device: str | torch.device = "cpu", batch_size: int = 64,
          trainable_only: bool = False, cache_mb: int = 256, chain_sweep: bool = True,
          outputs: list[Tensor] | None = None) -> int:
    """Set every BatchNorm's running statistics to the exact pooled statistics of the data.

    See the module docstring: layer by layer in forward order, each layer's
    ``running_mean`` / ``running_var`` become the mean and unbiased variance per channel of
    its input over the whole data set, computed with the model in eval mode (upstream
    layers already updated). The result does not depend on the batch size or order.
    Every module's train/eval flag is restored after; momenta are untouched.

    target_loader: a DataLoader yielding (images, labels) or images, an iterable of
    image batches, or one tensor [N, C, H, W] (split into ``batch_size`` chunks).
    trainable_only: leave BatchNorm layers whose parameters are frozen alone (their
    statistics belong to the frozen weights, e.g. in feature extraction).
    cache_mb: batches from a loader are kept in memory up to this size (read once), and
    so are the activations of the one-pass chain sweep.
    chain_sweep: use the one-pass sweep along ``sequential_prefix()`` when the model has one
    (False: the generic prefix passes only; same result, for checking).
    outputs: when given and the one-pass sweep covered every layer, it receives the
    chain's output for every batch, in order (the forward pass up to the end of
    ``sequential_prefix()`` with the new statistics: :func:`adabn_predict` finishes it).
    Returns the number of images seen.
    """
    layers = batchnorm_layers(model, trainable_only)
    modes = {m: m.training for m in model.modules()}
    batches = _Replay(target_loader, batch_size, cache_mb * 2**20)
    try:
        model.eval()
        seen = sum(len(x) for x in batches)  # the first pass also fills the cache
        if seen == 0:
            raise UserError("adabn: the target data yielded no images")
        if layers:
            first = next(iter(batches))[:1].to(device, non_blocking=True)
            order = _forward_order(model, layers, first)
            chain = _chain_of(model) if chain_sweep else None
            if chain is not None and (batches.cache is not None or isinstance(target_loader, Tensor)):
                done, out = _sweep_chain(chain, order, list(batches), device, cache_mb * 2**20, outputs is not None)
                order = [m for m in order if id(m) not in done]
                if outputs is not None and out is not None and not order:
                    outputs.extend(out)
            for layer in order:  # generic route: one prefix pass per layer, upstream layers final
                _set_statistics(layer, _input_moments(model, layer, batches, device))
    finally:
        for m, mode in modes.items():
            m.train(mode)
    return seen


def adabn_predict(model: nn.Module, data, device: str | torch.device = "cpu", batch_size: int = 256,
                  return_features: bool = False) -> dict:
    """AdaBN on ``data`` (batches of ``batch_size`` in its own order), then
    :func:`adapt.evaluate.predict` of the adapted model on the same ``data`` — the
    predictions taken from AdaBN's own pass when its one-pass sweep covered the model (a
    :class:`adapt.models.Classifier` over an in-memory or file :class:`DomainDataset`):
    the same modules on the same batches, so the same numbers bit for bit, one pass fewer."""
    outputs: list[Tensor] = []
    finish = getattr(model, "features_after_prefix", None)
    wanted = callable(finish) and isinstance(data, DomainDataset)
    adabn(model, DataLoader(data, batch_size=batch_size, shuffle=False), device, outputs=outputs if wanted else None)
    if not outputs:
        return predict(model, data, device, batch_size, return_features=return_features)
    was_training = model.training
    model.eval()
    probs, feats = [], []
    with torch.no_grad():
        for h in outputs:
            f = finish(h)
            probs.append(torch.softmax(model.head(f).float(), dim=1).cpu())
            feats.append(f.float().cpu())
    model.train(was_training)
    out = {"probs": torch.cat(probs).numpy(), "labels": np.asarray(data.labels, dtype=np.int64)}
    if return_features:
        out["features"] = torch.cat(feats).numpy()
    return out


def _nothing(ctx: BuildContext):
    """objective none: nothing trains (the run is AdaBN alone with ``adabn: true``, or the source model)."""
    return None, ctx.source_train


register(ObjectiveSpec("none", _nothing))
