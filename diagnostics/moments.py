"""Streaming first and second moments in float64, mergeable exactly.

A feature set too large for memory (or split over DDP ranks) is summarised by
``(n, Σx, ΣxxT)``. Because these are plain sums, merging two summaries is an
addition, so batches and ranks combine into exactly the summary of the whole
(up to float64 rounding of the additions). The Fréchet distance needs only the
mean and covariance, which follow from the sums:

    mean = Σx / n
    cov  = (ΣxxT − n·mean·meanᵀ) / (n − 1)        (unbiased)

The raw-sum form loses a few digits when |mean| ≫ std; features from a network
(post-ReLU, O(1)) are far from that regime in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from adapt.errors import UserError

__all__ = ["Moments"]


def _as_2d_float64(batch, dim: int | None) -> torch.Tensor:
    x = torch.as_tensor(batch)
    if x.ndim == 1:
        x = x.unsqueeze(0) if dim is not None and x.shape[0] == dim else x.unsqueeze(1)
    if x.ndim != 2:
        raise UserError(f"Moments.update: expected a [N, D] batch, got shape {tuple(x.shape)}")
    return x.to(torch.float64)


@dataclass
class Moments:
    """Running sums ``n``, ``sum`` [D] float64 and ``outer`` [D, D] float64.

    Build with :meth:`empty` (or ``Moments.from_features(x)``), feed batches with
    :meth:`update`, combine partial results with :meth:`merge` or, under
    ``torch.distributed``, :meth:`all_reduce`.
    """

    n: int
    sum: torch.Tensor
    outer: torch.Tensor

    # ---------------------------------------------------------------- builders
    @classmethod
    def empty(cls, dim: int, device: torch.device | str | None = None) -> Moments:
        """Zero moments of dimension ``dim`` (float64, on ``device``; CPU by default)."""
        return cls(
            n=0,
            sum=torch.zeros(dim, dtype=torch.float64, device=device),
            outer=torch.zeros(dim, dim, dtype=torch.float64, device=device),
        )

    @classmethod
    def from_features(cls, x) -> Moments:
        """Moments of a whole ``[N, D]`` feature matrix in one go."""
        xt = _as_2d_float64(x, None)
        m = cls.empty(xt.shape[1], device=xt.device)
        return m.update(xt)

    # ---------------------------------------------------------------- updates
    @property
    def dim(self) -> int:
        return int(self.sum.shape[0])

    def update(self, batch) -> Moments:
        """Add a ``[B, D]`` batch (any float dtype; cast to float64). Returns ``self``."""
        x = _as_2d_float64(batch, self.dim).to(self.sum.device)
        if x.shape[1] != self.dim:
            raise UserError(f"Moments.update: batch has {x.shape[1]} features, expected {self.dim}")
        self.n += int(x.shape[0])
        self.sum += x.sum(dim=0)
        # addmm_ accumulates xᵀx into the running outer product without a temporary.
        self.outer.addmm_(x.T, x)
        return self

    def merge(self, other: Moments) -> Moments:
        """Moments of the union of both samples (a new object; inputs unchanged)."""
        if other.dim != self.dim:
            raise UserError(f"Moments.merge: dimensions differ ({self.dim} vs {other.dim})")
        return Moments(
            n=self.n + other.n,
            sum=self.sum + other.sum.to(self.sum.device),
            outer=self.outer + other.outer.to(self.outer.device),
        )

    def all_reduce(self) -> Moments:
        """Sum the moments over all ranks of the default process group, in place.

        A no-op when ``torch.distributed`` is unavailable or not initialised, so
        single-process code can call it unconditionally. Returns ``self``.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return self
        # NCCL cannot reduce CPU tensors and gloo cannot reduce CUDA ones: pack the
        # sums into one buffer on the backend's device.
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        d = self.dim
        buf = torch.cat(
            [
                torch.tensor([float(self.n)], dtype=torch.float64),
                self.sum.detach().cpu(),
                self.outer.detach().cpu().reshape(-1),
            ]
        ).to(device)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        buf = buf.to(self.sum.device)
        self.n = int(round(buf[0].item()))
        self.sum = buf[1 : 1 + d].clone()
        self.outer = buf[1 + d :].reshape(d, d).clone()
        return self

    # ---------------------------------------------------------------- statistics
    @property
    def mean(self) -> torch.Tensor:
        """Sample mean ``[D]`` float64."""
        if self.n < 1:
            raise UserError("Moments.mean: no samples were accumulated")
        return self.sum / self.n

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased sample covariance ``[D, D]`` float64 (divides by n − 1)."""
        if self.n < 2:
            raise UserError(f"Moments.cov: need at least 2 samples, have {self.n}")
        mu = self.mean
        c = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        # Symmetrise: the subtraction above can leave asymmetric rounding noise.
        return 0.5 * (c + c.T)

    def to_dict(self) -> dict:
        """Plain summary (not the full matrices): n and dimension."""
        return {"n": int(self.n), "dim": self.dim}
