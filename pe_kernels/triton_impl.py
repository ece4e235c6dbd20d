"""The fused Triton vote kernel: tiled distances, a running shortlist per row, atomic votes.

One program owns ``block_m`` private rows. It streams the synthetic rows in tiles of ``block_n``,
computes the tile's shifted squared distances ``D = ||y||^2 - 2 x.y`` (the per-row constant
||x||^2 does not change a row's ranking), summing x.y one ``tl.dot`` per ``block_d`` slice of the
embedding, each started from zero and added once to the running sum: the order that
``pe_kernels.certify.tiled_dot_error_bound`` bounds, far tighter than an order-free bound. With
split inputs the caller lays x_hi | x_hi | x_lo against y_hi | y_lo | y_hi along the embedding,
so the same sum covers x_hi.y_hi + x_hi.y_lo + x_lo.y_hi. The kernel then merges the tile into
a running shortlist of the row's S smallest values, ties to the lowest index. The (n, m)
distance matrix never exists: device memory is the inputs plus (n, S) outputs.

At the end each row's shortlist is stored sorted by (value, index), and the row is *settled*
when its (k+1)-th value exceeds its k-th value plus a per-row window (at least twice the
certified error bound ``tol_i``): then no synthetic row outside its fp32 top k can be in its exact
top k, so the fp32 top-k *set* is exact. With ``counts`` given, settled rows add their k votes
with atomics; everything else is left to the host (``pe_kernels.triton_backend``), which re-ranks
the shortlists exactly.

Inputs are float32 (``tl.dot`` in IEEE fp32, never TF32) or bfloat16/float16 (tensor cores, fp32
accumulation). Imported only by ``pe_kernels.triton_backend``, after triton is known to be there.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

_NO_INDEX = tl.constexpr(2**31 - 1)
"""Largest int32; empty shortlist slots hold distinct indices just below it."""


# Row and column counts change from call to call (blocks, rows left for a second pass); letting
# triton specialise on them (== 1, multiples of 16) would compile the kernel again for each.
@triton.jit(do_not_specialize=["n_rows", "n_cols"])
def _shortlist_kernel(
    x_ptr,
    y_ptr,
    y_sq_ptr,
    window_ptr,
    values_ptr,
    indices_ptr,
    settled_ptr,
    counts_ptr,
    n_rows,
    n_cols,
    dim,
    stride_x,
    stride_y,
    K: tl.constexpr,
    SHORTLIST: tl.constexpr,
    SLOTS: tl.constexpr,
    VOTE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    lanes = tl.arange(0, BLOCK_N)
    depth = tl.arange(0, BLOCK_D)
    slots = tl.arange(0, SLOTS)[None, :]
    slot_ok = slots < SHORTLIST
    # Distinct placeholder indices, so exactly one slot is "the worst" even before any insert.
    best = tl.full((BLOCK_M, SLOTS), float("inf"), tl.float32)
    best_idx = tl.zeros((BLOCK_M, SLOTS), tl.int32) + (_NO_INDEX - slots)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    for start in range(0, n_cols, BLOCK_N):
        cols = start + lanes
        col_ok = cols < n_cols
        y_cols = y_ptr + cols.to(tl.int64)[None, :] * stride_y
        # -2 x.y, summed one chunk of BLOCK_D coordinates at a time (pe_kernels.certify's
        # tiled_dot_error_bound counts on this order).
        acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
        for k0 in range(0, dim, BLOCK_D):
            d_ok = (k0 + depth) < dim
            x = tl.load(
                x_rows + (k0 + depth)[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0
            )
            y = tl.load(
                y_cols + (k0 + depth)[:, None], mask=d_ok[:, None] & col_ok[None, :], other=0.0
            )
            if UPCAST:
                # The interpreter mishandles bf16 dots; widening is exact, products stay exact.
                x = x.to(tl.float32)
                y = y.to(tl.float32)
            # IEEE fp32 (never TF32) for fp32 inputs; ignored for bf16/fp16 tensor-core dots.
            # The chunk starts from zero: its roundings stay within BLOCK_D terms.
            chunk = tl.dot(x, y, input_precision="ieee")
            # One rounding per chunk. Scaling by -2 is exact, and it keeps triton from folding
            # this add into the dot's accumulator (which would sum all d terms in one chain).
            acc = acc - 2.0 * chunk
        y_sq = tl.load(y_sq_ptr + cols, mask=col_ok, other=0.0)
        dist = tl.where(col_ok[None, :], y_sq[None, :] + acc, float("inf"))
        # Take the tile's SHORTLIST smallest in (value, index) order; each replaces the row's
        # worst entry if strictly smaller. Equal values never replace: every index already in
        # the shortlist came from an earlier tile or an earlier extraction, so it is lower.
        for _ in tl.static_range(SHORTLIST):
            low, at = tl.min(dist, axis=1, return_indices=True, return_indices_tie_break_left=True)
            dist = tl.where(lanes[None, :] == at[:, None], float("inf"), dist)
            worst = tl.max(tl.where(slot_ok, best, -float("inf")), axis=1)
            is_worst = slot_ok & (best == worst[:, None])
            worst_idx = tl.max(tl.where(is_worst, best_idx, -1), axis=1)
            replace = is_worst & (best_idx == worst_idx[:, None]) & (low < worst)[:, None]
            best = tl.where(replace, low[:, None], best)
            best_idx = tl.where(replace, (start + at)[:, None], best_idx)
    # Rank of each slot in (value, index) order: its position in the stored, sorted shortlist.
    ahead = (best[:, None, :] < best[:, :, None]) | (
        (best[:, None, :] == best[:, :, None]) & (best_idx[:, None, :] < best_idx[:, :, None])
    )
    rank = tl.sum(ahead.to(tl.int32), axis=2)
    kth = tl.sum(tl.where(rank == K - 1, best, 0.0), axis=1)
    after = tl.sum(tl.where(rank == K, best, 0.0), axis=1)
    window = tl.load(window_ptr + rows, mask=row_ok, other=0.0)
    settled = row_ok & (after > kth + window)
    keep = row_ok[:, None] & slot_ok
    out = rows.to(tl.int64)[:, None] * SHORTLIST + rank
    tl.store(values_ptr + out, best, mask=keep)
    tl.store(indices_ptr + out, best_idx, mask=keep)
    tl.store(settled_ptr + rows, settled.to(tl.int8), mask=row_ok)
    if VOTE:
        vote = settled[:, None] & (rank < K)
        tl.atomic_add(counts_ptr + tl.where(vote, best_idx, 0), 1, mask=vote, sem="relaxed")


INTERPRETING = isinstance(_shortlist_kernel, InterpretedFunction)
"""True under ``TRITON_INTERPRET=1`` (read by triton when this module is first imported)."""


@dataclass(frozen=True)
class Tiles:
    """Tile sizes and launch shape of ``shortlists``.

    Attributes:
        block_m: private rows per program (>= 16, a power of two).
        block_n: synthetic rows per tile (>= 16, a power of two).
        block_d: embedding columns per ``tl.dot`` step (>= 16, a power of two).
        num_warps: warps per program.
        num_stages: software-pipelining stages of the inner loop.
    """

    block_m: int
    block_n: int
    block_d: int
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for field in ("block_m", "block_n", "block_d"):
            size = getattr(self, field)
            if size < 16 or size & (size - 1):
                raise ValueError(f"{field} must be a power of two >= 16 (tl.dot), got {size}")


# Tuned on an H200 (benchmarks/nn_histogram.py --device cuda --sweep, 2026-11-29; 11 fp32 and 7
# bf16 shapes at (n, m, d) = (1e5, 1e4, 512), (1e4, 1e4, 2048) and (1e6, 1e4, 512)). fp32 dots
# run on CUDA cores: this shape was within 5% of the best at every size (33% of cuBLAS SGEMM's
# flop rate at d 512, 21% at d 2048). Low precision runs on tensor cores (about 4.6x SGEMM's
# rate): 128x256x64 was 8-10% faster, but its unrolled shortlist code compiles so slowly that
# the exactness check no longer fit scripts/gpu_check.sh's time; fp16 shares bf16's shape. The
# split (bf16 dots over 3 d columns) kept bf16's shape: the best of 7 at (1e5, 1e4, 512) and
# (1e4, 1e4, 2048) on 2026-11-30, 10-40% ahead of the next (128x128x64 with 8 warps).
DEFAULT_TILES = {
    "float32": Tiles(64, 128, 16, num_warps=4, num_stages=3),
    "bfloat16": Tiles(64, 128, 64, num_warps=4, num_stages=3),
    "float16": Tiles(64, 128, 64, num_warps=4, num_stages=3),
    "bfloat16x3": Tiles(64, 128, 64, num_warps=4, num_stages=3),
}
INTERPRETER_TILES = Tiles(16, 16, 16, num_warps=1, num_stages=1)
"""Small tiles for ``TRITON_INTERPRET=1``, where every program runs as numpy on the CPU."""


def shortlists(
    x: Any,
    y: Any,
    y_sq: Any,
    window: Any,
    k: int,
    shortlist: int,
    counts: Any | None,
    tiles: Tiles,
) -> tuple[Any, Any, Any]:
    """Runs the kernel: each private row's ``shortlist`` smallest shifted distances.

    Args:
        x: (n, d) private rows, a torch tensor (float32, bfloat16 or float16), unit stride.
        y: (m, d) synthetic rows, same dtype and device, unit stride.
        y_sq: (m,) float32 ||y_j||^2 of the unrounded synthetic rows, rounded once to fp32.
        window: (n,) float32 settle windows (see the module docstring).
        k: neighbours per row, k < shortlist.
        shortlist: S, entries kept per row, k < S <= m.
        counts: (m,) int32 vote counts to add settled rows' votes to, or None.
        tiles: tile sizes.

    Returns:
        ``(values, indices, settled)``: (n, S) float32 shifted distances sorted by (value,
        index), (n, S) int32 synthetic indices, (n,) bool settled flags.
    """
    import torch

    n_rows = x.shape[0]
    n_cols = y.shape[0]
    if not 0 < k < shortlist <= n_cols:
        raise ValueError(f"need 0 < k < shortlist <= m, got k={k} S={shortlist} m={n_cols}")
    if x.dtype != y.dtype or y_sq.dtype != torch.float32:
        raise TypeError(
            f"x and y must share a dtype and y_sq be float32, got {x.dtype}, "
            f"{y.dtype}, {y_sq.dtype}"
        )
    values = torch.empty((n_rows, shortlist), dtype=torch.float32, device=x.device)
    indices = torch.empty((n_rows, shortlist), dtype=torch.int32, device=x.device)
    settled = torch.empty(n_rows, dtype=torch.int8, device=x.device)
    if n_rows == 0:
        return values, indices, settled.bool()
    grid = (triton.cdiv(n_rows, tiles.block_m),)
    # Triton launches on the current CUDA device, which need not be the tensors' one.
    on_device = torch.cuda.device(x.device) if x.device.type == "cuda" else nullcontext()
    with on_device:
        _launch(grid, x, y, y_sq, window, values, indices, settled, counts, k, shortlist, tiles)
    return values, indices, settled.bool()


def _launch(
    grid: tuple[int],
    x: Any,
    y: Any,
    y_sq: Any,
    window: Any,
    values: Any,
    indices: Any,
    settled: Any,
    counts: Any | None,
    k: int,
    shortlist: int,
    tiles: Tiles,
) -> None:
    n_rows, dim = x.shape
    _shortlist_kernel[grid](
        x,
        y,
        y_sq,
        window,
        values,
        indices,
        settled,
        values if counts is None else counts,
        n_rows,
        y.shape[0],
        dim,
        x.stride(0),
        y.stride(0),
        K=k,
        SHORTLIST=shortlist,
        SLOTS=triton.next_power_of_2(shortlist),
        VOTE=counts is not None,
        UPCAST=INTERPRETING and x.dtype != y_sq.dtype,
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_D=tiles.block_d,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        # The error bound counts every rounding, so contracting a*b+c into an FMA is safe.
        enable_fp_fusion=True,
    )
