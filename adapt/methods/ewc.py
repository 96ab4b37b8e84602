"""Elastic weight consolidation (Kirkpatrick et al., PNAS 2017, "Overcoming catastrophic
forgetting in neural networks") and L2-SP (Li et al., ICML 2018) as its Fisher-free case.

The diagonal Fisher information of the source model,

    F_i = E_x E_{y ~ p_θ(y|x)} [ (∂ log p_θ(y|x) / ∂θ_i)² ],

is an average of **per-sample** squared gradients — never the square of a batch-mean
gradient (which would be E[g]² instead of E[g²], a common bug that shrinks F by ~1/B).
Two engines compute them for a whole batch at once:

* ``"vmap"``: ``torch.func.vmap(grad(...))`` over ``functional_call`` — any model.
* ``"hooks"`` (:mod:`adapt.methods.layer_sq_grads`): one batched forward and one
  activation-only backward, then Σ_b g_b² per layer from its inputs and output
  gradients in closed form — convolutions, linear and normalisation layers only, and
  much faster on CPU, where vmap's per-sample convolution gradients are slower than a
  batch-size-1 loop (``benchmarks/bench_fisher.py``).

``"auto"`` (default) takes the hooks engine when every trainable layer is supported.
The penalty keeps the adapted weights near the source weights θ* where they matter:

    Ω(θ) = (λ / 2) Σ_i F_i (θ_i − θ*_i)²
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from adapt.errors import UserError
from adapt.io import atomic_torch_save
from adapt.methods.layer_sq_grads import HookEngineUnsupported, squared_grad_sums, unsupported_reason

FISHER_MODES = ("true", "empirical", "exact")
FISHER_ENGINES = ("auto", "hooks", "vmap")


def trainable_params(model: nn.Module) -> dict[str, Tensor]:
    """The parameters that require grad, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def anchor_params(model: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the trainable parameters: θ* for :class:`EWC` / :class:`L2SP`."""
    return {n: p.detach().clone() for n, p in trainable_params(model).items()}


def sample_labels(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """y ~ Categorical(softmax(logits)) per row: [B, K] → [B] int64 (one multinomial call)."""
    probs = logits.detach().float().softmax(dim=1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def resolve_engine(model: nn.Module, engine: str = "auto") -> str:
    """``"hooks"`` or ``"vmap"``: the engine :func:`fisher_diagonal` uses for ``model``
    as it is now (call in eval mode). ``"hooks"`` on an unsupported model is a
    UserError naming the layer."""
    if engine not in FISHER_ENGINES:
        raise UserError(f"fisher engine={engine!r}: must be one of {', '.join(FISHER_ENGINES)}")
    if engine == "vmap":
        return "vmap"
    reason = unsupported_reason(model)
    if reason is None:
        return "hooks"
    if engine == "hooks":
        raise UserError(f"fisher engine='hooks' cannot handle {reason}; use engine='vmap'")
    return "vmap"


def per_sample_squared_grads(model: nn.Module, x: Tensor, y: Tensor, weight: Tensor | None = None,
                             engine: str = "vmap") -> dict[str, Tensor]:
    """Σ_b w_b (∂ log p_θ(y_b | x_b) / ∂θ)² over a batch, per trainable parameter.

    ``engine="vmap"``: per-sample gradients from ``vmap(grad(...))`` over
    ``functional_call`` (one sample at a time inside, batched outside).
    ``engine="hooks"``: :func:`adapt.methods.layer_sq_grads.squared_grad_sums` (falls
    back to vmap if a layer turns out to run twice per forward).
    The model is used in its current mode — call it in eval mode so BatchNorm uses
    running statistics (per-sample BN statistics would be meaningless). w defaults to 1.
    """
    if engine == "hooks":

        try:
            return squared_grad_sums(model, x, y, weight)
        except HookEngineUnsupported:
            pass
    params = trainable_params(model)
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def log_prob(p, xi, yi):
        logits = functional_call(model, (p, frozen, buffers), (xi.unsqueeze(0),))
        # gather, not [0, yi]: indexing by a batched tensor is data-dependent under vmap
        return torch.log_softmax(logits.float(), dim=1)[0].gather(0, yi.view(1)).squeeze(0)

    detached = {n: p.detach() for n, p in params.items()}
    grads = vmap(grad(log_prob), in_dims=(None, 0, 0))(detached, x, y)
    out = {}
    for n, g in grads.items():
        sq = g.square_()  # in place: the [B, *shape] per-sample gradients are the big buffer
        if weight is not None:
            sq = sq.mul_(weight.view(-1, *([1] * (sq.dim() - 1))).to(sq))
        out[n] = sq.sum(dim=0)
    return out


def fisher_diagonal(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    mode: str = "true",
    samples: int | None = None,
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    engine: str = "auto",
) -> dict[str, Tensor]:
    """Diagonal Fisher information F_i of ``model`` on ``images`` [N, C, H, W].

    mode
      ``"true"`` (default): y ~ p_θ(y|x), one draw per image. For each batch (in order)
      the labels are ``sample_labels(model(x_batch), generator)``.
      ``"empirical"``: y = the given ``labels`` [N] (a common approximation).
      ``"exact"``: the expectation over y done exactly, Σ_y p_θ(y|x) g_y² (K gradients
      per image; cheap for few classes, no sampling noise).
    samples: use a random subset of this many images (``torch.randperm`` with
      ``generator``, drawn before any label); None = all.
    engine: ``"auto"`` | ``"hooks"`` | ``"vmap"`` (module docstring; same result to
      float32 rounding).
    Returns {parameter name: F [same shape]} for every parameter that requires grad,
    averaged over the images, on the parameters' device, float32. The model is run in
    eval mode (BatchNorm on running statistics, dropout off) and its mode restored.
    """
    if mode not in FISHER_MODES:
        raise UserError(f"fisher mode={mode!r}: must be one of {', '.join(FISHER_MODES)}")
    if mode == "empirical" and labels is None:
        raise UserError("fisher mode='empirical' needs the true labels")
    if images.dim() != 4 or len(images) == 0:
        raise UserError(f"fisher: images must be a non-empty [N, C, H, W] tensor, got {tuple(images.shape)}")
    params = trainable_params(model)
    if not params:
        raise UserError("fisher: the model has no parameter that requires grad")
    device = next(iter(params.values())).device
    n = len(images)
    index = torch.arange(n)
    if samples is not None and samples < n:
        gen_device = generator.device if generator is not None else "cpu"
        index = torch.randperm(n, generator=generator, device=gen_device)[:samples].cpu()
    total = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    was_training = {m: m.training for m in model.modules()}
    model.eval()
    try:
        engine = resolve_engine(model, engine)
        for start in range(0, len(index), batch_size):
            idx = index[start : start + batch_size]
            x = images[idx].to(device)
            if mode == "empirical":
                batch = [(labels[idx].to(device).long(), None)]
            else:
                with torch.no_grad():
                    logits = model(x)
                if mode == "true":
                    batch = [(sample_labels(logits, generator), None)]
                else:  # exact: Σ_y p(y|x) g_y²
                    probs = logits.float().softmax(dim=1)
                    batch = [
                        (torch.full((len(x),), k, dtype=torch.long, device=device), probs[:, k])
                        for k in range(logits.shape[1])
                    ]
            for y, w in batch:
                for name, sq in per_sample_squared_grads(model, x, y, w, engine=engine).items():
                    total[name] += sq
    finally:
        for m, mode_flag in was_training.items():
            m.train(mode_flag)
    count = float(len(index))
    return {name: t / count for name, t in total.items()}


def save_fisher(path: str | os.PathLike, fisher: Mapping[str, Tensor], **meta) -> None:
    """Write {"fisher": {name: tensor}, "meta": {...}} atomically (meta: plain values)."""
    atomic_torch_save(path, {"fisher": {k: v.detach().cpu() for k, v in fisher.items()}, "meta": dict(meta)})


def load_fisher(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Read a file written by :func:`save_fisher` (``weights_only=True``)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: Fisher file not found") from None
    except Exception as err:  # corrupt / not a torch file / unsafe content
        raise UserError(f"{path}: not a readable Fisher file ({type(err).__name__})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("fisher"), dict):
        raise UserError(f"{path}: not a Fisher file (no 'fisher' dict)")
    fisher = obj["fisher"]
    bad = [k for k, v in fisher.items() if not isinstance(v, Tensor)]
    if bad:
        raise UserError(f"{path}: Fisher entry {bad[0]!r} is not a tensor")
    return fisher, dict(obj.get("meta") or {})


class EWC:
    """Penalty (λ/2) Σ_i F_i (θ_i − θ*_i)² over the parameters that require grad and
    appear in both ``fisher`` and ``anchor`` (others, e.g. a newly added head, are free).

    fisher, anchor: {parameter name: tensor}; lam: λ ≥ 0.
    """

    name = "ewc"

    def __init__(self, fisher: Mapping[str, Tensor] | None, anchor: Mapping[str, Tensor], lam: float):
        if lam < 0:
            raise UserError(f"ewc lambda={lam}: must be >= 0")
        self.anchor = {k: v.detach() for k, v in anchor.items()}
        self.fisher = None if fisher is None else {k: v.detach() for k, v in fisher.items()}
        self.lam = float(lam)
        self._on: dict[str, tuple[Tensor, Tensor | None]] = {}  # per-device cache

    @classmethod
    def from_model(cls, model: nn.Module, fisher: Mapping[str, Tensor], lam: float) -> EWC:
        """Anchor at the model's current weights."""
        return cls(fisher, anchor_params(model), lam)

    def _terms(self, model: nn.Module):
        for name, p in model.named_parameters():
            if not p.requires_grad or name not in self.anchor:
                continue
            if self.fisher is not None and name not in self.fisher:
                continue
            cached = self._on.get(name)
            if cached is None or cached[0].device != p.device:
                a = self.anchor[name]
                if a.shape != p.shape:
                    raise UserError(f"{self.name} anchor: parameter {name} has shape {tuple(a.shape)}, model has {tuple(p.shape)}")
                f = None if self.fisher is None else self.fisher[name].to(p.device, torch.float32)
                if f is not None and f.shape != p.shape:
                    raise UserError(f"{self.name} Fisher: parameter {name} has shape {tuple(f.shape)}, model has {tuple(p.shape)}")
                cached = (a.to(p.device, torch.float32), f)
                self._on[name] = cached
            yield p, cached[0], cached[1]

    def __call__(self, model: nn.Module) -> Tensor:
        total = None
        for p, a, f in self._terms(model):
            d2 = (p.float() - a).square()
            term = d2.sum() if f is None else (f * d2).sum()
            total = term if total is None else total + term
        if total is None:
            device = next(model.parameters()).device
            return torch.zeros((), device=device)
        return 0.5 * self.lam * total


class L2SP(EWC):
    """L2-SP (Li et al., ICML 2018): (λ/2) Σ_i (θ_i − θ*_i)², i.e. EWC with F = 1."""

    name = "l2sp"

    def __init__(self, anchor: Mapping[str, Tensor], lam: float):
        super().__init__(None, anchor, lam)

    @classmethod
    def from_model(cls, model: nn.Module, lam: float) -> L2SP:  # type: ignore[override]
        return cls(anchor_params(model), lam)
