"""Sums of squared per-sample gradients, Σ_b w_b (∂ℓ_b/∂θ)², from one batched forward
and one backward pass — the fast engine behind :func:`adapt.methods.ewc.fisher_diagonal`.

A layer with weight W applied at positions l = 1..L (a convolution: L output pixels on
unfolded input patches u_bl; a linear layer: L = 1, or the extra token dimensions) has
per-sample weight gradient

    G_b = Σ_l δ_bl u_blᵀ        δ_bl = ∂ℓ_b/∂y_bl  [out],  u_bl  [in]

(Goodfellow 2015, "Efficient per-example gradient computations", for L = 1; Rochette,
Manoel & Tramel 2019 for convolutions through unfold). δ comes from a backward pass of
Σ_b √w_b ℓ_b with every parameter frozen (no batched weight gradient is formed), u from
forward hooks; samples do not interact in eval mode, so the per-sample gradients of
that sum are exactly √w_b g_b. Σ_b G_b ⊙ G_b is then built one of two ways:

* small L (≤ ``_SMALL_L``): without any per-sample tensor, by the Khatri–Rao identity
  (Σ_l δ_lo u_li)² = Σ_{l,l'} δ_lo δ_l'o u_li u_l'i, so Σ_b G_b⊙G_b = P Qᵀ with
  P[o, (b, l≤l')] = c_ll' δ_blo δ_bl'o and Q[i, (b, l≤l')] = u_bli u_bl'i (c = 1 on the
  diagonal, 2 off it): one GEMM of inner size B·L(L+1)/2. This is what makes the deep,
  wide, spatially tiny layers of a CNN cheap (resnet18 layer4 at 64×64 input: L = 4).
* larger L: materialise G_b for a chunk of samples (one batched GEMM), square, sum.

Normalisation layers get theirs in closed form: BatchNorm in eval mode (running
statistics), LayerNorm and GroupNorm: per-sample ∂ℓ/∂γ = Σ δ ⊙ x̂, ∂ℓ/∂β = Σ δ.

Supported: nn.Conv1d/2d/3d (zero padding, any stride/dilation/groups), nn.Linear,
BatchNorm (eval, running statistics), LayerNorm, GroupNorm, each called once per
forward. :func:`unsupported_reason` says why a model is not; the caller then uses
``torch.func.vmap(grad)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["unsupported_reason", "squared_grad_sums", "HookEngineUnsupported"]

# Largest number of positions per sample for the Khatri–Rao route. Its cost grows as
# L(L+1)/2 per weight element against L for materialising G_b, but it runs as one large
# GEMM instead of memory-bound writes: measured on resnet18 (CPU, 1 thread) it is 3x
# faster at L = 4 and 10x slower at L = 16.
_SMALL_L = 4
# Memory budget of one chunk of Khatri–Rao factors (bytes): large, for a large GEMM.
_CHUNK_BYTES = 64 * 2**20
# Budget for materialised per-sample gradients: small enough to stay in cache while
# they are squared and summed (streaming them through memory was 3x slower).
_CACHE_BYTES = 4 * 2**20

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class HookEngineUnsupported(RuntimeError):
    """Raised during :func:`squared_grad_sums` when the model breaks an assumption that
    could not be checked statically (a layer called twice per forward)."""


def unsupported_reason(model: nn.Module) -> str | None:
    """None if every trainable parameter of ``model`` (in its current mode) sits in a
    layer this engine handles; otherwise a one-line reason naming the layer."""
    owner: dict[int, str] = {}
    for name, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        label = name or type(model).__name__
        for p in own:
            if id(p) in owner:
                return f"{label}: parameter shared with {owner[id(p)]}"
            owner[id(p)] = label
        if isinstance(mod, _CONV):
            if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
                return f"{label}: padding {mod.padding!r}/{mod.padding_mode} (only explicit zero padding)"
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.training or mod.running_mean is None:
                return f"{label}: BatchNorm on batch statistics (samples would interact)"
        elif not isinstance(mod, (nn.Linear, nn.LayerNorm, nn.GroupNorm)):
            return f"{label}: {type(mod).__name__} has its own trainable parameters"
    return None


def squared_grad_sums(model: nn.Module, x: Tensor, y: Tensor, weight: Tensor | None = None) -> dict[str, Tensor]:
    """Σ_b w_b (∂ log p_θ(y_b | x_b) / ∂θ)² per trainable parameter, by name.

    x: [B, ...] inputs; y: [B] int64 labels; weight: [B] non-negative (default 1).
    The model must be in the mode it is to be differentiated in (eval: see
    :func:`unsupported_reason`, which the caller checks first). Returns float32 tensors
    shaped like the parameters. Raises :class:`HookEngineUnsupported` if a hooked layer
    runs more than once per forward.
    """
    layers = [(n, m) for n, m in model.named_modules()
              if any(p.requires_grad for p in m.parameters(recurse=False))]
    inputs: dict[nn.Module, Tensor] = {}
    grads: dict[nn.Module, Tensor] = {}

    def forward_hook(mod, args, out):
        if mod in inputs:
            raise HookEngineUnsupported(f"{type(mod).__name__} is called more than once per forward")
        inputs[mod] = args[0].detach()
        if isinstance(out, Tensor) and out.requires_grad:
            # A tensor hook fires with ∂/∂(this version of the output), even when a
            # later in-place op (ReLU(inplace=True)) rewrites the storage.
            out.register_hook(lambda g, mod=mod: grads.__setitem__(mod, g.detach()))

    trainable = {p: p.requires_grad for p in model.parameters()}
    handles = [m.register_forward_hook(forward_hook) for _, m in layers]
    try:
        for p in trainable:
            p.requires_grad_(False)  # the backward then forms only activation gradients
        xr = x.detach().requires_grad_(True)
        logp = torch.log_softmax(model(xr).float(), dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        if weight is not None:
            logp = logp * weight.to(logp).clamp_min(0).sqrt()
        logp.sum().backward(inputs=[xr])
    finally:
        for h in handles:
            h.remove()
        for p, flag in trainable.items():
            p.requires_grad_(flag)

    out: dict[str, Tensor] = {}
    for name, mod in layers:
        prefix = f"{name}." if name else ""
        wants = {pn: p for pn, p in mod.named_parameters(recurse=False) if p.requires_grad}
        if mod not in grads:  # not called, or no path to the loss: zero gradient
            for pn, p in wants.items():
                out[prefix + pn] = torch.zeros_like(p, dtype=torch.float32)
            continue
        for pn, value in _layer_sq_grads(mod, inputs[mod].float(), grads[mod].float(), wants).items():
            out[prefix + pn] = value
    return out


def _layer_sq_grads(mod: nn.Module, u: Tensor, d: Tensor, wants: dict[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(mod, _NORM):
        return _norm_sq_grads(mod, u, d, wants)
    b = u.shape[0]
    if isinstance(mod, nn.Linear):
        # [B, *, in] → positions = the * dimensions
        patches = u.reshape(b, -1, u.shape[-1]).transpose(1, 2).unsqueeze(1)   # [B, 1, in, L]
        deltas = d.reshape(b, -1, d.shape[-1]).transpose(1, 2).unsqueeze(1)    # [B, 1, out, L]
        groups = 1
    else:
        groups = mod.groups
        deltas = d.reshape(b, groups, mod.out_channels // groups, -1)          # [B, G, O, L]
        patches = None  # unfolded per chunk below: the full unfold can be large
    res: dict[str, Tensor] = {}
    if "weight" in wants:
        res["weight"] = _weight_sq_sum(mod, u, deltas, patches, groups).reshape(wants["weight"].shape)
    if "bias" in wants:
        res["bias"] = deltas.sum(-1).square().sum(0).reshape(wants["bias"].shape)
    return res


def _unfold(mod: nn.Module, u: Tensor) -> Tensor:
    """Input patches of a convolution: [B, C_in·Πk, L] in the weight's (c, k…) order."""
    if isinstance(mod, nn.Conv2d):
        return F.unfold(u, mod.kernel_size, mod.dilation, mod.padding, mod.stride)
    if isinstance(mod, nn.Conv1d):
        return F.unfold(u.unsqueeze(2), (1, mod.kernel_size[0]), (1, mod.dilation[0]),
                        (0, mod.padding[0]), (1, mod.stride[0]))
    # Conv3d: patches by unfolding each spatial dimension in turn
    k, s, dl, pd = mod.kernel_size, mod.stride, mod.dilation, mod.padding
    v = F.pad(u, (pd[2], pd[2], pd[1], pd[1], pd[0], pd[0]))
    for dim, (kk, ss, dd) in enumerate(zip(k, s, dl)):
        span = dd * (kk - 1) + 1
        v = v.unfold(2 + dim, span, ss)[..., ::dd]
    # v: [B, C, oD, oH, oW, kD, kH, kW] → [B, C·kD·kH·kW, oD·oH·oW]
    bsz, c = v.shape[:2]
    return v.permute(0, 1, 5, 6, 7, 2, 3, 4).reshape(bsz, c * k[0] * k[1] * k[2], -1)


def _weight_sq_sum(mod: nn.Module, u: Tensor, deltas: Tensor, patches: Tensor | None, groups: int) -> Tensor:
    """Σ_b G_b ⊙ G_b for one layer: [G, O, I].

    Outer chunks of samples bound the unfolded patches and the Khatri–Rao factors
    (``_CHUNK_BYTES``); inside, materialised per-sample gradients go in sub-chunks
    small enough to stay in cache (``_CACHE_BYTES``).
    """
    b, _, o, positions = deltas.shape
    i = patches.shape[2] if patches is not None else math.prod(mod.weight.shape[1:])
    small = positions <= _SMALL_L
    pairs = positions * (positions + 1) // 2
    per_sample = groups * i * positions + (groups * (o + i) * pairs if small else 0)
    chunk = max(1, _CHUNK_BYTES // (4 * per_sample))
    inner = max(1, _CACHE_BYTES // (4 * groups * o * i))
    total = torch.zeros(groups, o, i, dtype=deltas.dtype, device=deltas.device)
    for s in range(0, b, chunk):
        dlt = deltas[s : s + chunk]
        n = len(dlt)
        pat = patches[s : s + chunk] if patches is not None else _unfold(mod, u[s : s + chunk]).reshape(
            n, groups, -1, positions)
        if small:
            p = _pair_products(dlt, weighted=True).permute(1, 2, 0, 3).reshape(groups, o, n * pairs)
            q = _pair_products(pat, weighted=False).permute(1, 0, 3, 2).reshape(groups, n * pairs, i)
            total.baddbmm_(p, q)
            continue
        for t in range(0, n, inner):
            g = torch.matmul(dlt[t : t + inner], pat[t : t + inner].transpose(-1, -2))  # [n', G, O, I]
            if len(g) == 1:
                total.addcmul_(g[0], g[0])
            else:
                total.add_(g.square_().sum(0))
    return total


def _pair_products(t: Tensor, weighted: bool) -> Tensor:
    """[..., L] → [..., L(L+1)/2]: t_l · t_l' for l ≤ l' (row-major), times 2 off the
    diagonal when ``weighted``. Built from slices: no index tensors (a gather here
    cost as much as the GEMM it feeds)."""
    positions = t.shape[-1]
    cols = []
    for l in range(positions):
        prod = t[..., l : l + 1] * t[..., l:]
        if weighted and positions - l > 1:
            prod[..., 1:] *= 2.0
        cols.append(prod)
    return torch.cat(cols, dim=-1)


def _norm_sq_grads(mod: nn.Module, u: Tensor, d: Tensor, wants: dict[str, Tensor]) -> dict[str, Tensor]:
    b = u.shape[0]
    if isinstance(mod, nn.LayerNorm):
        xhat = F.layer_norm(u, mod.normalized_shape, eps=mod.eps)
        shape = (b, -1, *mod.normalized_shape)
        per_gamma = (d * xhat).reshape(shape).sum(1)
        per_beta = d.reshape(shape).sum(1)
    else:
        if isinstance(mod, nn.GroupNorm):
            xhat = F.group_norm(u, mod.num_groups, eps=mod.eps)
        else:  # BatchNorm, eval mode: running statistics over channel dim 1
            view = (1, -1) + (1,) * (u.dim() - 2)
            xhat = (u - mod.running_mean.view(view)) * torch.rsqrt(mod.running_var.view(view) + mod.eps)
        per_gamma = (d * xhat).reshape(b, u.shape[1], -1).sum(-1)
        per_beta = d.reshape(b, u.shape[1], -1).sum(-1)
    res = {}
    if "weight" in wants:
        res["weight"] = per_gamma.square().sum(0).reshape(wants["weight"].shape)
    if "bias" in wants:
        res["bias"] = per_beta.square().sum(0).reshape(wants["bias"].shape)
    return res
