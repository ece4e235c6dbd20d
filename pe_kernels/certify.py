"""Certified re-rank shared by every fast path (numpy, torch, FAISS): fp32 shortlist, exact answer.

A fast path computes fp32 distances ``D[i, j]`` that differ from the exact ones. This module
bounds that difference rigorously, turns the bound into a per-row candidate threshold, and
re-ranks the candidates with ``pe_kernels.reference.exact_sq_dist``, so the result equals
``reference_search`` bit for bit.

Error bound. Write s = ||x_i||^2, t = ||y_j||^2, T = max_j t, e = ||x_i - y_j||^2 (real numbers)
and f = ``exact_sq_dist`` of the pair. Every fp32 form a backend uses is a sum, in some order,
of terms that are exact multiples (1, -1, -2) of products of inputs:

(a) shifted GEMM ``t - 2 x.y`` (numpy and torch blocks; equals e - s, and s is constant per row):
    terms y_k^2 and -2 x_k y_k; sum of absolute terms t + 2|x|.|y| <= s + 2t.
(b) full GEMM ``s + t - 2 x.y`` (FAISS with BLAS): sum of absolute terms <= 2(s + t).
(c) direct ``sum (x_k - y_k)^2`` (FAISS for small batches): terms (x_k - y_k)^2, sum e <= 2(s + t).

(using 2|x|.|y| <= 2||x|| ||y|| <= s + t). In each form a term passes through at most 2d + 2
roundings (its product or difference, at most d - 1 additions inside a norm or dot product, at
most d additions combining partial sums however a BLAS blocks or folds them, and the final
combination), so by the standard bound on floating-point sums (Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., Lemma 3.1 and Sec. 3.1), for a per-row constant c_i (s or 0)

    |D[i, j] - (e - c_i)| <= gamma32_{2d+2} * 2 (s + T),      gamma_r = r u / (1 - r u),

with u = 2^-24. Scaling by -2 is exact, a fused multiply-add only removes roundings, and this
holds for any summation order or blocking, so it does not rest on one BLAS's internals. The
float64 reference itself differs from e by at most gamma64_{d+2} * e <= gamma64_{d+2} * 2 (s + T)
(u = 2^-53). Subnormal underflow, or a kernel that flushes subnormals to zero, changes each of
the at most 4d + 4 products and sums by less than 2^-126 * 2 (1 + ||x_i|| + max_j ||y_j||), so
adds at most (8d + 8) 2^-126 (1 + ||x_i|| + max_j ||y_j||). The bound ``tol_i`` is the sum of
these three terms times a safety factor of 2, which absorbs the float64 rounding of s, T and of
tol_i itself (relative errors of order d 2^-53) with a wide margin. Altogether
``|D[i, j] - (f - c_i)| <= tol_i``.

Why the candidates contain the true top k. Let v_i be the k-th smallest fp32 ``D[i, :]``. At
least k indices j have D[i, j] <= v_i, hence f - c_i <= v_i + tol_i for them, so the k-th
smallest exact distance is at most v_i + tol_i + c_i. Any j in the exact top k (ties by index
included) has f <= that, hence D[i, j] <= f - c_i + tol_i <= v_i + 2 tol_i. So
``{j : D[i, j] <= v_i + 2 tol_i}`` holds the exact top k, and ranking it by (f, j) gives the
reference answer. The threshold is rounded up to fp32, so comparing fp32 values against it is
exact. Distances are usually spread far wider than 2 tol_i (about 1e-3 for unit vectors in 512
dimensions), so most rows have exactly k candidates and the re-rank costs little.

The fused kernel (``tiled_dot_error_bound``). The Triton kernel knows its own summation order,
so its bound is much tighter than the order-free one above. It computes ``t32 - 2 x.y`` where t32
is ||y_j||^2 summed in float64 and rounded once to fp32, and x.y is summed in chunks of ``block_d``
coordinates: each chunk is one ``tl.dot`` started from zero, and the chunk sums are added one by
one into the running value. A term then passes through at most block_d roundings inside its
chunk and ceil(d / block_d) in the running sum, instead of 2d + 2: for d = 512 and block_d = 16,
48 roundings instead of 1026. The inputs may first be rounded to bfloat16 or float16 (relative
error at most u_r, absolute error at most eta_r where results are subnormal or flushed);
products of two such values are exact in fp32, and tensor cores accumulate with truncation and
late normalisation (Fasi, Higham, Mikaitis and Pranesh, "Numerical behavior of NVIDIA tensor
cores", PeerJ Comput. Sci. 7:e330, 2021), which at most doubles each rounding error, so a
chunk's bound is scaled by an accumulation factor (4, twice what truncation needs). Rounding
the inputs moves the dot product by |x~.y~ - x.y| <= (2 u_r + u_r^2) ||x|| ||y|| +
eta_r sqrt(d) (1 + u_r) (||x|| + ||y||) + d eta_r^2 (expand (x + dx).(y + dy) with
|dx_k| <= u_r |x_k| + eta_r and Cauchy-Schwarz).

Split inputs ("bfloat16x3"). Each input is split into two bfloat16 parts, x_hi = bf16(x) and
x_lo = bf16(x - x_hi) (the difference is exact in fp32), laid out as 3 d columns
x_hi | x_hi | x_lo against y_hi | y_lo | y_hi, so the kernel's sum over slices of those columns
is the sum of the three products x_hi y_hi + x_hi y_lo + x_lo y_hi, on tensor cores, in
ceil(3 d / block_d) chunks. With u = 2^-8, |x - x_hi - x_lo| <= u^2 |x| and
|x_lo| <= u (1 + u) |x|, so the three products differ from x.y by at most
(2 u^2 + u^4 + u^2 (1 + u)^2) ||x|| ||y|| (the dropped x_lo y_lo included) and their absolute
values sum to at most (1 + u)^2 (1 + 2 u) ||x|| ||y||. Values so small that a part is subnormal
or flushed lose less than 2^-126 per rounding, product or sum (at most 16 d + 16 of them, each
at most 2^-126 (1 + ||x|| + ||y||)^2). The accuracy is close to fp32's at tensor-core speed.

A bfloat16 GEMM on the CPU (``bfloat16_gemm_error_bound``, for ``pe_kernels.bfloat16``). The
rows are rounded to bfloat16 on the host: x_h = -bf16(-2 x) / 2 and y_h = bf16(y), with
residuals dx = x - x_h and dy = y - y_h whose norms are bounded from the actual values by
``fp32_norm_upper`` (no worst-case u |x| per element: for Gaussian data ||dx|| is about
0.42 u ||x||), with ||x_h|| <= ||x|| + ||dx||. The squared norm t_j, summed in float64 and
rounded to fp32, is split into three bfloat16 parts p_j (an fp32 significand has 24 bits, so
the parts hold it exactly unless they are subnormal; the bound uses the measured
|sum(p_j) - t_j| anyway). A GEMM of the rows [bf16(-2 x), 1, 1, 1] against [y_h, p_j]
(K = d + 3 columns, plus zero columns) gives C_ij ~ sum(p_j) - 2 x_h.y_h. The bound assumes
this of the GEMM, and nothing about its order or blocking:

(M) each product of two bfloat16 values is exact in fp32 (8 + 8 significand bits), every sum
    is an fp32 addition of two fp32 values rounded faithfully (error below one ulp, so
    relative error at most 2^-23; round-to-nearest has half that), and any subnormal input,
    product or sum may be flushed to zero. The output is fp32.

Why we rely on it: the instructions accumulate that way (Intel's descriptions of VDPBF16PS and
TDPBF16PS: fp32 sums of products of bfloat16 values, round-to-nearest-even, denormals treated
as zero and flushed), and so does any fallback that widens bfloat16 to fp32 and uses fp32
arithmetic. MKL documents only the interface of ``cblas_gemm_bf16bf16f32`` (bfloat16 inputs,
fp32 results), so ``pe_kernels.bfloat16`` probes it before use with products whose exact fp32
results a bfloat16, fp16 or TF32 accumulator or output could not hold, and the tests check the
bound against MKL's own results and two fp32 summation orders. A sum of K terms, in any order,
takes at most K - 1 additions per term, so with gamma_r built on u = 2^-23

    |C_ij - S_ij| <= gamma_{K-1} (2 ||x_h|| max_j ||y_h|| + max_j sum |p_j|) + flushes,

where S_ij = sum(p_j) - 2 x_h.y_h exactly (Cauchy-Schwarz bounds sum |x_h,k y_h,k|). Flushes
lose less than 2^-126 per input times its partner (at most max(2 ||x_h||, 1, ||y_h||, |p|)),
or per product or sum; 4 K of them, each carried by at most K roundings (a factor below 2).
The inputs' rounding moves the target exactly by

    x.y - x_h.y_h = dx.y + x_h.dy,   |.| <= ||dx|| max_j ||y|| + ||x_h|| max_j ||dy||,

so |C_ij - (e_ij - s_i)| <= 2 (||dx|| Y + ||x_h|| dY) + |sum(p_j) - t_j| + the GEMM's bound
+ the float64 reference's gamma64_{d+2} 2 (s + T). The input term dominates (about 7e-3 for
unit vectors, against 5e-4 for the fp32 GEMM at d 512): its norms are upper bounds whose
float64 arithmetic errs by a few 2^-53 relative, which a factor 1 + 2^-16 covers; every other
term gets the safety factor 2 of ``distance_error_bound``. With this tol_i the argument "why
the candidates contain the true top k" above holds unchanged; candidate sets are wider (about
1.9 candidates per row for random unit vectors at d 512, 4 at d 2048), and the exact re-rank
settles them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pe_kernels.reference import DEFAULT_MAX_BLOCK_BYTES, exact_sq_dist_pairs

RERANK_BYTES_PER_CANDIDATE = 96
"""Working bytes per candidate pair in ``certify_candidates`` and ``rerank`` (index arrays,
values, sort keys and permutations); exact distances are chunked by ``max_block_bytes``."""

_U32 = 2.0**-24
_U64 = 2.0**-53
_FP32_TINY = 2.0**-126
_SAFETY = 2.0
# Keeps every fp32 intermediate (at most 2(s + T) in size, plus slack) far from overflow.
_MAX_SQ_NORM = 2.0**120


def _gamma(r: int, unit_roundoff: float) -> float:
    if r * unit_roundoff >= 1.0:
        raise ValueError(f"dimension too large for an fp32 error bound ({r} roundings)")
    return r * unit_roundoff / (1.0 - r * unit_roundoff)


def sq_norms64(rows: NDArray[np.float32]) -> NDArray[np.float64]:
    """Squared L2 norms of float32 rows, accumulated in float64 (no (c, d) temporary).

    Args:
        rows: (c, d) float32.

    Returns:
        (c,) float64.
    """
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)


def fp32_norm_upper(rows: NDArray[np.float32]) -> NDArray[np.float64]:
    """Upper bounds on the L2 norms of fp32 rows, from a fast fp32 sum of squares.

    The fp32 sum q of d squares, in any order, is within gamma32_d of the exact sum, plus less
    than 2^-149 per square where squares are subnormal, so sqrt((q + d 2^-149) / (1 -
    gamma32_d)) is at least the exact norm; it is computed in float64, whose relative error
    (a few 2^-53) the callers' factor 1 + 2^-16 covers.

    Args:
        rows: (c, d) fp32 rows of squared norm below 2^126 (their fp32 sums cannot overflow).

    Returns:
        (c,) float64 upper bounds.
    """
    dim = rows.shape[1]
    sums = np.einsum("ij,ij->i", rows, rows).astype(np.float64)
    return np.sqrt((sums + dim * 2.0**-149) / (1.0 - _gamma(dim, _U32)))


def check_fp32_range(private_sq_norms: NDArray[np.float64], max_synthetic_sq_norm: float) -> None:
    """Refuses norms so large that fp32 distances (or their bfloat16 inputs) could overflow."""
    if private_sq_norms.size and float(private_sq_norms.max()) > _MAX_SQ_NORM:
        raise ValueError("private embeddings are too large for fp32 distances; rescale them")
    if max_synthetic_sq_norm > _MAX_SQ_NORM:
        raise ValueError("synthetic embeddings are too large for fp32 distances; rescale them")


def distance_error_bound(
    private_sq_norms: NDArray[np.float64], max_synthetic_sq_norm: float, dim: int
) -> NDArray[np.float64]:
    """Per-row bound tol_i on |fp32 distance - (exact distance - c_i)| (see the module docstring).

    Args:
        private_sq_norms: (b,) float64 ||x_i||^2 of the private rows.
        max_synthetic_sq_norm: max_j ||y_j||^2 over the synthetic rows.
        dim: the embedding dimension d.

    Returns:
        (b,) float64 tol_i.

    Raises:
        ValueError: norms so large that fp32 distances could overflow, or an absurd d.
    """
    check_fp32_range(private_sq_norms, max_synthetic_sq_norm)
    scale = 2.0 * (private_sq_norms + max_synthetic_sq_norm)
    rounding = (_gamma(2 * dim + 2, _U32) + _gamma(dim + 2, _U64)) * scale
    underflow = (
        (8 * dim + 8)
        * _FP32_TINY
        * (1.0 + np.sqrt(private_sq_norms) + np.sqrt(max_synthetic_sq_norm))
    )
    return _SAFETY * (rounding + underflow)


@dataclass(frozen=True)
class RoundedInputs:
    """A format fp32 inputs are rounded to before a distance GEMM, and how that GEMM accumulates.

    Attributes:
        name: the precision's name: the torch dtype name of the format, or "bfloat16x3".
        unit_roundoff: u_r, the relative error of rounding a normal fp32 value to nearest.
        underflow: eta_r, the absolute rounding error where the result is subnormal or flushed.
        max_abs: the largest magnitude that rounds to a finite value.
        accumulation_factor: scale on the fp32 accumulation bound (1 for IEEE fp32 FMA, 4 for
            tensor-core MMA, see the module docstring).
        split: inputs are split into high and low parts of the format, three products each.
    """

    name: str
    unit_roundoff: float
    underflow: float
    max_abs: float
    accumulation_factor: float
    split: bool = False

    @property
    def storage(self) -> str:
        """The torch dtype name of the values the kernel reads."""
        return "bfloat16" if self.split else self.name


FLOAT32 = RoundedInputs("float32", 0.0, 0.0, float(np.finfo(np.float32).max), 1.0)
# bf16 has fp32's exponent range; its subnormals may be flushed (error below 2^-126).
BFLOAT16 = RoundedInputs("bfloat16", 2.0**-8, 2.0**-126, float(np.finfo(np.float32).max), 4.0)
# fp16 keeps subnormals (spacing 2^-24) on NVIDIA tensor cores; rounding errs by at most 2^-25.
FLOAT16 = RoundedInputs("float16", 2.0**-11, 2.0**-24, 65504.0, 4.0)
BFLOAT16X3 = RoundedInputs(
    "bfloat16x3", 2.0**-8, 2.0**-126, float(np.finfo(np.float32).max), 4.0, split=True
)


def tiled_dot_error_bound(
    private_sq_norms: NDArray[np.float64],
    max_synthetic_sq_norm: float,
    dim: int,
    block_d: int,
    rounding: RoundedInputs,
) -> NDArray[np.float64]:
    """Per-row bound tol_i on the fused kernel's |fp32 distance - (exact distance - ||x_i||^2)|.

    The kernel's form is described in the module docstring: fp32 ||y||^2 rounded from float64,
    minus twice x.y summed in chunks of ``block_d`` coordinates, on inputs rounded (or split)
    to ``rounding``.

    Args:
        private_sq_norms: (b,) float64 ||x_i||^2 of the unrounded private rows.
        max_synthetic_sq_norm: max_j ||y_j||^2 over the unrounded synthetic rows.
        dim: the embedding dimension d.
        block_d: coordinates per chunk (the kernel's ``BLOCK_D``).
        rounding: the input format and accumulation.

    Returns:
        (b,) float64 tol_i.

    Raises:
        ValueError: norms so large that fp32 distances could overflow, or an absurd d.
    """
    check_fp32_range(private_sq_norms, max_synthetic_sq_norm)
    u, eta = rounding.unit_roundoff, rounding.underflow
    x_norm = np.sqrt(private_sq_norms)
    y_norm = float(np.sqrt(max_synthetic_sq_norm))
    # Cauchy-Schwarz: sum_k |x_k y_k| <= ||x|| ||y|| for every synthetic row.
    dot_scale = x_norm * y_norm
    # shift: |rounded inputs' dot - x.y|; products: sum of the kernel's |products| (>= every
    # partial sum it forms).
    if rounding.split:
        columns = 3 * dim
        shift = (2 * u * u + u**4 + (u * (1 + u)) ** 2) * dot_scale
        products = (1 + u) ** 2 * (1 + 2 * u) * dot_scale
    else:
        columns = dim
        spread = np.sqrt(dim) * eta * (1 + u) * (x_norm + y_norm) + dim * eta**2
        shift = (2 * u + u * u) * dot_scale + spread
        products = (1 + u) ** 2 * dot_scale + spread
    within_chunk = rounding.accumulation_factor * _gamma(block_d, _U32)
    across_chunks = _gamma(-(-columns // block_d), _U32)
    # |computed dot - rounded inputs' dot|: a chunk's own roundings, then the running sum's.
    summing = (within_chunk + across_chunks * (1 + within_chunk)) * products
    computed_dot = products + summing
    norm = (_U32 + _gamma(dim, _U64)) * (1 + _U32) * max_synthetic_sq_norm
    # The final fp32 subtraction t32 - 2 (dot): one rounding of a value at most this large.
    final = _U32 * ((1 + _U32) ** 2 * max_synthetic_sq_norm + 2 * computed_dot)
    reference = _gamma(dim + 2, _U64) * 2.0 * (private_sq_norms + max_synthetic_sq_norm)
    underflow = (16 * dim + 16) * _FP32_TINY * (1.0 + x_norm + y_norm) ** 2
    return _SAFETY * (norm + 2.0 * (summing + shift) + final + reference + underflow)


@dataclass(frozen=True)
class Bfloat16Synthetic:
    """What ``bfloat16_gemm_error_bound`` needs of the synthetic rows, in float64.

    Attributes:
        max_sq_norm: T = max_j ||y_j||^2 (float64 sums of the fp32 rows).
        max_high_norm: max_j ||y_h,j|| of the rows rounded to bfloat16.
        max_residual_norm: max_j ||y_j - y_h,j||.
        max_parts: max_j of the sum of |parts| of the squared norm's bfloat16 split.
        max_parts_error: max_j |sum of parts - ||y_j||^2| (float64), plus the float64 sum's own
            error bound.
    """

    max_sq_norm: float
    max_high_norm: float
    max_residual_norm: float
    max_parts: float
    max_parts_error: float


def bfloat16_gemm_error_bound(
    private_sq_norms: NDArray[np.float64],
    private_high_norms: NDArray[np.float64],
    private_residual_norms: NDArray[np.float64],
    synthetic: Bfloat16Synthetic,
    dim: int,
    columns: int,
) -> NDArray[np.float64]:
    """Per-row bound tol_i on a bfloat16 GEMM's |C_ij - (exact distance - ||x_i||^2)|.

    See "A bfloat16 GEMM on the CPU" in the module docstring for the kernel's form and the
    model (M) of its arithmetic.

    Args:
        private_sq_norms: (b,) float64 s_i = ||x_i||^2 of the fp32 private rows.
        private_high_norms: (b,) float64 upper bounds on ||x_h,i|| (x_h = -bf16(-2 x) / 2).
        private_residual_norms: (b,) float64 upper bounds on ||x_i - x_h,i||.
        synthetic: the synthetic rows' norms.
        dim: the embedding dimension d.
        columns: K, the GEMM's inner dimension (d + 3 plus any zero columns).

    Returns:
        (b,) float64 tol_i.

    Raises:
        ValueError: norms so large that fp32 distances could overflow, or an absurd d.
    """
    check_fp32_range(private_sq_norms, synthetic.max_sq_norm)
    y_norm = float(np.sqrt(synthetic.max_sq_norm))
    inputs = 2.0 * (
        private_residual_norms * y_norm + private_high_norms * synthetic.max_residual_norm
    )
    # Faithful fp32 additions: relative error below 2^-23, twice round-to-nearest's.
    terms = 2.0 * private_high_norms * synthetic.max_high_norm + synthetic.max_parts
    summing = _gamma(columns, 2.0 * _U32) * terms
    # A flushed input changes its product by less than 2^-126 times its partner.
    partner = np.maximum(2.0 * private_high_norms, 1.0) + max(
        synthetic.max_high_norm, synthetic.max_parts
    )
    flushes = 2.0 * 4 * columns * _FP32_TINY * (1.0 + partner)
    reference = _gamma(dim + 2, _U64) * 2.0 * (private_sq_norms + synthetic.max_sq_norm)
    rest = summing + flushes + synthetic.max_parts_error + reference
    return (1.0 + 2.0**-16) * inputs + _SAFETY * rest


def certified_threshold(
    kth_distance: NDArray[np.float32], tol: NDArray[np.float64]
) -> NDArray[np.float32]:
    """The smallest float32 >= v_i + 2 tol_i, so ``D <= threshold`` is an exact fp32 test.

    Args:
        kth_distance: (b,) float32 v_i, the k-th smallest fp32 distance of each row.
        tol: (b,) float64 error bounds from ``distance_error_bound``.

    Returns:
        (b,) float32 thresholds.
    """
    wanted = kth_distance.astype(np.float64) + 2.0 * tol
    threshold = wanted.astype(np.float32)
    low = threshold.astype(np.float64) < wanted
    threshold[low] = np.nextafter(threshold[low], np.float32(np.inf))
    return threshold


def certify_candidates(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    values: NDArray[np.float32],
    n_rows: int,
    kept: int,
    tol: NDArray[np.float64],
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32], NDArray[np.float32]]:
    """Narrows a superset of candidate pairs to the certified set ``D <= v_i + 2 tol_i``.

    Args:
        rows: (c,) int64 pair rows in [0, n_rows).
        cols: (c,) int64 pair synthetic indices.
        values: (c,) float32 fp32 distances of the pairs. For each row they must include its
            ``kept`` smallest fp32 distances over all synthetic rows, so v_i is among them.
        n_rows: rows in the block.
        kept: min(k, m).
        tol: (n_rows,) float64 error bounds.

    Returns:
        ``(rows, cols, values, threshold)``: the pairs with ``values <= threshold[rows]`` and the
        (n_rows,) float32 certified thresholds. The pairs are the whole certified set of a row
        only if the input held every pair of that row within its threshold; callers check that.
    """
    order = np.lexsort((values, rows))
    starts = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n_rows))[:-1]))
    threshold = certified_threshold(values[order][starts + kept - 1], tol)
    within = values <= threshold[rows]
    return rows[within], cols[within], values[within], threshold


def rerank(
    private: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    candidates: tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]],
    tol: NDArray[np.float64],
    k: int,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
) -> NDArray[np.int64]:
    """Picks each row's top k candidates by (exact distance, index).

    Exact distances are computed only where the fp32 values cannot settle the order: a row
    whose candidates number exactly min(k, m) and whose sorted fp32 values are more than
    2 tol_i apart is already in exact order (D_a + 2 tol_i < D_b implies f_a < f_b), so it is
    ranked by its fp32 values; every other row is ranked by ``exact_sq_dist``.

    Args:
        private: (b, d) float32 private rows; candidate row indices refer to these.
        synthetic: (m, d) float32 synthetic rows.
        candidates: ``(rows, cols, values)``, (c,) each: pair rows, synthetic indices (no pair
            repeated) and fp32 distances. Every row must have at least min(k, m) candidates
            that contain its exact top k.
        tol: (b,) float64 error bounds of the values (``distance_error_bound``).
        k: neighbours per row.
        max_block_bytes: bound on the float64 temporaries of one chunk of exact distances.

    Returns:
        (b, k) int64 indices, padded with -1 when m < k.
    """
    n_rows, n_synthetic = private.shape[0], synthetic.shape[0]
    kept = min(k, n_synthetic)
    rows, cols, values = candidates
    counts = np.bincount(rows, minlength=n_rows)
    if n_rows and counts.min() < kept:
        raise RuntimeError("internal error: a certified candidate set has fewer than k entries")
    order = np.lexsort((cols, values, rows))
    rows, cols = rows[order], cols[order]
    key = values[order].astype(np.float64)
    # Float64 rounding of these sums is absorbed by the safety factor in tol.
    same_row = rows[1:] == rows[:-1]
    unsettled_gap = same_row & (key[1:] <= key[:-1] + 2.0 * tol[rows[1:]])
    unsettled = counts != kept
    unsettled[rows[1:][unsettled_gap]] = True
    contested = unsettled[rows]
    key[contested] = exact_sq_dist_pairs(
        private, synthetic, rows[contested], cols[contested], max_block_bytes
    )
    # Keys are compared only within a row, so fp32-settled and exact rows can share the sort.
    order = np.lexsort((cols, key, rows))
    rows, cols = rows[order], cols[order]
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(rows.size) - starts[rows]
    chosen = rank < kept
    out = np.full((n_rows, k), -1, dtype=np.int64)
    out[rows[chosen], rank[chosen]] = cols[chosen]
    return out
