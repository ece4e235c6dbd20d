from __future__ import annotations

import numpy as np
import pytest

from pe_kernels import certify
from pe_kernels.certify import (
    BFLOAT16,
    BFLOAT16X3,
    FLOAT16,
    FLOAT32,
    RoundedInputs,
    certified_threshold,
    certify_candidates,
    distance_error_bound,
    rerank,
    sq_norms64,
    tiled_dot_error_bound,
)
from pe_kernels.reference import exact_sq_dist

# (dim, scale, offset): unit-ish data, large norms with small distances (cancellation), tiny
# values whose products are subnormal in fp32.
_CASES = [
    (1, 1.0, 0.0),
    (3, 1.0, 0.0),
    (17, 1.0, 0.0),
    (130, 1.0, 0.0),
    (512, 1.0, 0.0),
    (64, 1e-3, 300.0),
    (64, 1e-21, 0.0),
]


@pytest.mark.parametrize(("dim", "scale", "offset"), _CASES)
def test_bound_covers_every_fp32_evaluation_order(dim: int, scale: float, offset: float) -> None:
    rng = np.random.default_rng(dim)
    private = (offset + scale * rng.standard_normal((40, dim))).astype(np.float32)
    synthetic = (offset + scale * rng.standard_normal((50, dim))).astype(np.float32)
    synthetic[1] = private[0]
    s64, t64 = sq_norms64(private), sq_norms64(synthetic)
    tol = distance_error_bound(s64, float(t64.max()), dim)[:, None]
    rows = np.repeat(np.arange(40), 50)
    cols = np.tile(np.arange(50), 40)
    exact = exact_sq_dist(private[rows], synthetic[cols]).reshape(40, 50)
    s32 = np.einsum("ij,ij->i", private, private)
    t32 = np.einsum("ij,ij->i", synthetic, synthetic)
    gram = private @ synthetic.T
    shifted = t32[None, :] - np.float32(2) * gram
    full = s32[:, None] + t32[None, :] - np.float32(2) * gram
    diff = private[:, None, :] - synthetic[None, :, :]
    direct = (diff * diff).sum(axis=2, dtype=np.float32)
    assert np.all(np.abs(shifted - (exact - s64[:, None])) <= tol)
    assert np.all(np.abs(full - exact) <= tol)
    assert np.all(np.abs(direct - exact) <= tol)


def _kernel_order(
    private: np.ndarray, synthetic: np.ndarray, block_d: int, rounding: RoundedInputs
) -> np.ndarray:
    """The fused kernel's arithmetic in numpy: t32 + sum over slices of -2 (slice dot), fp32."""
    import torch

    from pe_kernels.triton_backend import kernel_inputs

    def laid_out(rows: np.ndarray, synthetic: bool) -> np.ndarray:
        inputs = kernel_inputs(torch, torch.from_numpy(rows), rounding, synthetic=synthetic)
        return inputs.float().numpy()

    x, y = laid_out(private, False), laid_out(synthetic, True)
    acc = np.zeros((len(private), len(synthetic)), np.float32)
    for k0 in range(0, x.shape[1], block_d):
        cut = slice(k0, k0 + block_d)
        # Products of rounded values are exact in fp32; the slice's sum rounds in fp32.
        chunk = (x[:, None, cut] * y[None, :, cut]).sum(axis=2, dtype=np.float32)
        acc = acc - np.float32(2) * chunk
    t32 = sq_norms64(synthetic).astype(np.float32)
    return t32[None, :] + acc


_ROUNDINGS = [FLOAT32, BFLOAT16, FLOAT16, BFLOAT16X3]


@pytest.mark.parametrize("rounding", _ROUNDINGS, ids=lambda r: r.name)
@pytest.mark.parametrize("block_d", [16, 64])
@pytest.mark.parametrize(("dim", "scale", "offset"), _CASES)
def test_tiled_bound_covers_the_kernels_arithmetic(
    rounding: RoundedInputs, block_d: int, dim: int, scale: float, offset: float
) -> None:
    rng = np.random.default_rng(dim + block_d)
    private = (offset + scale * rng.standard_normal((40, dim))).astype(np.float32)
    synthetic = (offset + scale * rng.standard_normal((50, dim))).astype(np.float32)
    synthetic[1] = private[0]
    s64, t64 = sq_norms64(private), sq_norms64(synthetic)
    tol = tiled_dot_error_bound(s64, float(t64.max()), dim, block_d, rounding)[:, None]
    rows = np.repeat(np.arange(40), 50)
    cols = np.tile(np.arange(50), 40)
    exact = exact_sq_dist(private[rows], synthetic[cols]).reshape(40, 50)
    error = np.abs(_kernel_order(private, synthetic, block_d, rounding) - (exact - s64[:, None]))
    assert np.all(error <= tol)
    # Not vacuous: rounding the inputs moves distances by more than fp32 arithmetic would.
    if rounding.unit_roundoff and not rounding.split and scale == 1.0 and dim <= 130:
        fp32_tol = tiled_dot_error_bound(s64, float(t64.max()), dim, block_d, FLOAT32)
        assert np.any(error > fp32_tol[:, None])


def test_tiled_bound_is_far_below_the_order_free_one() -> None:
    ones = np.ones(1)
    order_free = distance_error_bound(ones, 1.0, 512)[0]
    # Golden values (unit vectors, d 512): 48 roundings per term instead of 1026.
    assert tiled_dot_error_bound(ones, 1.0, 512, 16, FLOAT32)[0] == pytest.approx(1.19e-5, 0.01)
    assert order_free == pytest.approx(4.89e-4, 0.01)
    split = tiled_dot_error_bound(ones, 1.0, 512, 64, BFLOAT16X3)[0]
    assert split == pytest.approx(2.52e-4, 0.01)
    assert split < order_free < tiled_dot_error_bound(ones, 1.0, 512, 64, BFLOAT16)[0]
    # Deeper slices put more terms in each chunk's own sum.
    norms = np.array([1.0, 3e4])
    assert np.all(
        tiled_dot_error_bound(norms, 2.0, 2048, 16, FLOAT32)
        < tiled_dot_error_bound(norms, 2.0, 2048, 256, FLOAT32)
    )


def test_bound_is_small_for_unit_vectors() -> None:
    tol = distance_error_bound(np.ones(1), 1.0, 512)
    assert 0 < tol[0] < 1e-3


def test_bound_refuses_fp32_overflow() -> None:
    with pytest.raises(ValueError, match="too large"):
        distance_error_bound(np.array([1e38]), 1.0, 4)
    with pytest.raises(ValueError, match="too large"):
        distance_error_bound(np.array([1.0]), 1e38, 4)


def test_threshold_is_the_smallest_float32_at_or_above() -> None:
    kth = np.array([1.0, 0.0, 3.5, 1e-30], dtype=np.float32)
    tol = np.array([1e-9, 0.0, 2.0**-30, 1e-40])
    threshold = certified_threshold(kth, tol)
    wanted = kth.astype(np.float64) + 2 * tol
    assert threshold.dtype == np.float32
    assert np.all(threshold.astype(np.float64) >= wanted)
    below = np.nextafter(threshold, np.float32(-np.inf)).astype(np.float64)
    assert np.all(below < wanted)


def test_certify_candidates_keeps_values_within_kth_plus_twice_tol() -> None:
    rows = np.array([0, 0, 0, 0, 1, 1, 1])
    cols = np.array([5, 2, 9, 4, 0, 1, 2])
    values = np.array([1.0, 1.5, 1.05, 0.9, 2.0, 2.0, 7.0], dtype=np.float32)
    tol = np.array([0.05, 0.5])
    rows, cols, values, threshold = certify_candidates(rows, cols, values, 2, 2, tol)
    # Row 0: second smallest 1.0, threshold 1.1; row 1: second smallest 2.0, threshold 3.0.
    assert threshold[0] == pytest.approx(1.1) and threshold[1] == pytest.approx(3.0)
    assert sorted(zip(rows.tolist(), cols.tolist(), strict=True)) == [
        (0, 4),
        (0, 5),
        (0, 9),
        (1, 0),
        (1, 1),
    ]
    np.testing.assert_array_equal(values <= threshold[rows], True)


def test_rerank_uses_exact_distances_only_where_fp32_is_unsure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    private = np.array([[0.0], [0.0]], dtype=np.float32)
    synthetic = np.array([[3.0], [1.0], [-1.0], [2.0]], dtype=np.float32)
    seen: list[int] = []
    original = certify.exact_sq_dist_pairs

    def counting(*args: object, **kwargs: object) -> np.ndarray:
        seen.append(len(args[2]))  # type: ignore[arg-type]
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(certify, "exact_sq_dist_pairs", counting)
    tol = np.full(2, 1e-3)
    # Row 0: two candidates, fp32 values 1 and 4 far apart, so fp32 settles the order.
    # Row 1: fp32 values of the tie 1 vs 1 are within 2 tol, so exact distances decide (and
    # the lowest index wins the exact tie).
    rows = np.array([0, 0, 1, 1])
    cols = np.array([3, 1, 2, 1])
    values = np.array([4.0, 1.0, 1.0, 1.0], dtype=np.float32)
    got = rerank(private, synthetic, (rows, cols, values), tol, 2)
    np.testing.assert_array_equal(got, [[1, 3], [1, 2]])
    assert seen == [2]


def test_rerank_refuses_an_incomplete_candidate_set() -> None:
    one = np.zeros((1, 1), np.float32)
    with pytest.raises(RuntimeError, match="fewer than k"):
        rerank(
            one,
            np.zeros((3, 1), np.float32),
            (np.array([0]), np.array([0]), np.zeros(1, np.float32)),
            np.ones(1),
            2,
        )


@pytest.mark.parametrize("n", [3, 64])  # FAISS sums directly below 20 queries, by BLAS above
@pytest.mark.parametrize(("dim", "scale", "offset"), _CASES)
def test_bound_covers_faiss_distances(n: int, dim: int, scale: float, offset: float) -> None:
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(dim + n)
    private = (offset + scale * rng.standard_normal((n, dim))).astype(np.float32)
    synthetic = (offset + scale * rng.standard_normal((50, dim))).astype(np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(synthetic)
    dist, idx = index.search(private, 50)
    rows = np.repeat(np.arange(n), 50)
    exact = exact_sq_dist(private[rows], synthetic[idx.ravel()]).reshape(n, 50)
    tol = distance_error_bound(sq_norms64(private), float(sq_norms64(synthetic).max()), dim)
    assert np.all(np.abs(dist - exact) <= tol[:, None])
