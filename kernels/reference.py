"""The exact reference: what every fast backend must reproduce bit for bit.

Exactness is a definition, not an aspiration: the distance between private row x and synthetic
row y is ``exact_sq_dist`` of the pair (float64 arithmetic on the float32 inputs), and ties are
broken by the lowest synthetic index. Fast paths re-rank their candidates with the same function,
so "equal to the reference" means equal bit for bit, ties included.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from kernels.base import check_search_inputs

DEFAULT_MAX_BLOCK_BYTES = 128 * 2**20
"""Default working-memory bound of one block, in bytes (about 128 MB)."""

_CACHE_CHUNK_BYTES = 2**20
"""Cap on the temporaries of one chunk of exact distances. 88,000 pairs at d 512 took 73-80 ms in
1 MiB chunks, 190-220 ms in 256 MiB ones (their float64 differences go out to memory and back)
and about 400 ms in 2-8 MiB ones: glibc hands freed blocks of that size back to the OS, so every
chunk page-faults its temporaries in again."""


def exact_sq_dist(x_rows: NDArray[np.float32], y_rows: NDArray[np.float32]) -> NDArray[np.float64]:
    """Squared L2 distance of each pair of rows, in float64: the one definition of "exact".

    Every caller (reference and re-rank) goes through here, and each row is reduced over a
    freshly built C-ordered float64 difference, so a pair's value depends only on the pair,
    never on which other pairs share the call or on the inputs' memory layout; that is what
    makes the fast paths' re-rank bitwise equal to the reference.

    Args:
        x_rows: (c, d) float32 rows.
        y_rows: (c, d) float32 rows, paired row by row with ``x_rows``.

    Returns:
        (c,) float64 ``((x - y) ** 2).sum(axis=1)`` computed on float64 copies.
    """
    if x_rows.shape != y_rows.shape or x_rows.ndim != 2:
        raise ValueError(
            f"expected two (c, d) arrays of equal shape, got {x_rows.shape} and {y_rows.shape}"
        )
    # Casting float32 to float64 is exact, so this is (x64 - y64) without two float64 copies.
    # A C-ordered difference makes each row's sum the same loop whatever the inputs' layout.
    diff = np.subtract(x_rows, y_rows, dtype=np.float64, order="C")
    np.multiply(diff, diff, out=diff)
    return diff.sum(axis=1)


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
        max_block_bytes: bound on the float64 temporaries of one chunk.

    Returns:
        (c,) float64 exact squared distances.
    """
    dim = private.shape[1]
    # Per pair: two float32 gathers and their float64 difference, squared in place; small chunks
    # stay in cache and on the heap.
    chunk = max(1, min(max_block_bytes, _CACHE_CHUNK_BYTES) // (dim * (2 * 4 + 8)))
    out = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, chunk):
        stop = start + chunk
        out[start:stop] = exact_sq_dist(private[rows[start:stop]], synthetic[cols[start:stop]])
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

    name = "reference"

    def __init__(self, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        self.max_block_bytes = max_block_bytes

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        return reference_search(private, synthetic, k, self.max_block_bytes)
