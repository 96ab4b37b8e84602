"""Maximum mean discrepancy (Gretton et al., "A Kernel Two-Sample Test", JMLR 2012).

Gaussian kernel k(a, b) = exp(−‖a − b‖² / (2σ²)), or a sum of such kernels over
several bandwidths σ (a sum of characteristic kernels is characteristic).
σ defaults to the median heuristic: the median pairwise Euclidean distance of
the pooled sample.

Unbiased estimator (Gretton et al. 2012, eq. 3), X of size m, Y of size n:

    MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j)
             − 2/(mn) Σ_{i,j} k(x_i, y_j)

Permutation test from ONE kernel matrix K over the pooled N = m + n points with
its diagonal zeroed. For B permutations, the rows of A (B × N) indicate which
pooled points play X; with AK = A @ K (one GEMM):

    s_xx = rowsum(AK ⊙ A),  s_xy = rowsum(AK ⊙ (1 − A)),  s_yy = 1ᵀK1 − s_xx − 2 s_xy
    stat_b = s_xx/(m(m−1)) + s_yy/(n(n−1)) − 2 s_xy/(mn)
    p = (1 + #{stat_b ≥ stat}) / (1 + B)

Cost: one N² kernel and one B × N × N GEMM, instead of B re-indexed kernel sums.

Precision: float64 inputs are computed in float64 throughout. float32 (and half)
inputs build the distance matrix, the kernel and the permutation GEMM in float32 —
twice the BLAS speed and half the memory — after centring the pooled sample (MMD
is translation invariant, and centring keeps the cancellation in
‖a‖² + ‖b‖² − 2aᵀb relative to the spread of the data, not to its norm); every
sum over rows is accumulated in float64. Against the float64 path the statistic
differs by ~1e-7 relative (far below the permutation null's spread; tested).

For N beyond memory the test switches to the block estimator (B-test, Zaremba,
Gretton & Blaschko, NeurIPS 2013): the unbiased MMD² on disjoint blocks, averaged;
under H0 the mean of the i.i.d. block statistics is asymptotically normal, so
the p-value is 1 − Φ(mean / s.e.). :func:`mmd2_linear` is the linear-time
statistic of Gretton et al. 2012 §6 (block size 2).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from adapt.errors import UserError

__all__ = [
    "MMDResult",
    "pairwise_sq_dists",
    "median_bandwidth",
    "gaussian_kernel",
    "mmd2_unbiased",
    "mmd2_from_kernel",
    "mmd2_permutation_statistics",
    "mmd2_linear",
    "mmd2_block",
    "mmd_permutation_test",
]

Bandwidth = float | Sequence[float] | None

# Above this many pooled points the exact test (an N × N float64 kernel, 8·N² bytes:
# 200 MB at N = 5000) gives way to the block test.
DEFAULT_MAX_EXACT_POINTS = 5000
# Memory budget for one chunk of the permutation GEMM (A and AK).
_PERM_CHUNK_BYTES = 64 * 2**20
# Sample size for bracketing the median before the exact selection (speed only:
# the median found is exact whatever the sample).
_MEDIAN_SAMPLE = 20_000
NULL_QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99)


# --------------------------------------------------------------------------- basics
def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for float32/half/bfloat16 inputs, float64 for everything else."""
    return torch.float32 if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64


def _features(x, name: str, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    if t.ndim == 1:
        t = t.unsqueeze(1)
    if t.ndim != 2 or t.shape[0] < 2:
        raise UserError(f"{name}: expected a [N, D] matrix with N >= 2, got shape {tuple(t.shape)}")
    return t.to(dtype=_compute_dtype(t), device=device if device is not None else t.device)


def _centred(*samples: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each sample minus the mean of all of them pooled (computed in float64). Every
    statistic here depends on differences only, so nothing changes but precision:
    float32 distances lose far less to the cancellation in ‖a‖² + ‖b‖² − 2aᵀb."""
    total = sum(t.double().sum(0) for t in samples)
    shift = (total / sum(len(t) for t in samples)).to(samples[0].dtype)
    return tuple(t - shift for t in samples)


def _pair(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    """Both samples as tensors on x's device, in one compute dtype (float64 unless
    both are single/half precision), centred on their pooled mean."""
    xt = _features(x, "x")
    yt = _features(y, "y", device=xt.device)
    if xt.shape[1] != yt.shape[1]:
        raise UserError(f"x, y: feature dimensions differ ({xt.shape[1]} vs {yt.shape[1]})")
    if xt.dtype != yt.dtype:
        xt, yt = xt.double(), yt.double()
    return _centred(xt, yt)


def pairwise_sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖² [Na, Nb] via ‖a‖² + ‖b‖² − 2abᵀ, clipped at 0, in a's dtype
    (float64: cancellation error ~1e-16 relative to the norms; centre float32
    inputs first, see :func:`_centred`)."""
    a2 = (a * a).sum(1, keepdim=True)
    b2 = (b * b).sum(1, keepdim=True)
    # −2abᵀ + ‖a‖² in one GEMM call (the row norms ride in as its C operand).
    return torch.addmm(a2, a, b.T, alpha=-2.0).add_(b2.T).clamp_min_(0.0)


def _kth_smallest(flat: torch.Tensor, ranks: tuple[int, int]) -> tuple[float, float]:
    """The ranks[0]-th and ranks[1]-th smallest values (1-based, ranks[1] = ranks[0] + 1)
    of a 1-D tensor, exactly.

    Floyd–Rivest style: a random sample brackets the wanted order statistics, one
    pass counts what lies below the bracket and keeps what lies inside, and only
    that small remainder is partitioned — 4x faster than a full partition at
    N = 2000 points. Falls back to a full partition if the bracket misses
    (≈ 1e-6 chance); the answer never depends on the sample.
    """
    total = flat.numpy() if flat.device.type == "cpu" else flat
    lib = np if isinstance(total, np.ndarray) else torch
    size = flat.numel()
    r0, r1 = ranks
    if size > 8 * _MEDIAN_SAMPLE:
        gen = torch.Generator().manual_seed(0)
        idx = torch.randint(size, (_MEDIAN_SAMPLE,), generator=gen)
        sample = flat[idx.to(flat.device)].sort().values.cpu()
        q = r0 / size
        half = 5.0 * math.sqrt(q * (1 - q) / _MEDIAN_SAMPLE)  # ±5 standard errors of the quantile
        lo = float(sample[max(0, int((q - half) * _MEDIAN_SAMPLE))])
        hi = float(sample[min(_MEDIAN_SAMPLE - 1, int(math.ceil((q + half) * _MEDIAN_SAMPLE)))])
        below = int(lib.count_nonzero(total < lo))
        inside = total[(total >= lo) & (total <= hi)]
        if below < r0 and below + inside.shape[0] >= r1:
            return _two_order_stats(inside, r0 - below, r1 - below)
    return _two_order_stats(total, r0, r1)


def _two_order_stats(values, r0: int, r1: int) -> tuple[float, float]:
    """The r0-th and r1-th smallest (1-based) of a 1-D numpy array or tensor."""
    if isinstance(values, np.ndarray):
        part = np.partition(values, [r0 - 1, r1 - 1])
        return float(part[r0 - 1]), float(part[r1 - 1])
    return float(torch.kthvalue(values, r0).values), float(torch.kthvalue(values, r1).values)


def _median_from_sq_dists(d2: torch.Tensor) -> float:
    """Median over pairs i < j of √d2_ij (the usual median: mean of the two middle
    values for an even number of pairs), read from a square distance matrix."""
    n = d2.shape[0]
    # Each pair appears twice off the diagonal, so the r-th smallest pair value sits
    # at ranks 2r − 1 and 2r there: the middle pair values are the P-th and (P+1)-th
    # of 2P entries. The n diagonal zeros sort first (nothing is below 0), so over
    # the whole matrix those are ranks n + P and n + P + 1 — no off-diagonal copy.
    pairs = n * (n - 1) // 2
    lo, hi = _kth_smallest(d2.reshape(-1), (n + pairs, n + pairs + 1))
    lo = math.sqrt(max(lo, 0.0))
    return lo if pairs % 2 else 0.5 * (lo + math.sqrt(max(hi, 0.0)))


def median_bandwidth(x, y=None, max_points: int = 2000, seed: int = 0) -> float:
    """Median heuristic σ = median_{i<j} ‖z_i − z_j‖ over the pooled sample z = x ∪ y.

    Above ``max_points`` pooled points the median is taken on a seeded random
    subsample of that size. Falls back to 1.0 when all points coincide (σ = 0
    would make the kernel degenerate).
    """
    z = _centred(_features(x, "x"))[0] if y is None else torch.cat(_pair(x, y))
    if z.shape[0] > max_points:
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(z.shape[0], generator=gen)[:max_points].to(z.device)
        z = z[idx]
    med = _median_from_sq_dists(pairwise_sq_dists(z, z))
    return med if med > 0 else 1.0


def _bandwidth_list(bandwidth: Bandwidth) -> list[float]:
    if bandwidth is None:
        raise UserError("bandwidth: None must be resolved before building a kernel")
    bws = [float(bandwidth)] if isinstance(bandwidth, (int, float)) else [float(b) for b in bandwidth]
    if not bws or any(not (b > 0 and math.isfinite(b)) for b in bws):
        raise UserError(f"bandwidth: must be positive finite numbers, got {bandwidth!r}")
    return bws


def _kernel_from_sq_dists(d2: torch.Tensor, bandwidths: list[float]) -> torch.Tensor:
    k = torch.exp(d2 / (-2.0 * bandwidths[0] ** 2))
    for s in bandwidths[1:]:
        k += torch.exp(d2 / (-2.0 * s**2))
    return k


def gaussian_kernel(x, y, bandwidth: float | Sequence[float]) -> torch.Tensor:
    """k(x_i, y_j) = Σ_σ exp(−‖x_i − y_j‖² / (2σ²)) [Nx, Ny] float64.

    ``bandwidth`` is one σ or a list (the kernels are summed, not averaged).
    """
    xt, yt = _pair(x, y)
    return _kernel_from_sq_dists(pairwise_sq_dists(xt, yt), _bandwidth_list(bandwidth))


def _resolve_bandwidth(x: torch.Tensor, y: torch.Tensor, bandwidth: Bandwidth) -> float | list[float]:
    if bandwidth is None:
        return median_bandwidth(x, y)
    bws = _bandwidth_list(bandwidth)
    return bws[0] if isinstance(bandwidth, (int, float)) else bws


# --------------------------------------------------------------------------- estimators
def mmd2_from_kernel(k: torch.Tensor, m: int) -> float:
    """MMD²_u from a pooled kernel matrix ``k`` [N, N] whose first ``m`` rows/cols
    are X and the rest Y (the diagonal is ignored; sums in float64)."""
    n = k.shape[0] - m
    if m < 2 or n < 2:
        raise UserError(f"mmd2_from_kernel: need at least 2 points per sample, got m={m}, n={n}")
    kxx, kyy, kxy = k[:m, :m], k[m:, m:], k[:m, m:]
    f64 = torch.float64
    s_xx = kxx.sum(dtype=f64) - torch.diagonal(kxx).sum(dtype=f64)
    s_yy = kyy.sum(dtype=f64) - torch.diagonal(kyy).sum(dtype=f64)
    return float(s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2.0 * kxy.sum(dtype=f64) / (m * n))


def mmd2_unbiased(x, y, bandwidth: Bandwidth = None) -> float:
    """Unbiased MMD²_u between ``x`` [m, d] and ``y`` [n, d] with a Gaussian kernel.

    ``bandwidth``: σ, a list of σ (summed kernels), or None for the median
    heuristic on the pooled sample. Symmetric in (x, y). Can be slightly negative
    (it is unbiased, and MMD² = 0 under H0).
    """
    xt, yt = _pair(x, y)
    z = torch.cat([xt, yt])
    d2 = pairwise_sq_dists(z, z)
    if bandwidth is None:
        # Exact median of all pooled pairs, as in mmd_permutation_test.
        med = _median_from_sq_dists(d2)
        bandwidth = med if med > 0 else 1.0
    k = _kernel_from_sq_dists(d2, _bandwidth_list(bandwidth))
    return mmd2_from_kernel(k, xt.shape[0])


def mmd2_permutation_statistics(k: torch.Tensor, indicators: torch.Tensor) -> torch.Tensor:
    """MMD²_u for each split given by the rows of ``indicators`` [B, N] (1 = the
    point is in X), from the pooled kernel ``k`` [N, N] — one GEMM, no re-indexing.

    The diagonal of ``k`` is zeroed here (a copy), as the unbiased estimator
    excludes i = j terms. The GEMM runs in k's dtype, the sums in float64.
    Returns [B] float64.
    """
    a = indicators.to(dtype=k.dtype, device=k.device)
    kz = k.clone()
    kz.fill_diagonal_(0.0)
    return _stats_zero_diag(kz, a, kz.sum(1, dtype=torch.float64))


def _stats_zero_diag(kz: torch.Tensor, a: torch.Tensor, row_sums: torch.Tensor) -> torch.Tensor:
    """Statistics for the splits in ``a`` [B, N] (kz's dtype) from the zero-diagonal
    kernel ``kz`` [N, N] and its float64 row sums [N]."""
    f64 = torch.float64
    m = float(a[0].sum(dtype=f64))
    n = a.shape[1] - m
    s_xx = ((a @ kz) * a).sum(1, dtype=f64)
    s_x_all = a.to(f64) @ row_sums  # rowsum(AK) = A (K1): a matrix-vector product
    s_xy = s_x_all - s_xx  # rowsum(AK ⊙ (1 − A)) without forming 1 − A
    s_yy = row_sums.sum() - s_xx - 2.0 * s_xy
    return s_xx / (m * (m - 1)) + s_yy / (n * (n - 1)) - 2.0 * s_xy / (m * n)


def _random_indicators(b: int, n_total: int, m: int, gen: torch.Generator, device,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """B random splits: row r has ones at the first m positions of a random permutation."""
    order = torch.stack([torch.randperm(n_total, generator=gen)[:m] for _ in range(b)])
    a = torch.zeros(b, n_total, dtype=dtype)
    a.scatter_(1, order, 1.0)
    return a.to(device)


def mmd2_linear(x, y, bandwidth: Bandwidth = None) -> tuple[float, float]:
    """Linear-time MMD²_l (Gretton et al. 2012, Lemma 14): with pairs
    (x_{2i−1}, x_{2i}, y_{2i−1}, y_{2i}),

        h_i = k(x_{2i−1}, x_{2i}) + k(y_{2i−1}, y_{2i}) − k(x_{2i−1}, y_{2i}) − k(x_{2i}, y_{2i−1})

    Returns (mean h, standard error of the mean). Uses the first 2⌊min(m, n)/2⌋
    points of each sample, so shuffle first if the order is not random. O(N d)
    time and memory; the median bandwidth is taken on a ≤ 2000-point subsample.
    """
    xt, yt = _pair(x, y)
    p = min(xt.shape[0], yt.shape[0]) // 2
    if p < 2:
        raise UserError(f"mmd2_linear: need at least 4 points per sample, got {xt.shape[0]} and {yt.shape[0]}")
    bws = _bandwidth_list(_resolve_bandwidth(xt, yt, bandwidth))
    x1, x2 = xt[0 : 2 * p : 2], xt[1 : 2 * p : 2]
    y1, y2 = yt[0 : 2 * p : 2], yt[1 : 2 * p : 2]

    def k(a, b):
        return _kernel_from_sq_dists(((a - b) ** 2).sum(1), bws)

    h = k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)
    return float(h.mean()), float(h.std(unbiased=True) / math.sqrt(p))


def mmd2_block(x, y, block_size: int = 256, bandwidth: Bandwidth = None) -> tuple[float, float, int]:
    """Block MMD² (B-test, Zaremba et al. 2013): the unbiased MMD²_u on disjoint
    blocks, averaged.

    The samples are cut into the same number of blocks nb =
    max(2, min(⌊m/2⌋, ⌊n/2⌋, ⌊(m + n) / (2·block_size)⌋)), block i holding ⌊m/nb⌋ points
    of x and ⌊n/nb⌋ of y — so the sizes may differ between the samples (each block's
    MMD²_u is unbiased whatever its sizes, and the blocks are i.i.d.), and a sample
    smaller than ``block_size`` still works. Returns (mean, standard error of the mean
    over blocks, number of blocks). Memory O(((m + n)/nb)²) per block; time O(N · block · d).
    """
    xt, yt = _pair(x, y)
    if block_size < 2:
        raise UserError(f"block_size: must be >= 2, got {block_size}")
    bws = _bandwidth_list(_resolve_bandwidth(xt, yt, bandwidth))
    m, n = xt.shape[0], yt.shape[0]
    nb = min(m // 2, n // 2, max(2, (m + n) // (2 * block_size)))
    if nb < 2:
        raise UserError(f"mmd2_block: need at least 4 points per sample, got {m} and {n}")
    bx, by = m // nb, n // nb
    vals = torch.empty(nb, dtype=torch.float64)
    for i in range(nb):
        z = torch.cat([xt[i * bx:(i + 1) * bx], yt[i * by:(i + 1) * by]])
        vals[i] = mmd2_from_kernel(_kernel_from_sq_dists(pairwise_sq_dists(z, z), bws), bx)
    return float(vals.mean()), float(vals.std(unbiased=True) / math.sqrt(nb)), int(nb)


# --------------------------------------------------------------------------- test
@dataclass
class MMDResult:
    """Outcome of :func:`mmd_permutation_test`.

    ``method`` is ``"permutation"`` (exact test from one pooled kernel) or
    ``"block"`` (asymptotic normal B-test for large N; then ``permutations`` is
    0, ``null_quantiles`` is empty and ``std_error``/``blocks`` are set).
    ``bandwidth`` is one σ or the list that was summed. ``note`` says when the larger
    sample was subsampled to keep the exact test. :meth:`describe` names the test.
    """

    mmd2: float
    p_value: float
    bandwidth: float | list[float]
    permutations: int
    n_x: int
    n_y: int
    method: str = "permutation"
    null_quantiles: dict[str, float] = field(default_factory=dict)
    std_error: float | None = None
    blocks: int | None = None
    note: str = ""

    def describe(self) -> str:
        """'500 permutations' or 'block test, 23 blocks, normal approximation'."""
        if self.method == "block":
            return f"block test, {self.blocks} blocks, normal approximation"
        return f"{self.permutations} permutations"

    def decidable(self, alpha: float = 0.05) -> bool:
        """Can this test reject at ``alpha`` at all? A permutation test's smallest
        p-value is 1/(1 + B): B < ⌈1/α⌉ − 1 (19 for α = 0.05) can never reject."""
        return self.method == "block" or 1.0 / (1.0 + self.permutations) <= alpha + 1e-12

    def to_dict(self) -> dict:
        d = asdict(self)
        d["bandwidth"] = list(self.bandwidth) if isinstance(self.bandwidth, list) else float(self.bandwidth)
        return d


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mmd_permutation_test(
    x,
    y,
    permutations: int = 200,
    seed: int = 0,
    bandwidth: float | None = None,
    bandwidths: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    max_exact_points: int = DEFAULT_MAX_EXACT_POINTS,
    block_size: int = 256,
) -> MMDResult:
    """Two-sample test H0: P_x = P_y with MMD²_u and a Gaussian kernel.

    Args:
        x, y: samples [m, d], [n, d] (tensors or arrays, on x's device; float32
            inputs are computed in float32 with float64 sums, others in float64 —
            see the module docstring).
        permutations: B random relabellings of the pooled sample.
        seed / generator: randomness of the permutations (a CPU ``torch.Generator``
            takes precedence over ``seed``).
        bandwidth: one σ; ``bandwidths``: several σ whose kernels are summed;
            neither: median heuristic on the pooled sample (permutation-invariant,
            so the test stays exact).
        max_exact_points: above this pooled size, use the block test instead.
        block_size: block size of the block test.

    Returns:
        :class:`MMDResult` with p = (1 + #{stat_b ≥ stat}) / (1 + B).
    """
    if bandwidth is not None and bandwidths is not None:
        raise UserError("bandwidth, bandwidths: give one of them, not both")
    if permutations < 1:
        raise UserError(f"permutations: must be >= 1, got {permutations}")
    xt, yt = _pair(x, y)
    m, n = xt.shape[0], yt.shape[0]
    note = ""
    if m + n > max_exact_points and min(m, n) <= max_exact_points // 2:
        # One small sample: the exact test on a seeded subsample of the larger one has
        # more power than blocks of a few small-side points (and bounded memory).
        keep = max_exact_points - min(m, n)
        g = torch.Generator().manual_seed(int(seed) + 7919)
        if m > n:
            note = f"x subsampled from {m} to {keep} points for the exact test"
            xt = xt[torch.randperm(m, generator=g)[:keep].to(xt.device)]
        else:
            note = f"y subsampled from {n} to {keep} points for the exact test"
            yt = yt[torch.randperm(n, generator=g)[:keep].to(yt.device)]
        m, n = xt.shape[0], yt.shape[0]
    exact = m + n <= max_exact_points
    given = bandwidths if bandwidths is not None else bandwidth
    if given is None and exact:
        z = torch.cat([xt, yt])
        d2 = pairwise_sq_dists(z, z)
        med = _median_from_sq_dists(d2)
        bw = med if med > 0 else 1.0
    else:
        bw = _resolve_bandwidth(xt, yt, given)
        d2 = None
    bws = _bandwidth_list(bw)

    if not exact:
        gen = generator or torch.Generator().manual_seed(int(seed))
        # Blocks must be random draws: shuffle each sample before cutting blocks.
        xs = xt[torch.randperm(m, generator=gen).to(xt.device)]
        ys = yt[torch.randperm(n, generator=gen).to(xt.device)]
        mean, se, nb = mmd2_block(xs, ys, block_size=block_size, bandwidth=bws)
        p = _normal_sf(mean / se) if se > 0 else (0.0 if mean > 0 else 1.0)
        return MMDResult(mmd2=mean, p_value=p, bandwidth=bw, permutations=0, n_x=m, n_y=n,
                         method="block", std_error=se, blocks=nb)

    if d2 is None:
        z = torch.cat([xt, yt])
        d2 = pairwise_sq_dists(z, z)
    k = _kernel_from_sq_dists(d2, bws)
    del d2
    k.fill_diagonal_(0.0)  # the unbiased estimator never uses i = j terms
    row_sums = k.sum(1, dtype=torch.float64)
    n_total = m + n
    observed = torch.zeros(1, n_total, dtype=k.dtype, device=k.device)
    observed[0, :m] = 1.0
    # The observed statistic goes through the same arithmetic as the null ones, so
    # ties compare like with like.
    stat = float(_stats_zero_diag(k, observed, row_sums)[0])

    gen = generator or torch.Generator().manual_seed(int(seed))
    chunk = max(1, _PERM_CHUNK_BYTES // (2 * k.element_size() * n_total))  # A and AK rows
    null = []
    for start in range(0, permutations, chunk):
        b = min(chunk, permutations - start)
        a = _random_indicators(b, n_total, m, gen, k.device, dtype=k.dtype)
        null.append(_stats_zero_diag(k, a, row_sums))
    null_t = torch.cat(null)
    exceed = int((null_t >= stat).sum())
    p_value = (1 + exceed) / (1 + permutations)
    levels = torch.tensor(NULL_QUANTILE_LEVELS, dtype=torch.float64, device=null_t.device)
    qs = torch.quantile(null_t, levels).tolist()
    return MMDResult(
        mmd2=stat, p_value=p_value, bandwidth=bw, permutations=int(permutations), n_x=m, n_y=n,
        method="permutation", note=note,
        null_quantiles={f"q{int(round(l * 100))}": float(v) for l, v in zip(NULL_QUANTILE_LEVELS, qs)},
    )
