"""DAN: deep adaptation with multi-kernel MMD (Long et al., ICML 2015, "Learning
Transferable Features with Deep Adaptation Networks").

For source activations x_1..x_n and target y_1..y_m of one batch, the multi-kernel
Gaussian kernel with equal weights over M bandwidth scales s_m,

    k(a, b) = (1/M) Σ_m exp(−‖a − b‖² · s_m / σ²),   σ² = median_{i,j} ‖x_i − x_j‖²
                                                      (source batch, no gradient)

and the unbiased quadratic MMD² estimate (Gretton et al., JMLR 2012, U-statistic)

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (n(n−1)) + Σ_{i≠j} k(y_i, y_j) / (m(m−1))
             − 2 Σ_{i,j} k(x_i, y_j) / (nm)

added to the source cross-entropy with ``weight``. Scales: the paper's family,
2^−8 … 2^8 in steps of 2^½ (33 kernels). Two departures from the paper, both as in
pytorch-adapt and TLlib: the kernel weights β are equal rather than optimised for test
power, and the quadratic estimate replaces the linear-time one (at batch 64 its cost is
negligible and its variance lower). The paper adapts fc6–fc8; ``layers`` picks the
pooled features and/or the logits. pytorch-adapt's ``MMDLoss(mmd_type="quadratic")``
with the same scales is the test's oracle.

This is the training loss (differentiable, per batch); the two-sample test with its
p-value, for the audit, is :mod:`diagnostics.mmd`.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from pydantic import Field, model_validator
from torch import Tensor

from adapt.errors import UserError
from adapt.method_options import RecipeSection
from adapt.method_registry import BuildContext, ObjectiveSpec, register
from adapt.methods.alignment import StatisticAlignment


def dan_kernel_scales(low: int = -8, high: int = 8, per_octave: int = 2) -> Tensor:
    """The bandwidth multipliers 2^low … 2^high, ``per_octave`` per factor of 2 (default 33)."""
    n = (high - low) * per_octave + 1
    return torch.logspace(low, high, n, base=2.0, dtype=torch.float64)


def mk_mmd2(x: Tensor, y: Tensor, scales: Tensor) -> Tensor:
    """Unbiased multi-kernel MMD² of [n, d] and [m, d] samples (n, m ≥ 2), see the module docstring."""
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise UserError(f"dan: MMD needs >= 2 samples per domain and batch (got {n} and {m})")
    dxx, dyy, dxy = torch.cdist(x, x).square(), torch.cdist(y, y).square(), torch.cdist(x, y).square()
    with torch.no_grad():
        sigma2 = dxx.median().clamp_min(1e-12)
    s = (scales.to(x.device, x.dtype) / sigma2).view(1, 1, -1)

    def k(d2: Tensor) -> Tensor:
        return torch.exp(-d2.unsqueeze(2) * s).mean(dim=2)

    kxx, kyy = k(dxx), k(dyy)
    off_xx = kxx.sum() - kxx.diagonal().sum()
    off_yy = kyy.sum() - kyy.diagonal().sum()
    return off_xx / (n * (n - 1)) + off_yy / (m * (m - 1)) - 2.0 * k(dxy).mean()


class DAN(StatisticAlignment):
    """Source CE + weight · MK-MMD² over the chosen layers."""

    name = "dan"

    def __init__(self, *, weight: float = 1.0, layers: Sequence[str] = ("features",), kernel_low: int = -8,
                 kernel_high: int = 8, label_smoothing: float = 0.0):
        super().__init__(weight=weight, layers=layers, label_smoothing=label_smoothing)
        if kernel_low > kernel_high:
            raise UserError(f"dan: kernel_low={kernel_low} must be <= kernel_high={kernel_high}")
        self.scales = dan_kernel_scales(kernel_low, kernel_high)

    def discrepancy(self, z_s: Tensor, z_t: Tensor) -> Tensor:
        return mk_mmd2(z_s, z_t, self.scales)

class DANConfig(RecipeSection):
    """A run's ``dan:`` options."""

    weight: float = Field(1.0, ge=0)
    layers: list[Literal["features", "logits"]] = Field(default_factory=lambda: ["features"], min_length=1)
    #: Gaussian kernels at bandwidths median x 2^k, k = low ... high in steps of 1/2
    kernel_low: int = Field(-8, ge=-20, le=20)
    kernel_high: int = Field(8, ge=-20, le=20)

    @model_validator(mode="after")
    def _order(self) -> DANConfig:
        if self.kernel_low > self.kernel_high:
            raise ValueError(f"kernel_low ({self.kernel_low}) must be <= kernel_high ({self.kernel_high})")
        return self


def _dan(ctx: BuildContext):
    o = ctx.options
    return DAN(weight=o.weight, layers=o.layers, kernel_low=o.kernel_low, kernel_high=o.kernel_high,
               label_smoothing=ctx.label_smoothing), ctx.source_train


register(ObjectiveSpec("dan", _dan, section=DANConfig, batchnorm=DAN.batchnorm, study=({},)))
