"""Exact k-NN votes on a GPU with the fused Triton kernel of ``kernels.triton_impl``.

The kernel streams private and synthetic tiles through ``tl.dot`` and keeps each private row's
S = k + ``SHORTLIST_EXTRA`` smallest fp32 distances (S <= m), so memory stays O((n + m) d + n S)
whatever n and m. A private row then ends in one of three ways, and every way is exact:

1. *settled in the kernel*: its (k+1)-th value exceeds its k-th by more than twice the certified
   bound of ``kernels.certify`` (plus fp32 slack for the in-kernel comparison), so its fp32 top-k
   set is the exact one; for votes the kernel adds them with atomics and nothing leaves the GPU;
2. *re-ranked on the host*: its shortlist holds every synthetic row within the certified
   threshold (the S-th value exceeds it, or S = m), so ``kernels.certify.rerank`` of the
   shortlist gives the reference answer, as in the FAISS backend;
3. *cut short*: more rows tie within the threshold than the shortlist holds; with low-precision
   inputs such rows get an fp32 pass of the kernel first, and whatever is still cut short goes
   to the exact ``torch-blocked`` backend on the same device.

Precision. The window comes from ``kernels.certify.tiled_dot_error_bound``, which knows the
kernel's summation order (one chunk per ``block_d`` slice): for unit vectors in 512 dimensions
it is about 1.2e-5, 40x below the order-free fp32 bound, so almost every row settles in the
kernel. "float32" runs ``tl.dot`` in IEEE fp32 (never TF32, whose 10-bit mantissa the bound does
not cover) on CUDA cores. "bfloat16x3" splits each input into two bfloat16 parts and sums three
tensor-core products per coordinate: accuracy near fp32's (window about 2.5e-4 there; about 2% of
rows of random unit vectors take the fp32 pass) at tensor-core speed. "bfloat16" and "float16"
round the inputs once: their windows (about 3e-2 and 4e-3) leave most rows of such data to the
fp32 pass, so they pay only where distances are well separated. The rows a rounded pass leaves
unsure take the fp32 pass, so votes always equal ``reference_search``. Float16 refuses inputs
beyond its range (|value| > 65504).

Noise. The original design asked for Gaussian noise fused into this kernel (Philox floats added
to the counts on the GPU). The counts stay integer and go to the host's exact discrete-Gaussian
sampler instead: the noisy vector has only m entries (about 10 us each on the CPU), and floating-
point Gaussian samples from a counter-based generator are not an exact discrete Gaussian (their
rounding and tails leak through the gaps between representable floats, Mironov 2012), so a fused
noise kernel would break the accounted guarantee to save milliseconds. The clean counts never
leave memory.

Runs on CUDA devices; on the CPU only under ``TRITON_INTERPRET=1`` (tests), which must be set
before the process starts. Triton is an optional extra (``pip install 'privevo[triton]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from kernels.base import check_search_inputs
from kernels.blocked import TorchBlockedBackend
from kernels.certify import (
    BFLOAT16,
    BFLOAT16X3,
    FLOAT16,
    FLOAT32,
    RERANK_BYTES_PER_CANDIDATE,
    RoundedInputs,
    certified_threshold,
    certify_candidates,
    rerank,
    sq_norms64,
    tiled_dot_error_bound,
)
from kernels.reference import DEFAULT_MAX_BLOCK_BYTES
from pe_core.errors import import_optional

if TYPE_CHECKING:
    from kernels.triton_impl import Tiles

SHORTLIST_EXTRA = 3
"""Shortlist entries beyond k: one to settle rows in the kernel, the rest to complete the
re-rank of near-ties without the fallback."""

PRECISIONS: dict[str, RoundedInputs] = {
    rounding.name: rounding for rounding in (FLOAT32, BFLOAT16X3, BFLOAT16, FLOAT16)
}

# The in-kernel test ``after > kth + window`` rounds one fp32 sum, by at most 2^-24 (|kth| +
# window) with |kth| <= 2 (s + T) + tol; a window of 2 tol + 2^-21 (s + T + 2 tol) (twice the
# argument of certified_threshold) covers that four times over, so the rounded test implies
# after > kth + 2 tol.
_SLACK = 2.0**-22


class TritonBackend:
    """Exact k-NN and votes: fused Triton distances, shortlist and atomic votes, exact re-rank.

    Args:
        device: a CUDA torch device ("cuda", "cuda:1"); "cpu" only under TRITON_INTERPRET=1.
        precision: "float32", "bfloat16x3", "bfloat16" or "float16": the ``tl.dot`` inputs.
        max_block_bytes: working-memory bound (device and host) of one block of private rows.
        tiles: tile sizes overriding the per-precision default (``triton_impl.DEFAULT_TILES``).

    Raises:
        MissingDependencyError: triton is not installed.
        ValueError: an unknown precision, or a CPU device without the interpreter.
    """

    name = "triton"

    def __init__(
        self,
        device: str = "cuda",
        precision: str = "float32",
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
        tiles: Tiles | None = None,
    ) -> None:
        import_optional("triton", "triton")
        import torch

        from kernels import triton_impl

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {sorted(PRECISIONS)}")
        if torch.device(device).type == "cpu" and not triton_impl.INTERPRETING:
            raise ValueError(
                "the triton backend needs a CUDA device; on CPU it runs only with "
                "TRITON_INTERPRET=1 set before the process starts (for tests); use "
                "'numpy-blocked' or 'auto' on CPU"
            )
        self._torch = torch
        self._impl = triton_impl
        self.device = device
        self.precision = precision
        self.max_block_bytes = max_block_bytes

        def default_tiles(precision: str) -> Tiles:
            if triton_impl.INTERPRETING:
                return triton_impl.INTERPRETER_TILES
            return triton_impl.DEFAULT_TILES[precision]

        self.tiles = default_tiles(precision) if tiles is None else tiles
        # Rows a low-precision pass leaves cut short take an fp32 pass with fp32's tiles.
        self._fp32_tiles = default_tiles("float32")
        self._fallback = TorchBlockedBackend(max_block_bytes, device=device)

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        """Each private row's k nearest synthetic rows, as ``NearestNeighbourBackend.search``."""
        check_search_inputs(private, synthetic, k)
        n, n_synthetic = private.shape[0], synthetic.shape[0]
        if n == 0 or n_synthetic <= k:
            # Every synthetic row is a neighbour; only their exact order is left to find.
            return self._fallback.search(private, synthetic, k)
        out = np.full((n, k), -1, dtype=np.int64)
        self._run(private, synthetic, k, out=out)
        return out

    def votes(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        """Vote counts, as ``kernels.base.vote_histogram``; settled rows vote on the device.

        Args:
            private: (n, d) float32 private embeddings.
            synthetic: (m, d) float32 synthetic embeddings, m >= 1.
            k: neighbours per record.

        Returns:
            (m,) int64 counts summing to n * min(k, m).
        """
        check_search_inputs(private, synthetic, k)
        n, n_synthetic = private.shape[0], synthetic.shape[0]
        if n == 0 or n_synthetic <= k:
            # Each record votes once for every synthetic row.
            return np.full(n_synthetic, n, dtype=np.int64)
        counts = self._torch.zeros(n_synthetic, dtype=self._torch.int32, device=self.device)
        host_counts = np.zeros(n_synthetic, dtype=np.int64)
        self._run(private, synthetic, k, counts=counts, host_counts=host_counts)
        return counts.cpu().numpy().astype(np.int64) + host_counts

    def _run(
        self,
        private: NDArray[np.float32],
        synthetic: NDArray[np.float32],
        k: int,
        *,
        out: NDArray[np.int64] | None = None,
        counts: Any = None,
        host_counts: NDArray[np.int64] | None = None,
    ) -> None:
        """Fills ``out`` (search) or ``counts`` and ``host_counts`` (votes); requires m > k."""
        torch = self._torch
        n, dim = private.shape
        n_synthetic = synthetic.shape[0]
        rounding = PRECISIONS[self.precision]
        _check_range(private, synthetic, rounding)
        shortlist = min(n_synthetic, k + SHORTLIST_EXTRA)
        y32 = _to_device(torch, synthetic, self.device)
        synthetic_sq_norms = sq_norms64(synthetic)
        # Summed in float64 and rounded once, as tiled_dot_error_bound assumes.
        y_sq = torch.from_numpy(synthetic_sq_norms.astype(np.float32)).to(self.device)
        max_synthetic_sq_norm = float(synthetic_sq_norms.max())
        # The requested precision, then an fp32 pass for the rows it leaves cut short.
        passes = [(rounding, self.tiles, kernel_inputs(torch, y32, rounding, synthetic=True))]
        if rounding is not FLOAT32:
            passes.append((FLOAT32, self._fp32_tiles, y32))
        # Per private row on the device: its fp32 copy and a pending-row or rounded copy (a
        # split also holds its parts, their fp32 difference and the 3 d laid-out columns); the
        # kernel outputs; host candidates.
        row_bytes = (
            dim * (24 if rounding.split else 12) + shortlist * (8 + RERANK_BYTES_PER_CANDIDATE) + 16
        )
        rerank_bytes = self.max_block_bytes // 4
        block_rows = max(1, min(n, (self.max_block_bytes - rerank_bytes) // row_bytes))
        for start in range(0, n, block_rows):
            block = private[start : start + block_rows]
            # The block goes to the device once; a later pass takes its pending rows there.
            block32 = _to_device(torch, block, self.device)
            # On the device: the host's float64 pass takes about 0.75 s per million rows of 512
            # on a CI core. The squared float64 norm errs by a few ulps, which the bound's
            # safety factor absorbs.
            block_sq_norms = (
                torch.linalg.vector_norm(block32, dim=1, dtype=torch.float64).square().cpu().numpy()
            )
            pending = np.arange(len(block))
            for pass_rounding, tiles, y in passes:
                every_row = pending.size == len(block)
                rows = block if every_row else block[pending]
                sq_norms = block_sq_norms if every_row else block_sq_norms[pending]
                tol = tiled_dot_error_bound(
                    sq_norms, max_synthetic_sq_norm, dim, tiles.block_d, pass_rounding
                )
                window = certified_threshold(
                    np.zeros(len(rows), np.float32),
                    tol + _SLACK * (sq_norms + max_synthetic_sq_norm + 2.0 * tol),
                )
                x32 = block32 if every_row else block32[torch.from_numpy(pending).to(self.device)]
                values, indices, settled = self._impl.shortlists(
                    kernel_inputs(torch, x32, pass_rounding, synthetic=False),
                    y,
                    y_sq,
                    torch.from_numpy(window).to(self.device),
                    k,
                    shortlist,
                    counts,
                    tiles,
                )
                # Settled rows have voted already; a search ranks every row on the host.
                open_rows = (
                    np.arange(len(rows))
                    if counts is None
                    else np.flatnonzero(~settled.cpu().numpy())
                )
                if open_rows.size == 0:
                    pending = open_rows
                    break
                on_device = torch.from_numpy(open_rows).to(self.device)
                done, answers = _rerank_shortlists(
                    rows[open_rows],
                    synthetic,
                    values[on_device].cpu().numpy(),
                    indices[on_device].cpu().numpy().astype(np.int64),
                    tol[open_rows],
                    k,
                    rerank_bytes,
                )
                _deliver(start + pending[open_rows[done]], answers, out, host_counts)
                pending = pending[open_rows[~done]]
                if pending.size == 0:
                    break
            if pending.size:
                answers = self._fallback.search(block[pending], synthetic, k)
                _deliver(start + pending, answers, out, host_counts)


def _rerank_shortlists(
    rows: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    values: NDArray[np.float32],
    indices: NDArray[np.int64],
    tol: NDArray[np.float64],
    k: int,
    rerank_bytes: int,
) -> tuple[NDArray[np.bool_], NDArray[np.int64]]:
    """Exact answers of the rows whose shortlist holds their whole certified candidate set.

    Args:
        rows: (r, d) float32 private rows.
        synthetic: (m, d) float32 synthetic rows.
        values: (r, S) float32 sorted shortlist values, k < S <= m.
        indices: (r, S) synthetic indices of ``values``.
        tol: (r,) float64 error bounds of ``values``.
        k: neighbours per row.
        rerank_bytes: memory bound of the exact re-rank's chunks.

    Returns:
        ``(done, answers)``: (r,) bool rows whose shortlist was complete, and their (done, k)
        int64 exact neighbours.
    """
    n_rows, shortlist = values.shape
    pair_rows, cols, pair_values, threshold = certify_candidates(
        np.repeat(np.arange(n_rows, dtype=np.int64), shortlist),
        indices.ravel(),
        values.ravel(),
        n_rows,
        k,
        tol,
    )
    # An index left out of the shortlist has a value >= its last one; above the threshold it
    # cannot be a candidate.
    done = (
        np.ones(n_rows, dtype=bool)
        if shortlist == synthetic.shape[0]
        else values[:, -1] > threshold
    )
    renumber = np.cumsum(done) - 1
    kept = done[pair_rows]
    answers = rerank(
        rows[done],
        synthetic,
        (renumber[pair_rows[kept]], cols[kept], pair_values[kept]),
        tol[done],
        k,
        rerank_bytes,
    )
    return done, answers


def _deliver(
    rows: NDArray[np.int64],
    answers: NDArray[np.int64],
    out: NDArray[np.int64] | None,
    host_counts: NDArray[np.int64] | None,
) -> None:
    """Writes exact neighbours of ``rows`` into ``out``, or adds their votes to ``host_counts``."""
    if out is not None:
        out[rows] = answers
    if host_counts is not None:
        host_counts += np.bincount(answers[answers >= 0], minlength=host_counts.size)


def kernel_inputs(torch: Any, rows: Any, rounding: RoundedInputs, *, synthetic: bool) -> Any:
    """fp32 rows as the kernel reads them: rounded to the format, or split and laid out.

    A split lays the private rows out as x_hi | x_hi | x_lo and the synthetic ones as
    y_hi | y_lo | y_hi (3 d columns), so the kernel's one dot per column slice sums the three
    products of ``kernels.certify``'s split scheme.
    """
    high = rows.to(getattr(torch, rounding.storage))
    if not rounding.split:
        return high
    # rows - high is exact in fp32; rounding it again leaves at most u^2 |x| out.
    low = (rows - high.to(torch.float32)).to(high.dtype)
    parts = (high, low, high) if synthetic else (high, high, low)
    return torch.cat(parts, dim=1)


def _check_range(
    private: NDArray[np.float32], synthetic: NDArray[np.float32], rounding: RoundedInputs
) -> None:
    if rounding.max_abs >= np.finfo(np.float32).max:
        return
    for role, array in (("private", private), ("synthetic", synthetic)):
        if array.size and float(np.abs(array).max()) > rounding.max_abs:
            raise ValueError(
                f"{role} embeddings exceed the {rounding.name} range (|value| > "
                f"{rounding.max_abs:g}); use precision 'bfloat16' or 'float32'"
            )


def _to_device(torch: Any, array: NDArray[np.float32], device: str) -> Any:
    """A float32 tensor of C-contiguous rows (the kernel's unit column stride) on ``device``.

    Copies on the host only when the rows are strided or read-only (torch.from_numpy warns on
    read-only arrays); a C-contiguous float32 block goes straight to the device. On the CPU (the
    interpreter) the tensor shares the array's memory; the kernel only reads it.
    """
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, dtype=np.float32, order="C")
    return torch.from_numpy(array).to(device)
