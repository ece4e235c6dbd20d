"""Exact k-NN on CPU from a bfloat16 shortlist: MKL's bf16 GEMM, a certified bound, exact re-rank.

``numpy-blocked`` runs its distance GEMM in fp32 at the CPU's fp32 rate. CPUs with AVX512-BF16
or AMX multiply bfloat16 matrices several times faster (fp32 accumulation), but rounding the
inputs to bfloat16 moves the distances far more than fp32 arithmetic does. This backend keeps
``numpy-blocked``'s design (a worker thread per core, blocks of private rows, the certified
selection and exact float64 re-rank of ``pe_kernels.certify``) and replaces its GEMM with
MKL's ``cblas_gemm_bf16bf16f32`` on rows rounded to bfloat16 here, with the bound of
``certify.bfloat16_gemm_error_bound``. The bound is wider (about 1.9 candidates per row for
random unit vectors at d 512, 4 at d 2048, against about 1 for fp32), so more rows go to the
exact re-rank; the answer is still ``reference_search``'s bit for bit.

The GEMM. numpy's OpenBLAS has no bfloat16 GEMM, and torch's ``mm`` on bfloat16 CPU tensors
returns bfloat16 (a rounding of the distances as coarse as the inputs'); its fp32 ``mm`` with
``torch.backends.mkldnn.matmul.fp32_precision = "bf16"`` gives fp32 results but is a
process-wide switch that would change every other fp32 matmul running meanwhile. torch's x86-64
Linux wheels link MKL statically into ``libtorch_cpu.so`` and export its CBLAS symbols, among
them ``cblas_gemm_bf16bf16f32`` (bfloat16 inputs, fp32 results; AMX or AVX512-BF16 kernels
where the CPU has them). It is called through ctypes on that library, which loads without
importing torch (0.14 s and about 100 MB, against 0.9 s and 220 MB for ``import torch``). Each
worker sets MKL's thread-local thread count to 1 for its calls and restores it. Before first
use probe products check model (M) of ``pe_kernels.certify`` where a wrong build would show: an
fp32 output and accumulator (1 + 2^-20 comes out exact) and the binding's strides.

``pe_kernels.dispatch`` picks this backend for ``auto`` on CPUs whose flags include
``amx_bf16`` and for votes big enough to repay loading the library. Elsewhere MKL's bfloat16
GEMM is no faster than fp32 (measured on AVX512-BF16 without AMX, see
``dispatch.BF16_CPU_FLAGS``), so the wider bound would cost re-ranking without a faster GEMM;
the backend still gives exact answers there.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_kernels.base import check_search_inputs
from pe_kernels.blocked import select_candidates, worker_search, worker_threads
from pe_kernels.certify import (
    Bfloat16Synthetic,
    bfloat16_gemm_error_bound,
    check_fp32_range,
    fp32_norm_upper,
    sq_norms64,
)
from pe_kernels.errors import BackendUnavailableError
from pe_kernels.reference import DEFAULT_MAX_BLOCK_BYTES

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_BF16_ONE = 0x3F80
_NORM_PARTS = 3
_U64 = 2.0**-53

BLOCK_ROWS = 256
"""Private rows per worker block (fewer where ``max_block_bytes`` is tighter). MKL's GEMM ran at
about 600 GFLOP/s per core from 256 to 512 rows (m 1e4, K 544) but half that at 1024 and
below 500 at 64; the selection passes run faster on smaller blocks; one worker's whole search
at (3e4, 1e4, 512) took 0.71-0.80 s in 256-row blocks, 0.81-0.82 s in 192, 0.75-0.77 s in 320
and 0.90-1.04 s in 128 or 384."""

# The GEMM's inner dimension d + 3 is padded with zero columns (exact zero products) to a
# multiple of this: one worker's search at (3e4, 1e4, 512) took 0.68-0.71 s with K = 528,
# 0.73-0.79 s with 544, 0.79 s with 520 and 0.88 s with 515.
_COLUMN_ALIGN = 16


def gemm_columns(dim: int) -> int:
    """K, the GEMM's inner dimension: d values, the squared norm's parts, zero padding."""
    return -(-(dim + _NORM_PARTS) // _COLUMN_ALIGN) * _COLUMN_ALIGN


def bfloat16_high(values: NDArray[np.float32], out: NDArray[np.uint32]) -> NDArray[np.uint32]:
    """Rounds fp32 values to bfloat16 (to nearest, ties to even), as fp32 bit patterns.

    Args:
        values: finite fp32 values, |value| < 2^127.
        out: a uint32 array of the same shape to write into.

    Returns:
        ``out``: the rounded values' fp32 bits (their low 16 bits are zero); the bfloat16 bits
        are the high halves.
    """
    bits = values.view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit carries into the kept bits exactly when the
    # dropped half is above one half, or equal to it with an odd kept part.
    np.right_shift(bits, 16, out=out)
    np.bitwise_and(out, 1, out=out)
    np.add(out, 0x7FFF, out=out)
    np.add(out, bits, out=out)
    np.bitwise_and(out, np.uint32(0xFFFF0000), out=out)
    return out


def _high_halves(bits: NDArray[np.uint32]) -> NDArray[np.uint16]:
    """The bfloat16 bit patterns of fp32 bit patterns (a strided view, no copy)."""
    halves = bits.view(np.uint16)
    # Little-endian: the high half of each 32-bit word comes second.
    return halves[..., 1::2]


class MklBfloat16Gemm:
    """``cblas_gemm_bf16bf16f32`` from torch's CPU library, through ctypes.

    Raises:
        BackendUnavailableError: no torch CPU library here, or one without the symbol, or one
            whose products fail the probes.
    """

    _lock = threading.Lock()
    _library: ctypes.CDLL | None = None

    def __init__(self) -> None:
        library = self._load()
        self._gemm = library.cblas_gemm_bf16bf16f32
        self._gemm.restype = None
        index = ctypes.c_int  # MKL_INT of the LP64 interface (the ILP64 one is suffixed _64)
        self._gemm.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            index,
            index,
            index,
            ctypes.c_float,
            ctypes.c_void_p,
            index,
            ctypes.c_void_p,
            index,
            ctypes.c_float,
            ctypes.c_void_p,
            index,
        ]
        self._threads = library.MKL_Set_Num_Threads_Local
        self._threads.restype = ctypes.c_int
        self._threads.argtypes = [ctypes.c_int]
        self._probe()

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        with cls._lock:
            if cls._library is None:
                spec = importlib.util.find_spec("torch")
                folders = [] if spec is None else list(spec.submodule_search_locations or [])
                paths = [Path(folder) / "lib" / "libtorch_cpu.so" for folder in folders]
                path = next((p for p in paths if p.is_file()), None)
                library = None
                if path is not None:
                    try:
                        library = ctypes.CDLL(str(path))
                    except OSError:
                        library = None
                if (
                    library is None
                    or sys.byteorder != "little"  # _high_halves reads little-endian words
                    or not all(
                        hasattr(library, symbol)
                        for symbol in ("cblas_gemm_bf16bf16f32", "MKL_Set_Num_Threads_Local")
                    )
                ):
                    raise BackendUnavailableError(
                        "numpy-blocked-bf16 needs MKL's bfloat16 GEMM, which torch's x86-64 "
                        "Linux CPU library exports; none was found in this torch install. Use "
                        "'numpy-blocked' or 'auto'"
                    )
                cls._library = library
            return cls._library

    def __call__(
        self, a: NDArray[np.uint16], b: NDArray[np.uint16], out: NDArray[np.float32]
    ) -> None:
        """out = a @ b.T in fp32, on one thread, for bfloat16 bit patterns a (M, K), b (N, K).

        Every array must be C-contiguous; ``out`` is (M, N) float32.
        """
        rows, columns = a.shape
        n = b.shape[0]
        if (
            b.shape[1] != columns
            or out.shape != (rows, n)
            or a.dtype != np.uint16
            or b.dtype != np.uint16
            or out.dtype != np.float32
            or not (a.flags.c_contiguous and b.flags.c_contiguous and out.flags.c_contiguous)
        ):
            raise ValueError("internal error: bad bfloat16 GEMM operands")
        if rows == 0 or n == 0:
            return
        # A thread-local count: the workers already occupy every core, and other threads'
        # MKL calls keep theirs.
        previous = self._threads(1)
        try:
            self._gemm(
                _ROW_MAJOR,
                _NO_TRANS,
                _TRANS,
                rows,
                n,
                columns,
                1.0,
                a.ctypes.data,
                columns,
                b.ctypes.data,
                columns,
                0.0,
                out.ctypes.data,
                n,
            )
        finally:
            self._threads(previous)

    def _probe(self) -> None:
        """Refuses a GEMM whose results break model (M) where a wrong build would show."""
        # 1 + 2^-20 needs 21 significand bits: a bfloat16 (8), fp16 (11) or TF32 (11)
        # accumulator or output loses it. Odd sizes and a second row check the binding's
        # strides and integer width.
        a = np.zeros((2, 37), dtype=np.float32)
        b = np.zeros((3, 37), dtype=np.float32)
        a[:, 0], a[:, 36], b[:, 0], b[:, 36] = 1.0, 2.0**-10, 1.0, 2.0**-10
        a[1, 5], b[2, 5] = 3.0, -0.5
        expected = a.astype(np.float64) @ b.astype(np.float64).T
        out = np.full((2, 3), np.nan, dtype=np.float32)
        self(
            np.ascontiguousarray(_high_halves(a.view(np.uint32))),
            np.ascontiguousarray(_high_halves(b.view(np.uint32))),
            out,
        )
        if not np.array_equal(out.astype(np.float64), expected):
            raise BackendUnavailableError(
                "MKL's bfloat16 GEMM in this torch install does not return exact fp32 sums of "
                f"exact products (probe gave {out.tolist()}, expected {expected.tolist()}); use "
                "'numpy-blocked'"
            )


def _bfloat16_synthetic(
    synthetic: NDArray[np.float32], columns: int
) -> tuple[NDArray[np.uint16], Bfloat16Synthetic]:
    """The synthetic side of the GEMM, (m, columns) bfloat16 bits [y_h, parts of t, 0...].

    Returns:
        ``(bits, norms)``: the GEMM operand and what the error bound needs of it.
    """
    n_synthetic, dim = synthetic.shape
    t64 = sq_norms64(synthetic)
    check_fp32_range(np.zeros(0), float(t64.max()))
    operand = np.zeros((n_synthetic, columns), dtype=np.uint16)
    residual_norms = np.empty(n_synthetic, dtype=np.float64)
    # In chunks of ~1 MiB: whole-matrix temporaries would double the call's peak memory.
    chunk = max(1, 2**18 // dim)
    high = np.empty((min(chunk, n_synthetic), dim), dtype=np.uint32)
    for start in range(0, n_synthetic, chunk):
        rows = synthetic[start : start + chunk]
        part = high[: len(rows)]
        bfloat16_high(rows, part)
        operand[start : start + len(rows), :dim] = _high_halves(part)
        # rows - high is exact (the dropped low bits of each value).
        residual = part.view(np.float32)
        np.subtract(rows, residual, out=residual)
        residual_norms[start : start + len(rows)] = fp32_norm_upper(residual)
    # An fp32 significand has 24 bits: three bfloat16 parts hold it, each the rounded rest.
    rest = t64.astype(np.float32)
    parts = np.zeros((n_synthetic, _NORM_PARTS), dtype=np.float64)
    for part_index in range(_NORM_PARTS):
        rounded = bfloat16_high(rest, np.empty(rest.shape, dtype=np.uint32))
        operand[:, dim + part_index] = _high_halves(rounded[:, None])[:, 0]
        parts[:, part_index] = rounded.view(np.float32)
        rest = rest - rounded.view(np.float32)  # exact, as above
    max_residual_norm = float(residual_norms.max())
    norms = Bfloat16Synthetic(
        max_sq_norm=float(t64.max()),
        # ||y_h|| <= ||y|| + ||y - y_h||.
        max_high_norm=float(np.sqrt(t64.max())) + max_residual_norm,
        max_residual_norm=max_residual_norm,
        max_parts=float(np.abs(parts).sum(axis=1).max()),
        # |float64 sum - t| <= gamma64_d t, beside the parts' own distance from that sum.
        max_parts_error=float(np.abs(parts.sum(axis=1) - t64).max())
        + dim * _U64 / (1 - dim * _U64) * float(t64.max()),
    )
    return operand, norms


class _Bfloat16Kernel:
    """One worker's half of ``blocked_search``: bfloat16 GEMM blocks, certified selection."""

    def __init__(
        self,
        gemm: MklBfloat16Gemm,
        operand: NDArray[np.uint16],
        norms: Bfloat16Synthetic,
        dim: int,
    ) -> None:
        self.gemm = gemm
        self.operand = operand
        self.norms = norms
        self.dim = dim
        self._rows = np.empty((0, operand.shape[1]), dtype=np.uint16)
        self._scaled = np.empty((0, dim), dtype=np.float32)
        self._high = np.empty((0, dim), dtype=np.uint32)
        self._dist = np.empty((0, operand.shape[0]), dtype=np.float32)
        self._mask = np.empty((0, operand.shape[0]), dtype=bool)
        self._prepared = 0

    @staticmethod
    def pair_bytes(kept: int) -> int:
        # Distances and the candidate mask, and for k > 1 group minima.
        return 4 + 1 if kept == 1 else 4 + 1 + 1

    def prepare(
        self, block: NDArray[np.float32], max_synthetic_sq_norm: float
    ) -> NDArray[np.float64]:
        rows, dim = block.shape
        if self._rows.shape[0] < rows:
            self._rows = np.zeros((rows, self.operand.shape[1]), dtype=np.uint16)
            # Ones against the squared norm's parts; zeros in the padding.
            self._rows[:, dim : dim + _NORM_PARTS] = _BF16_ONE
            self._scaled = np.empty((rows, dim), dtype=np.float32)
            self._high = np.empty((rows, dim), dtype=np.uint32)
        scaled, high = self._scaled[:rows], self._high[:rows]
        sq_norms = sq_norms64(block)
        # Refused before anything is squared in fp32.
        check_fp32_range(sq_norms, max_synthetic_sq_norm)
        # -2 x is exact; rounding it is rounding x, scaled.
        np.multiply(block, np.float32(-2.0), out=scaled)
        bfloat16_high(scaled, high)
        self._rows[:rows, :dim] = _high_halves(high)
        np.subtract(scaled, high.view(np.float32), out=scaled)  # exact: the dropped low bits
        residual_norms = fp32_norm_upper(scaled) / 2.0
        self._prepared = rows
        return bfloat16_gemm_error_bound(
            sq_norms,
            # ||x_h|| <= ||x|| + ||x - x_h||: no pass over the rounded rows for their norms.
            np.sqrt(sq_norms) + residual_norms,
            residual_norms,
            self.norms,
            dim,
            self.operand.shape[1],
        )

    def candidates(
        self, tol: NDArray[np.float64], kept: int
    ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float32]]:
        rows = self._prepared
        if self._dist.shape[0] < rows:
            self._dist = np.empty((rows, self._dist.shape[1]), dtype=np.float32)
        if self._mask.shape[0] < rows:
            self._mask = np.empty((rows, self._mask.shape[1]), dtype=bool)
        dist = self._dist[:rows]
        self.gemm(self._rows[:rows], self.operand, dist)
        return select_candidates(dist, self._mask[:rows], tol, kept, crowded=True)


class Bfloat16BlockedBackend:
    """Exact k-NN from a bfloat16 GEMM shortlist (MKL, via torch's CPU library), exact re-rank.

    Args:
        max_block_bytes: working-memory bound of the blocks of all workers together (~128 MB
            default), as ``numpy-blocked``.
        threads: worker threads; default: the usable CPU cores.

    Raises:
        BackendUnavailableError: torch's CPU library has no usable bfloat16 GEMM here.
    """

    name: ClassVar[str] = "numpy-blocked-bf16"
    requires: ClassVar[str | None] = "torch"
    on_device: ClassVar[bool] = False

    def __init__(
        self, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES, threads: int | None = None
    ) -> None:
        self.max_block_bytes = max_block_bytes
        self.threads = worker_threads(threads)
        self._gemm = MklBfloat16Gemm()

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        check_search_inputs(private, synthetic, k)
        if len(private) == 0 or len(synthetic) == 0:
            return np.full((len(private), k), -1, dtype=np.int64)
        dim = synthetic.shape[1]
        operand, norms = _bfloat16_synthetic(synthetic, gemm_columns(dim))
        kept = min(k, synthetic.shape[0])
        row_bytes = synthetic.shape[0] * _Bfloat16Kernel.pair_bytes(kept) + dim * 4
        return worker_search(
            private,
            synthetic,
            k,
            lambda: _Bfloat16Kernel(self._gemm, operand, norms, dim),
            _Bfloat16Kernel.pair_bytes,
            self.threads,
            self.max_block_bytes,
            worker_block_bytes=BLOCK_ROWS * row_bytes * 4 // 3,
        )
