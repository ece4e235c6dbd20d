"""The exact reference: what every fast backend must reproduce bit for bit.

Exactness is a definition, not an aspiration: the distance between private row x and synthetic
row y is ``exact_sq_dist`` of the pair (float64 arithmetic on the float32 inputs), and ties are
broken by the lowest synthetic index. Fast paths re-rank their candidates with the same function,
so "equal to the reference" means equal bit for bit, ties included.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_kernels.base import check_search_inputs

DEFAULT_MAX_BLOCK_BYTES = 128 * 2**20
"""Default working-memory bound of one block, in bytes (about 128 MB)."""

_CACHE_CHUNK_BYTES = 2**20
"""Cap on the temporaries of one chunk of exact distances, which stay in cache. 88,000 pairs at
d 512 took 71-76 ms in 1 MiB chunks and 80 ms in 16 MiB ones; before the buffers were reused
across chunks, 2-8 MiB chunks took about 400 ms (glibc handed each freed chunk back to the OS,
so the next one page-faulted in again) and the 256 MiB chunks of a default block 190-220 ms."""


def exact_sq_dist(
    x_rows: NDArray[np.float32],
    y_rows: NDArray[np.float32],
    work: NDArray[np.float64] | None = None,
) -> NDArray[np.float64]:
    """Squared L2 distance of each pair of rows, in float64: the one definition of "exact".

    Every caller (reference and re-rank) goes through here, and each row is reduced over a
    C-ordered float64 difference, so a pair's value depends only on the pair, never on which
    other pairs share the call or on the inputs' memory layout; that is what makes the fast
    paths' re-rank bitwise equal to the reference.

    Args:
        x_rows: (c, d) float32 rows.
        y_rows: (c, d) float32 rows, paired row by row with ``x_rows``.
        work: a C-contiguous (c, d) float64 array to hold the differences (a fresh one if None).

    Returns:
        (c,) float64 ``((x - y) ** 2).sum(axis=1)`` computed on float64 copies.
    """
    if x_rows.shape != y_rows.shape or x_rows.ndim != 2:
        raise ValueError(
            f"expected two (c, d) arrays of equal shape, got {x_rows.shape} and {y_rows.shape}"
        )
    if work is None:
        work = np.empty(x_rows.shape, dtype=np.float64)
    elif work.shape != x_rows.shape or work.dtype != np.float64 or not work.flags.c_contiguous:
        raise ValueError(f"work must be a C-contiguous float64 {x_rows.shape} array")
    # Casting float32 to float64 is exact, so this is (x64 - y64) without two float64 copies.
    # A C-ordered difference makes each row's sum the same loop whatever the inputs' layout.
    np.subtract(x_rows, y_rows, out=work, dtype=np.float64)
    np.multiply(work, work, out=work)
    return work.sum(axis=1)


def exact_sq_dist_pairs(
    private: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
) -> NDArray[np.float64]:
    """``exact_sq_dist(private[rows], synthetic[cols])``, in chunks of bounded memory.

    Args:
        private: (n, d) float32.
        synthetic: (m, d) float32.
        rows: (c,) indices into ``private``.
        cols: (c,) indices into ``synthetic``.
        max_block_bytes: bound on the temporaries of one chunk.

    Returns:
        (c,) float64 exact squared distances.
    """
    dim = private.shape[1]
    for name, index, limit in (
        ("rows", rows, private.shape[0]),
        ("cols", cols, synthetic.shape[0]),
    ):
        if index.size and (index.min() < 0 or index.max() >= limit):
            raise IndexError(f"{name} out of range [0, {limit})")
    # Per pair: two float32 gathers and their float64 difference, squared in place. The buffers
    # are allocated once per call: fresh ones per chunk cost page faults whenever glibc has
    # handed the last ones back to the OS (as it does for blocks of some megabytes).
    chunk = max(1, min(rows.size, min(max_block_bytes, _CACHE_CHUNK_BYTES) // (dim * (2 * 4 + 8))))
    x_rows = np.empty((chunk, dim), dtype=np.float32)
    y_rows = np.empty((chunk, dim), dtype=np.float32)
    work = np.empty((chunk, dim), dtype=np.float64)
    out = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, chunk):
        stop = min(start + chunk, rows.size)
        size = stop - start
        # Indices are checked above; mode "raise" would copy through a fresh buffer.
        np.take(private, rows[start:stop], axis=0, out=x_rows[:size], mode="clip")
        np.take(synthetic, cols[start:stop], axis=0, out=y_rows[:size], mode="clip")
        out[start:stop] = exact_sq_dist(x_rows[:size], y_rows[:size], work[:size])
    return out


def reference_search(
    private: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    k: int,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
) -> NDArray[np.int64]:
    """Brute-force exact k-NN: every pair through ``exact_sq_dist``, then a stable sort.

    Slow on purpose (float64, all n * m pairs); its memory is bounded by about
    ``max_block_bytes`` (at least one private row's m pairs at a time).

    Args:
        private: (n, d) float32.
        synthetic: (m, d) float32.
        k: neighbours per row, >= 1.
        max_block_bytes: bound on the temporaries of one chunk of pairs.

    Returns:
        (n, k) int64 indices sorted by (exact distance, index), padded with -1 when m < k.
    """
    check_search_inputs(private, synthetic, k)
    n, m = private.shape[0], synthetic.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or m == 0:
        return out
    kept = min(k, m)
    # Per pair: a row index, a column index, a distance and its sort position (8 bytes each).
    # Half the budget for the index and distance arrays, half for exact_sq_dist's chunks.
    rows_per_chunk = max(1, min(n, max_block_bytes // (2 * m * 32)))
    all_cols = np.arange(m, dtype=np.int64)
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        rows = np.repeat(np.arange(start, stop, dtype=np.int64), m)
        cols = np.tile(all_cols, stop - start)
        dist = exact_sq_dist_pairs(private, synthetic, rows, cols, max_block_bytes // 2)
        # A stable sort keeps equal distances in index order: lowest index wins ties.
        order = np.argsort(dist.reshape(stop - start, m), axis=1, kind="stable")
        out[start:stop, :kept] = order[:, :kept]
    return out


class ReferenceBackend:
    """``reference_search`` behind the backend protocol (for tests and debugging, not speed)."""

    name: ClassVar[str] = "reference"
    requires: ClassVar[str | None] = None
    on_device: ClassVar[bool] = False

    def __init__(self, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        self.max_block_bytes = max_block_bytes

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        return reference_search(private, synthetic, k, self.max_block_bytes)
