"""The bfloat16 shortlist backend: its rounding, its GEMM's probes and its certified bound.

Its answers are checked against the reference with every other backend in test_backends.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pe_kernels import bfloat16
from pe_kernels.bfloat16 import (
    Bfloat16BlockedBackend,
    MklBfloat16Gemm,
    bfloat16_high,
)
from pe_kernels.certify import distance_error_bound, fp32_norm_upper, sq_norms64
from pe_kernels.errors import BackendUnavailableError
from pe_kernels.reference import exact_sq_dist, reference_search

# (dim, scale, offset): unit-ish data, large norms with small distances (cancellation), tiny
# values whose products are flushed or subnormal, and widths around the column padding.
_CASES = [
    (1, 1.0, 0.0),
    (3, 1.0, 0.0),
    (29, 1.0, 0.0),
    (130, 1.0, 0.0),
    (512, 1.0, 0.0),
    (64, 1e-3, 300.0),
    (64, 1e-21, 0.0),
    (40, 1e16, 0.0),
]


def _kernel_distances(
    private: np.ndarray, synthetic: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's GEMM operands, its fp32 distances and its tol, for one block."""
    dim = synthetic.shape[1]
    operand, norms = bfloat16._bfloat16_synthetic(synthetic, bfloat16.gemm_columns(dim))
    kernel = bfloat16._Bfloat16Kernel(MklBfloat16Gemm(), operand, norms, dim)
    tol = kernel.prepare(private, norms.max_sq_norm)
    rows = kernel._rows[: len(private)]
    dist = np.empty((len(private), len(synthetic)), dtype=np.float32)
    kernel.gemm(rows, operand, dist)
    return rows, operand, dist, tol


def _as_float64(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def _sequential(rows: np.ndarray, operand: np.ndarray, reverse: bool) -> np.ndarray:
    """The same GEMM summed term by term in fp32 (products of bfloat16 values are exact)."""
    products = (_as_float64(rows)[:, None, :] * _as_float64(operand)[None, :, :]).astype(np.float32)
    if reverse:
        products = products[..., ::-1]
    return np.add.accumulate(products, axis=2, dtype=np.float32)[..., -1]


@pytest.mark.parametrize(("dim", "scale", "offset"), _CASES)
def test_bound_covers_the_gemm_in_any_order(dim: int, scale: float, offset: float) -> None:
    rng = np.random.default_rng(dim)
    private = (offset + scale * rng.standard_normal((40, dim))).astype(np.float32)
    synthetic = (offset + scale * rng.standard_normal((50, dim))).astype(np.float32)
    synthetic[1] = private[0]
    rows, operand, dist, tol = _kernel_distances(private, synthetic)
    pairs_r = np.repeat(np.arange(40), 50)
    pairs_c = np.tile(np.arange(50), 40)
    exact = exact_sq_dist(private[pairs_r], synthetic[pairs_c]).reshape(40, 50)
    target = exact - sq_norms64(private)[:, None]
    for computed in (dist, _sequential(rows, operand, False), _sequential(rows, operand, True)):
        assert np.all(np.abs(computed.astype(np.float64) - target) <= tol[:, None])


def test_bound_is_needed_and_not_far_above_the_error() -> None:
    rng = np.random.default_rng(11)
    private = rng.standard_normal((60, 512)).astype(np.float32)
    synthetic = rng.standard_normal((70, 512)).astype(np.float32)
    private /= np.linalg.norm(private, axis=1, keepdims=True)
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    _, _, dist, tol = _kernel_distances(private, synthetic)
    rows = np.repeat(np.arange(60), 70)
    cols = np.tile(np.arange(70), 60)
    exact = exact_sq_dist(private[rows], synthetic[cols]).reshape(60, 70)
    error = np.abs(dist - (exact - sq_norms64(private)[:, None]))
    # Rounding the inputs moves distances by more than the fp32 GEMM's whole bound...
    fp32_tol = distance_error_bound(sq_norms64(private), float(sq_norms64(synthetic).max()), 512)
    assert np.any(error > fp32_tol[:, None])
    # ...and the bound measures the actual residuals instead of u per element (2 u = 7.8e-3
    # for the inputs' part alone): golden value for unit vectors at d 512.
    assert tol.max() == pytest.approx(7.5e-3, rel=0.05)
    assert error.max() < tol.min()


def test_rounding_is_to_nearest_even() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    bits = rng.integers(0, 2**32, size=20_000, dtype=np.uint64).astype(np.uint32)
    # Exact ties (dropped half 0x8000) with odd and even kept parts, and their neighbours.
    ties = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    cases = np.concatenate([bits, ties, ties - 1, ties + 1])
    values = cases.view(np.float32)
    values = values[np.isfinite(values) & (np.abs(values) < 2.0**127)]
    extremes = np.array([0.0, -0.0, 1e-45, -1e-40, 3e38], dtype=np.float32)
    values = np.concatenate([values, extremes])
    got = bfloat16_high(values, np.empty(values.shape, dtype=np.uint32)).view(np.float32)
    expected = torch.from_numpy(values).bfloat16().float().numpy()
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_probe_refuses_a_gemm_with_bfloat16_results(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = MklBfloat16Gemm.__call__

    def rounded(self: MklBfloat16Gemm, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        exact(self, a, b, out)
        out[...] = bfloat16_high(out.copy(), np.empty(out.shape, np.uint32)).view(np.float32)

    MklBfloat16Gemm()  # the real one passes
    monkeypatch.setattr(MklBfloat16Gemm, "__call__", rounded)
    with pytest.raises(BackendUnavailableError, match="exact fp32 sums"):
        MklBfloat16Gemm()


def test_no_torch_library_is_a_clear_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(MklBfloat16Gemm, "_library", None)
    monkeypatch.setattr(bfloat16.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="'numpy-blocked'"):
        Bfloat16BlockedBackend()


def test_mkl_thread_count_of_the_caller_is_restored() -> None:
    backend = Bfloat16BlockedBackend(threads=1)
    set_local = MklBfloat16Gemm._load().MKL_Set_Num_Threads_Local
    before = set_local(0)  # 0: this thread follows MKL's global count
    rng = np.random.default_rng(13)
    private = rng.standard_normal((30, 9)).astype(np.float32)
    synthetic = rng.standard_normal((20, 9)).astype(np.float32)
    np.testing.assert_array_equal(
        backend.search(private, synthetic, 2), reference_search(private, synthetic, 2)
    )
    assert set_local(before) == 0


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("max_block_bytes", [1, 4096, None])
def test_worker_threads_and_blocks(threads: int, max_block_bytes: int | None) -> None:
    config = {} if max_block_bytes is None else {"max_block_bytes": max_block_bytes}
    backend = Bfloat16BlockedBackend(threads=threads, **config)
    rng = np.random.default_rng(14)
    base = rng.standard_normal((10, 40)).astype(np.float32)
    synthetic = np.concatenate([base, base[:4], rng.standard_normal((300, 40)).astype(np.float32)])
    private = np.concatenate([base[2:6], rng.standard_normal((250, 40)).astype(np.float32)])
    for k in (1, 3):
        np.testing.assert_array_equal(
            backend.search(private, synthetic, k), reference_search(private, synthetic, k)
        )


def test_values_beyond_the_fp32_range_are_refused() -> None:
    backend = Bfloat16BlockedBackend()
    small = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="synthetic embeddings are too large"):
        backend.search(small, np.full((3, 4), 1e37, np.float32), 1)
    with pytest.raises(ValueError, match="private embeddings are too large"):
        backend.search(np.full((3, 4), 1e37, np.float32), small, 1)


def test_the_backend_does_not_import_torch() -> None:
    # A fresh interpreter: this one may have imported torch already. Loading torch's CPU
    # library through ctypes is what keeps a CPU run from paying for ``import torch``.
    code = (
        "import sys, numpy as np; from pe_kernels.bfloat16 import Bfloat16BlockedBackend; "
        "x = np.eye(4, dtype=np.float32); "
        "print(Bfloat16BlockedBackend().search(x, x, 1).ravel().tolist(), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["[0,", "1,", "2,", "3]", "False"]


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-22, 1e-42, 1e17])
@pytest.mark.parametrize("dim", [1, 7, 512, 2048])
def test_fp32_norm_bounds_are_upper_bounds(scale: float, dim: int) -> None:
    rng = np.random.default_rng(dim)
    rows = (scale * rng.standard_normal((50, dim))).astype(np.float32)
    rows[0] = 0.0
    exact = np.sqrt((rows.astype(np.float64) ** 2).sum(axis=1))
    upper = fp32_norm_upper(rows)
    assert np.all(upper >= exact)
    # Close where squares are normal fp32 numbers (scale 1e-22: subnormal, 1e-42: zero).
    if scale >= 1e-3:
        assert np.all(upper <= exact * (1 + 1e-4) + 1e-20)
