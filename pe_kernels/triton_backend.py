"""Exact k-NN votes on a GPU with the fused Triton kernel of ``pe_kernels.triton_impl``.

The kernel streams private and synthetic tiles through ``tl.dot`` and keeps each private row's
S = k + ``SHORTLIST_EXTRA`` smallest fp32 distances (S <= m), so memory stays O((n + m) d + n S)
whatever n and m. A private row then ends in one of three ways, and every way is exact:

1. *settled in the kernel*: its (k+1)-th value exceeds its k-th by more than twice the certified
   bound of ``pe_kernels.certify`` (plus fp32 slack for the in-kernel comparison), so its fp32 top-k
   set is the exact one; for votes the kernel adds them with atomics and nothing leaves the GPU;
2. *re-ranked on the host*: its shortlist holds every synthetic row within the certified
   threshold (the S-th value exceeds it, or S = m), so ``pe_kernels.certify.rerank`` of the
   shortlist gives the reference answer, as in the FAISS backend;
3. *cut short*: more rows tie within the threshold than the shortlist holds (or, with rounded
   inputs, the wide window holds more than the shortlist); these go to an exact pass on the same
   device: cuBLAS fp32 GEMM blocks and the certified re-rank of ``pe_kernels.blocked``. It replaced
   an fp32 pass of this kernel: a few thousand rows make a launch of a few dozen programs, which
   takes as long as a full wave of the GPU (22 ms at (n 1e4, m 1e4, d 2048) on an H200).

Precision. The window comes from ``pe_kernels.certify.tiled_dot_error_bound``, which knows the
kernel's summation order (one chunk per ``block_d`` slice). "bfloat16x3", the default, splits
each input into two bfloat16 parts and sums three tensor-core products per coordinate: accuracy
near fp32's (a window of about 2.5e-4 for unit vectors in 512 dimensions; about 2% of rows of
random unit vectors do not settle in the kernel) at tensor-core speed. On an H200 at (n 1e5,
m 1e4, d 512) its kernel took 0.009 s where a plain fp32 torch GEMM + argmin took 0.025 s
(``benchmarks/results/``). "float32" runs ``tl.dot`` in IEEE fp32 (never TF32, whose 10-bit
mantissa the bound does not cover) on CUDA cores: a window of about 1.2e-5 there, but at a third
of cuBLAS SGEMM's rate. "bfloat16" and "float16" round the inputs once: their windows (about 3e-2
and 4e-3) leave most rows of such data to the exact pass, so they pay only where distances are
well separated. Whatever the precision, votes equal ``reference_search``. Float16 refuses inputs
beyond its range (|value| > 65504). NaN and infinities are found from the float64 squared norms
the bound needs anyway (finite exactly when every value is), not by a separate scan.

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

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_kernels.base import check_search_inputs, non_finite_error
from pe_kernels.blocked import (
    TorchBlockedBackend,
    TorchKernel,
    blocked_search,
    default_block_bytes,
    device_rows,
)
from pe_kernels.certify import (
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
from pe_kernels.errors import BackendUnavailableError, import_optional

if TYPE_CHECKING:
    from pe_kernels.triton_impl import Tiles

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
        precision: "bfloat16x3" (default), "float32", "bfloat16" or "float16": the ``tl.dot``
            inputs (see the module docstring); every precision gives exact votes.
        max_block_bytes: working-memory bound (device and host) of one block of private rows;
            default ``pe_kernels.blocked.DEVICE_MAX_BLOCK_BYTES`` on CUDA (one launch per block, and
            a launch needs thousands of rows to fill the GPU).
        tiles: tile sizes overriding the per-precision default (``triton_impl.DEFAULT_TILES``).

    Raises:
        MissingDependencyError: triton is not installed.
        BackendUnavailableError: a CPU device without the interpreter.
        ValueError: an unknown precision.
    """

    name: ClassVar[str] = "triton"
    requires: ClassVar[str | None] = "triton"
    on_device: ClassVar[bool] = True

    def __init__(
        self,
        device: str = "cuda",
        precision: str = "bfloat16x3",
        max_block_bytes: int | None = None,
        tiles: Tiles | None = None,
    ) -> None:
        import_optional("triton", "triton")
        import torch

        from pe_kernels import triton_impl

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {sorted(PRECISIONS)}")
        if torch.device(device).type == "cpu" and not triton_impl.INTERPRETING:
            raise BackendUnavailableError(
                "the triton backend needs a CUDA device; on CPU it runs only with "
                "TRITON_INTERPRET=1 set before the process starts (for tests); use "
                "'numpy-blocked' or 'auto' on CPU"
            )
        self._torch = torch
        self._impl = triton_impl
        self.device = device
        self.precision = precision
        self.max_block_bytes = (
            default_block_bytes(torch, device) if max_block_bytes is None else max_block_bytes
        )
        if tiles is None:
            interpreting = triton_impl.INTERPRETING
            tiles = (
                triton_impl.INTERPRETER_TILES
                if interpreting
                else triton_impl.DEFAULT_TILES[precision]
            )
        self.tiles = tiles
        self._fallback = TorchBlockedBackend(self.max_block_bytes, device=device)

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
        """Vote counts, as ``pe_kernels.base.vote_histogram``; settled rows vote on the device.

        Args:
            private: (n, d) float32 private embeddings; types and shapes checked by the caller
                (``vote_histogram``), NaN and infinities found here from the squared norms.
            synthetic: (m, d) float32 synthetic embeddings, m >= 1.
            k: neighbours per record.

        Returns:
            (m,) int64 counts summing to n * min(k, m).
        """
        n, n_synthetic = private.shape[0], synthetic.shape[0]
        if n == 0 or n_synthetic <= k:
            # Each record votes once for every synthetic row; the values are not read.
            check_search_inputs(private, synthetic, k)
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
        """Fills ``out`` (search) or ``counts`` and ``host_counts`` (votes); requires m > k.

        Raises:
            ValueError: NaN or infinite values (their squared norms are not finite), or values
                beyond the precision's range.
        """
        torch = self._torch
        n, dim = private.shape
        n_synthetic = synthetic.shape[0]
        rounding = PRECISIONS[self.precision]
        synthetic_sq_norms = sq_norms64(synthetic)
        # A float64 sum of squared float32 values cannot overflow: it is finite exactly when
        # every value is, so the norms double as the NaN check.
        if not np.isfinite(synthetic_sq_norms).all():
            raise non_finite_error("synthetic")
        _check_range(private, synthetic, rounding)
        shortlist = min(n_synthetic, k + SHORTLIST_EXTRA)
        y32 = device_rows(torch, synthetic, self.device)
        # Summed in float64 and rounded once, as tiled_dot_error_bound assumes.
        y_sq = torch.from_numpy(synthetic_sq_norms.astype(np.float32)).to(self.device)
        max_synthetic_sq_norm = float(synthetic_sq_norms.max())
        y = kernel_inputs(torch, y32, rounding, synthetic=True)
        # Rows the kernel leaves cut short: cuBLAS fp32 GEMM and the certified re-rank, set up
        # (an (m, d + 1) copy of the synthetic rows) only when a row needs it.
        exact_pass: TorchKernel | None = None
        # Per private row on the device: its fp32 copy and the kernel's input (a split's parts,
        # their fp32 difference and the 3 d laid-out columns); the kernel outputs; host
        # candidates. The exact pass and the host re-rank each get a quarter of the budget.
        row_bytes = (
            dim * (24 if rounding.split else 12) + shortlist * (8 + RERANK_BYTES_PER_CANDIDATE) + 16
        )
        rerank_bytes = self.max_block_bytes // 4
        block_rows = max(1, min(n, (self.max_block_bytes - rerank_bytes) // row_bytes))
        for start in range(0, n, block_rows):
            block = private[start : start + block_rows]
            block32 = device_rows(torch, block, self.device)
            # On the device: the host's float64 pass takes about 0.75 s per million rows of 512
            # on a CI core. The squared float64 norm errs by a few ulps, which the bound's
            # safety factor absorbs.
            sq_norms = (
                torch.linalg.vector_norm(block32, dim=1, dtype=torch.float64).square().cpu().numpy()
            )
            if not np.isfinite(sq_norms).all():
                raise non_finite_error("private")
            tol = tiled_dot_error_bound(
                sq_norms, max_synthetic_sq_norm, dim, self.tiles.block_d, rounding
            )
            window = certified_threshold(
                np.zeros(len(block), np.float32),
                tol + _SLACK * (sq_norms + max_synthetic_sq_norm + 2.0 * tol),
            )
            values, indices, settled = self._impl.shortlists(
                kernel_inputs(torch, block32, rounding, synthetic=False),
                y,
                y_sq,
                torch.from_numpy(window).to(self.device),
                k,
                shortlist,
                counts,
                self.tiles,
            )
            del block32
            # Settled rows have voted already; a search ranks every row on the host.
            open_rows = (
                np.arange(len(block)) if counts is None else np.flatnonzero(~settled.cpu().numpy())
            )
            if open_rows.size == 0:
                continue
            on_device = torch.from_numpy(open_rows).to(self.device)
            done, answers = _rerank_shortlists(
                block[open_rows],
                synthetic,
                values[on_device].cpu().numpy(),
                indices[on_device].cpu().numpy().astype(np.int64),
                tol[open_rows],
                k,
                rerank_bytes,
            )
            _deliver(start + open_rows[done], answers, out, host_counts)
            cut_short = open_rows[~done]
            if cut_short.size:
                exact_pass = exact_pass or TorchKernel(torch, y32)
                answers = blocked_search(
                    block[cut_short],
                    synthetic,
                    k,
                    exact_pass,
                    rerank_bytes,
                    max_synthetic_sq_norm,
                )
                _deliver(start + cut_short, answers, out, host_counts)


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
    products of ``pe_kernels.certify``'s split scheme.
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
