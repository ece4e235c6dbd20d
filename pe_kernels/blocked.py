"""Blocked exact k-NN on CPU BLAS (numpy) or torch: tiled fp32 GEMM, then a certified re-rank.

For a block of private rows X_b the fp32 pass computes ``D = ||y||^2 - 2 X_b Y^T`` (the squared
distance minus the per-row constant ||x||^2, which does not change a row's ranking), takes each
row's k-th smallest value (a min for k = 1, a top-k or a cheap upper bound otherwise), keeps every
synthetic index within the certified threshold of ``pe_kernels.certify``; the candidates are then
ranked by the exact float64 distance, so results equal ``reference_search`` bit for bit.

Working memory is bounded by ``max_block_bytes`` whatever n is, besides one float32 copy of the
synthetic rows (numpy) or of them on the device (torch): a block holds as many private rows as its
fp32 distances, selection temporaries, candidate mask and min(k, m) candidates per row allow (at
least one row). Rows with more candidates (near-ties within the certified window) add
``RERANK_BYTES_PER_CANDIDATE`` each; only massive ties make that noticeable.

The numpy path runs one worker thread per core, each with a one-thread BLAS and its own buffers;
workers take blocks as they become free and run GEMM, selection and re-rank on them. numpy's
selection passes and the re-rank are single-threaded, so with one BLAS spanning all cores the
other cores idle through them; with a worker per core they overlap the other workers' GEMMs.
Every worker gets the same number of blocks. On 2 cores the exact search takes 0.8-1.05x the time
of plain FAISS ``IndexFlatL2`` from d 64 to 2048 (``benchmarks/nn_histogram.py``;
``pe_kernels.dispatch.CPU_BACKEND`` has the figures).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import ThreadpoolController

from pe_kernels.base import check_search_inputs
from pe_kernels.certify import (
    RERANK_BYTES_PER_CANDIDATE,
    certified_threshold,
    certify_candidates,
    distance_error_bound,
    rerank,
    sq_norms64,
)
from pe_kernels.reference import DEFAULT_MAX_BLOCK_BYTES

_Candidates = tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]


class _CandidateKernel(Protocol):
    """The library-specific half of a blocked search, built once per synthetic set."""

    def pair_bytes(self, kept: int) -> int:
        """Working bytes per (private row, synthetic row) cell of a block, for min(k, m) = kept."""
        ...

    def prepare(
        self, block: NDArray[np.float32], max_synthetic_sq_norm: float
    ) -> NDArray[np.float64]:
        """Takes the next block of private rows; returns tol_i, its distances' error bounds.

        The bound depends on how the kernel computes its distances (fp32 GEMM, or a rounded
        one: ``pe_kernels.certify``).
        """
        ...

    def candidates(self, tol: NDArray[np.float64], kept: int) -> _Candidates:
        """Returns (rows, cols, fp32 values) of every pair of the prepared block within its
        threshold."""
        ...


def _block_layout(
    n_synthetic: int, dim: int, kept: int, pair_bytes: int, max_block_bytes: int
) -> tuple[int, int]:
    """(private rows per block, bytes for the exact re-rank's chunks) within a memory budget."""
    # Per private row: its pairs, its (usually min(k, m)) candidates and a float32 copy of it.
    row_bytes = n_synthetic * pair_bytes + kept * RERANK_BYTES_PER_CANDIDATE + dim * 4
    # A quarter of the budget goes to the exact re-rank's chunks, the rest to the fp32 block.
    rerank_bytes = max_block_bytes // 4
    return max(1, (max_block_bytes - rerank_bytes) // row_bytes), rerank_bytes


def blocked_search(
    private: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    k: int,
    kernel: _CandidateKernel,
    max_block_bytes: int,
    max_synthetic_sq_norm: float | None = None,
) -> NDArray[np.int64]:
    """Runs ``kernel`` over blocks of private rows and re-ranks each block's candidates.

    Args:
        private: (n, d) float32.
        synthetic: (m, d) float32, the rows ``kernel`` was built on.
        k: neighbours per row.
        kernel: the fp32 candidate generator.
        max_block_bytes: working-memory bound of one block.
        max_synthetic_sq_norm: max_j ||y_j||^2 in float64 if already known.

    Returns:
        (n, k) int64 indices sorted by (exact distance, index), padded with -1 when m < k.
    """
    n, dim = private.shape
    n_synthetic = synthetic.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or n_synthetic == 0:
        return out
    kept = min(k, n_synthetic)
    if max_synthetic_sq_norm is None:
        max_synthetic_sq_norm = float(sq_norms64(synthetic).max())
    block_rows, rerank_bytes = _block_layout(
        n_synthetic, dim, kept, kernel.pair_bytes(kept), max_block_bytes
    )
    for start in range(0, n, block_rows):
        block = private[start : start + block_rows]
        tol = kernel.prepare(block, max_synthetic_sq_norm)
        if n_synthetic <= k:
            # Every synthetic row is a neighbour and only the exact order is left to find; equal
            # placeholder values settle no order, so the re-rank computes it exactly.
            candidates = (
                np.repeat(np.arange(block.shape[0], dtype=np.int64), n_synthetic),
                np.tile(np.arange(n_synthetic, dtype=np.int64), block.shape[0]),
                np.zeros(block.shape[0] * n_synthetic, dtype=np.float32),
            )
        else:
            candidates = kernel.candidates(tol, kept)
        out[start : start + block.shape[0]] = rerank(
            block, synthetic, candidates, tol, k, rerank_bytes
        )
    return out


# Group minima take 1/_GROUPS of a row; 16 makes them cheap next to the GEMM while their k-th
# smallest stays close to the row's (most rows then need no candidate beyond the certified set).
_GROUPS = 16


def _group_min_kth(dist: NDArray[np.float32], kept: int) -> NDArray[np.float32]:
    """An upper bound on each row's kept-th smallest value, at a fraction of a partition's cost.

    The columns are split into disjoint groups (column c, c + w, c + 2w, ...) and reduced to
    their minima; the kept smallest group minima are kept distinct entries of the row, so their
    largest bounds the row's kept-th smallest value from above.
    """
    n_synthetic = dist.shape[1]
    groups = max(1, min(_GROUPS, n_synthetic // kept))
    width = -(-n_synthetic // groups)
    minima = dist[:, :width].copy()
    for start in range(width, n_synthetic, width):
        segment = dist[:, start : start + width]
        np.minimum(minima[:, : segment.shape[1]], segment, out=minima[:, : segment.shape[1]])
    return np.partition(minima, kept - 1, axis=1)[:, kept - 1]


_BLAS = ThreadpoolController()

# A worker's block cap: about 1,600 GEMM rows at m = 1e4. Two one-thread GEMMs side by side ran
# at 204 GFLOP/s with 800-row blocks and 207-215 with 1,600 (d 513 and 2049), as each packs the
# synthetic rows once per block; the whole search took 3-4% less at (1e5, 1e4, 512) than with a
# 32 MiB cap, although buffers above glibc's largest mmap threshold (32 MiB) take fresh pages on
# every search (about 2 us of page fault per 4 KiB).
_WORKER_BLOCK_BYTES = 64 * 2**20


def default_threads() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_threads(threads: int | None) -> int:
    """A blocked backend's worker threads: ``threads``, or the usable cores when None.

    Raises:
        ValueError: fewer than 1.
    """
    chosen = default_threads() if threads is None else threads
    if chosen < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return chosen


def _augmented(synthetic: NDArray[np.float32]) -> NDArray[np.float32]:
    """(m, d + 1) rows [y, ||y||^2], so one GEMM with rows [-2x, 1] gives ||y||^2 - 2 x.y.

    That saves a pass over the distances; the norm is one more term of the same sum, so the error
    bound holds.
    """
    n_synthetic, dim = synthetic.shape
    augmented = np.empty((n_synthetic, dim + 1), dtype=np.float32)
    augmented[:, :dim] = synthetic
    np.einsum("ij,ij->i", synthetic, synthetic, out=augmented[:, dim])
    return augmented


class _NumpyKernel:
    def __init__(self, augmented: NDArray[np.float32]) -> None:
        self.augmented = augmented
        # Reused across blocks (the first block is the largest): fresh per-block buffers of this
        # size fragment the heap and make peak memory creep up with n.
        self._rows = np.empty((0, augmented.shape[1]), dtype=np.float32)
        self._dist = np.empty((0, augmented.shape[0]), dtype=np.float32)
        self._mask = np.empty((0, augmented.shape[0]), dtype=bool)
        self._prepared = 0

    @staticmethod
    def pair_bytes(kept: int) -> int:
        # fp32 distances; for k > 1 also the candidate mask and group minima (plus their
        # partition copy) that take 1/_GROUPS of a row each.
        return 4 if kept == 1 else 4 + 1 + 1

    def prepare(
        self, block: NDArray[np.float32], max_synthetic_sq_norm: float
    ) -> NDArray[np.float64]:
        rows = block.shape[0]
        if self._rows.shape[0] < rows:
            self._rows = np.empty((rows, self._rows.shape[1]), dtype=np.float32)
            self._rows[:, -1] = 1.0
        # Scaling by -2 is exact, so the GEMM's own roundings are the only ones.
        np.multiply(block, np.float32(-2.0), out=self._rows[:rows, :-1])
        self._prepared = rows
        return distance_error_bound(sq_norms64(block), max_synthetic_sq_norm, block.shape[1])

    def candidates(self, tol: NDArray[np.float64], kept: int) -> _Candidates:
        rows = self._prepared
        if self._dist.shape[0] < rows:
            self._dist = np.empty((rows, self._dist.shape[1]), dtype=np.float32)
        if kept > 1 and self._mask.shape[0] < rows:
            self._mask = np.empty((rows, self._mask.shape[1]), dtype=bool)
        dist = self._dist[:rows]
        np.matmul(self._rows[:rows], self.augmented.T, out=dist)
        return select_candidates(dist, self._mask[:rows], tol, kept)


def select_candidates(
    dist: NDArray[np.float32],
    mask: NDArray[np.bool_],
    tol: NDArray[np.float64],
    kept: int,
    *,
    crowded: bool = False,
) -> _Candidates:
    """The certified candidates of a C-contiguous block of fp32 distances, using ``mask``.

    Args:
        dist: (b, m) fp32 distances (shifted by a per-row constant), m >= 2; used as scratch
            space and restored.
        mask: (b, m) boolean scratch space (unused for kept = 1 unless ``crowded``).
        tol: (b,) float64 error bounds.
        kept: min(k, m).
        crowded: most rows are expected to have several candidates (a wide bound, as a
            bfloat16 GEMM's): for kept = 1, one pass for the minima and one for the mask of
            the whole block, instead of gathering the crowded rows.
    """
    if kept == 1:
        if crowded:
            np.less_equal(dist, certified_threshold(dist.min(axis=1), tol)[:, None], out=mask)
            return _flat_pairs(dist, np.flatnonzero(mask))
        return _nearest_candidates(dist, tol)
    # A full partition costs as much as the GEMM; instead shortlist below a cheap upper bound
    # of the k-th value (a superset of the certified set) and certify that.
    upper = certified_threshold(_group_min_kth(dist, kept), tol)
    np.less_equal(dist, upper[:, None], out=mask)
    rows, cols, values = _flat_pairs(dist, np.flatnonzero(mask))
    rows, cols, values, _ = certify_candidates(rows, cols, values, len(dist), kept, tol)
    return rows, cols, values


def _nearest_candidates(dist: NDArray[np.float32], tol: NDArray[np.float64]) -> _Candidates:
    """``select_candidates`` for k = 1, in two passes over ``dist`` and no mask over the block.

    Most rows have a single candidate: their nearest fp32 value lies more than 2 tol_i below the
    next one. Hiding each row's nearest value and taking the minimum again finds the rows with a
    second candidate; only those are scanned for their whole certified set.
    """
    rows = np.arange(len(dist))
    nearest = dist.argmin(axis=1)
    best = dist[rows, nearest]
    threshold = certified_threshold(best, tol)
    dist[rows, nearest] = np.inf
    crowded = np.flatnonzero(dist.min(axis=1) <= threshold)
    dist[rows, nearest] = best
    # Flat positions: numpy's two-dimensional nonzero took 4.5x as long (about 30% of rows are
    # crowded at d 2048, where the bound is wider).
    crowded_dist = dist[crowded]
    within_rows, within_cols, within_values = _flat_pairs(
        crowded_dist, np.flatnonzero(crowded_dist <= threshold[crowded, None])
    )
    alone = np.ones(len(dist), dtype=bool)
    alone[crowded] = False
    return (
        np.concatenate([rows[alone], crowded[within_rows]]).astype(np.int64),
        np.concatenate([nearest[alone], within_cols]).astype(np.int64),
        np.concatenate([best[alone], within_values]),
    )


def _flat_pairs(dist: NDArray[np.float32], flat: NDArray[np.intp]) -> _Candidates:
    """(rows, cols, values) of the flat positions ``flat`` of the C-contiguous ``dist``."""
    rows, cols = np.divmod(flat.astype(np.int64), dist.shape[1])
    return rows, cols, dist.reshape(-1)[flat]


class NumpyBlockedBackend:
    """Exact k-NN by blocked numpy (BLAS) fp32 GEMM plus a certified float64 re-rank.

    Args:
        max_block_bytes: working-memory bound of the blocks of all workers together (~128 MB
            default); each worker's share is also capped at ``_WORKER_BLOCK_BYTES``.
        threads: worker threads, each with a one-thread BLAS; default: the usable CPU cores.
    """

    name: ClassVar[str] = "numpy-blocked"
    requires: ClassVar[str | None] = None
    on_device: ClassVar[bool] = False

    def __init__(
        self, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES, threads: int | None = None
    ) -> None:
        self.max_block_bytes = max_block_bytes
        self.threads = worker_threads(threads)

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        check_search_inputs(private, synthetic, k)
        augmented = _augmented(synthetic)
        return worker_search(
            private,
            synthetic,
            k,
            lambda: _NumpyKernel(augmented),
            _NumpyKernel.pair_bytes,
            self.threads,
            self.max_block_bytes,
        )


def worker_search(
    private: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    k: int,
    make_kernel: Callable[[], _CandidateKernel],
    pair_bytes: Callable[[int], int],
    threads: int,
    max_block_bytes: int,
    worker_block_bytes: int = _WORKER_BLOCK_BYTES,
) -> NDArray[np.int64]:
    """``blocked_search`` on worker threads, each with its own kernel and a one-thread BLAS.

    Args:
        private: (n, d) float32, checked.
        synthetic: (m, d) float32, checked.
        k: neighbours per row.
        make_kernel: builds one worker's kernel (its buffers are the worker's own).
        pair_bytes: the kernels' ``pair_bytes``.
        threads: worker threads.
        max_block_bytes: working-memory bound of all workers' blocks together.
        worker_block_bytes: a cap on each worker's share (the best block size for its GEMM).

    Returns:
        (n, k) int64, as ``blocked_search``.
    """
    budget = min(max_block_bytes // threads, worker_block_bytes)
    if threads == 1 or len(private) == 0 or len(synthetic) == 0:
        return blocked_search(private, synthetic, k, make_kernel(), budget)
    # Blocks go to whichever worker is free, so a core slowed by another process delays
    # only its current block. Each worker keeps its own kernel buffers for the whole call.
    n_synthetic, dim = synthetic.shape
    kept = min(k, n_synthetic)
    rows, _ = _block_layout(n_synthetic, dim, kept, pair_bytes(kept), budget)
    # The same number of blocks for every worker, sizes within one row, so no core idles
    # through a last block alone (13 blocks on 2 workers left one idle for 7% of the call
    # at (1e4, 1e4, 2048)).
    n = len(private)
    blocks = max(1, -(-n // (rows * threads))) * threads
    bounds = [i * n // blocks for i in range(blocks + 1)]
    max_synthetic_sq_norm = float(sq_norms64(synthetic).max())
    local = threading.local()

    def block(start: int, stop: int) -> NDArray[np.int64]:
        if not hasattr(local, "kernel"):
            local.kernel = make_kernel()
        return blocked_search(
            private[start:stop], synthetic, k, local.kernel, budget, max_synthetic_sq_norm
        )

    # One BLAS thread per worker: the workers already occupy every core.
    with (
        _BLAS.limit(limits=1, user_api="blas"),
        ThreadPoolExecutor(threads, thread_name_prefix="blocked-worker") as pool,
    ):
        found = [part for part in pool.map(block, bounds[:-1], bounds[1:]) if len(part)]
    return np.concatenate(found) if found else np.full((0, k), -1, dtype=np.int64)


def _check_ieee_fp32_matmul(torch: Any, device_type: str) -> None:
    """Refuses reduced-precision fp32 matmul (TF32, bf16): the error bound assumes IEEE fp32."""
    if device_type == "cuda":
        setting = torch.backends.cuda.matmul.fp32_precision
    else:
        setting = torch.backends.mkldnn.matmul.fp32_precision
    if setting == "none":
        setting = torch.backends.fp32_precision
    if setting not in ("none", "ieee"):
        raise RuntimeError(
            f"torch fp32 matmul precision on {device_type} is {setting!r}; the torch-blocked "
            "backend needs IEEE fp32 ('ieee') for its exactness certificate"
        )


def device_rows(torch: Any, array: NDArray[np.float32], device: Any) -> Any:
    """A float32 tensor of C-contiguous rows (unit column stride, as kernels read) on ``device``.

    Copies on the host only when the rows are strided or read-only (torch.from_numpy warns on
    read-only arrays, e.g. frozen Samples); a C-contiguous float32 block goes straight to the
    device. On the CPU the tensor shares the array's memory; callers only read it.
    """
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, dtype=np.float32, order="C")
    return torch.from_numpy(array).to(device)


class TorchKernel:
    """The torch half of ``blocked_search``: fp32 GEMM blocks and candidate selection.

    Args:
        torch: the torch module.
        rows: (m, d) float32 tensor of the synthetic rows, on the device the GEMMs run on.

    Raises:
        RuntimeError: torch's fp32 matmul runs at reduced precision (TF32, bf16) there.
    """

    def pair_bytes(self, kept: int) -> int:
        # fp32 distances and the candidate mask; group minima (a sixth of a byte) on CPU, on a
        # device top-k keeps only (rows, k) outputs instead.
        return 4 + 1 + 1

    def __init__(self, torch: Any, rows: Any) -> None:
        _check_ieee_fp32_matmul(torch, rows.device.type)
        self.torch = torch
        self.device = rows.device
        # numpy's selection passes over shared memory are faster than torch's on CPU.
        self.select_with_numpy = self.device.type == "cpu"
        # The same augmented GEMM as the numpy kernel: [-2x, 1] . [y, ||y||^2].
        self.augmented = torch.cat([rows, (rows * rows).sum(dim=1, keepdim=True)], dim=1)
        # Reused across blocks, as in the numpy kernel.
        self._rows = torch.empty((0, rows.shape[1] + 1), device=self.device)
        self._dist = torch.empty((0, rows.shape[0]), device=self.device)
        self._mask = torch.empty((0, rows.shape[0]), dtype=torch.bool, device=self.device)
        self._prepared = 0

    def prepare(
        self, block: NDArray[np.float32], max_synthetic_sq_norm: float
    ) -> NDArray[np.float64]:
        torch = self.torch
        rows = block.shape[0]
        if self._dist.shape[0] < rows:
            self._rows = torch.ones((rows, self._rows.shape[1]), device=self.device)
            self._dist = torch.empty((rows, self._dist.shape[1]), device=self.device)
            self._mask = torch.empty(self._dist.shape, dtype=torch.bool, device=self.device)
        # Scaling by -2 is exact, so the GEMM's own roundings are the only ones.
        torch.mul(device_rows(torch, block, self.device), -2.0, out=self._rows[:rows, :-1])
        self._prepared = rows
        return distance_error_bound(sq_norms64(block), max_synthetic_sq_norm, block.shape[1])

    def candidates(self, tol: NDArray[np.float64], kept: int) -> _Candidates:
        torch = self.torch
        rows = self._prepared
        augmented_rows, dist, mask = self._rows[:rows], self._dist[:rows], self._mask[:rows]
        torch.mm(augmented_rows, self.augmented.T, out=dist)
        if self.select_with_numpy:
            return select_candidates(dist.numpy(), mask.numpy(), tol, kept)
        if kept == 1:
            kth = dist.amin(dim=1)
        else:
            kth = torch.topk(dist, kept, dim=1, largest=False, sorted=False).values.amax(dim=1)
        threshold = certified_threshold(kth.cpu().numpy(), tol)
        torch.le(dist, torch.from_numpy(threshold).to(self.device)[:, None], out=mask)
        flat = mask.reshape(-1).nonzero().reshape(-1)
        rows_np, cols_np = np.divmod(flat.cpu().numpy(), dist.shape[1])
        return rows_np, cols_np, dist.reshape(-1)[flat].cpu().numpy()


DEVICE_MAX_BLOCK_BYTES = 2**30
"""Default block bound on a GPU. Each block waits for the device three times and copies its
candidates back; at (n 1e5, m 1e4, d 512) the CPU default makes 65 blocks of about 1,550 rows,
and on an H200 torch-blocked took 0.29-0.31 s end to end. 1 GiB makes that 8 blocks: 0.23-0.28 s
(the host re-rank of every row is most of the rest); device memory is rarely that short."""


def default_block_bytes(torch: Any, device: str) -> int:
    """A device backend's default block bound: ``DEVICE_MAX_BLOCK_BYTES`` off the CPU."""
    on_cpu = torch.device(device).type == "cpu"
    return DEFAULT_MAX_BLOCK_BYTES if on_cpu else DEVICE_MAX_BLOCK_BYTES


class TorchBlockedBackend:
    """Exact k-NN by blocked torch fp32 GEMM (CPU or GPU) plus a certified float64 re-rank.

    Args:
        max_block_bytes: working-memory bound of one block of private rows; default ~128 MB on
            the CPU, ``DEVICE_MAX_BLOCK_BYTES`` on other devices.
        device: torch device for the GEMM ("cpu", "cuda", ...); the re-rank runs on CPU.
    """

    name: ClassVar[str] = "torch-blocked"
    requires: ClassVar[str | None] = None
    on_device: ClassVar[bool] = True

    def __init__(self, max_block_bytes: int | None = None, device: str = "cpu") -> None:
        import torch

        self._torch = torch
        self.max_block_bytes = (
            default_block_bytes(torch, device) if max_block_bytes is None else max_block_bytes
        )
        self.device = device

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        check_search_inputs(private, synthetic, k)
        kernel = TorchKernel(self._torch, device_rows(self._torch, synthetic, self.device))
        return blocked_search(private, synthetic, k, kernel, self.max_block_bytes)
