from __future__ import annotations

import numpy as np
import pytest

from pe_kernels.reference import exact_sq_dist, exact_sq_dist_pairs, reference_search


def _f32(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def test_exact_sq_dist_values() -> None:
    x = _f32([[0, 0, 0], [1, 2, 3]])
    y = _f32([[1, 1, 1], [1, 2, 3]])
    dist = exact_sq_dist(x, y)
    assert dist.dtype == np.float64
    np.testing.assert_array_equal(dist, [3.0, 0.0])


def test_exact_sq_dist_is_float64_of_float32_inputs() -> None:
    # 1 + 2^-23 and 1 are adjacent float32 values; their squared gap needs float64 to survive.
    x = _f32([[1 + 2**-23]])
    y = _f32([[1]])
    assert exact_sq_dist(x, y)[0] == 2.0**-46


def test_exact_sq_dist_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        exact_sq_dist(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


def test_a_pairs_value_does_not_depend_on_its_chunk() -> None:
    rng = np.random.default_rng(0)
    private = rng.standard_normal((7, 130)).astype(np.float32)
    synthetic = rng.standard_normal((11, 130)).astype(np.float32)
    rows = np.repeat(np.arange(7), 11)
    cols = np.tile(np.arange(11), 7)
    whole = exact_sq_dist_pairs(private, synthetic, rows, cols)
    one_by_one = exact_sq_dist_pairs(private, synthetic, rows, cols, max_block_bytes=1)
    single = np.array(
        [exact_sq_dist(private[[r]], synthetic[[c]])[0] for r, c in zip(rows, cols, strict=True)]
    )
    assert whole.tobytes() == one_by_one.tobytes() == single.tobytes()


def test_a_work_buffer_changes_nothing_and_must_fit() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 33)).astype(np.float32)
    y = rng.standard_normal((5, 33)).astype(np.float32)
    work = np.full((5, 33), np.nan)
    assert exact_sq_dist(x, y, work).tobytes() == exact_sq_dist(x, y).tobytes()
    for bad in (np.empty((5, 32)), np.empty((5, 33), np.float32), np.empty((33, 5)).T):
        with pytest.raises(ValueError, match="work must be"):
            exact_sq_dist(x, y, bad)


def test_pairs_refuse_indices_out_of_range() -> None:
    # The gathers clip instead of raising, so the range is checked first.
    rows = np.zeros((2, 3), np.float32)
    with pytest.raises(IndexError, match="rows out of range"):
        exact_sq_dist_pairs(rows, rows, np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(IndexError, match="cols out of range"):
        exact_sq_dist_pairs(rows, rows, np.array([0, 1]), np.array([-1, 1]))


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("max_block_bytes", [1, 1000, 2**27])
def test_reference_matches_a_full_float64_sort(k: int, max_block_bytes: int) -> None:
    rng = np.random.default_rng(k)
    private = rng.standard_normal((23, 17)).astype(np.float32)
    synthetic = rng.standard_normal((31, 17)).astype(np.float32)
    full = ((private[:, None, :].astype(np.float64) - synthetic[None].astype(np.float64)) ** 2).sum(
        axis=2
    )
    expected = np.argsort(full, axis=1, kind="stable")[:, :k]
    got = reference_search(private, synthetic, k, max_block_bytes)
    np.testing.assert_array_equal(got, expected)


def test_reference_breaks_ties_by_lowest_index() -> None:
    synthetic = _f32([[1, 0], [0, 1], [-1, 0], [0, -1], [2, 0]])
    got = reference_search(np.zeros((1, 2), np.float32), synthetic, 5)
    np.testing.assert_array_equal(got, [[0, 1, 2, 3, 4]])


def test_reference_pads_when_fewer_synthetic_than_k() -> None:
    got = reference_search(_f32([[0.0], [10.0]]), _f32([[9.0], [1.0]]), 3)
    np.testing.assert_array_equal(got, [[1, 0, -1], [0, 1, -1]])


def test_reference_handles_empty_inputs() -> None:
    assert reference_search(np.zeros((0, 3), np.float32), np.ones((4, 3), np.float32), 2).shape == (
        0,
        2,
    )
    empty = reference_search(np.ones((2, 3), np.float32), np.zeros((0, 3), np.float32), 2)
    np.testing.assert_array_equal(empty, -np.ones((2, 2)))


def test_exact_sq_dist_ignores_memory_layout() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((9, 130)).astype(np.float32)
    y = rng.standard_normal((9, 130)).astype(np.float32)
    c_order = exact_sq_dist(x, y)
    f_order = exact_sq_dist(np.asfortranarray(x), np.asfortranarray(y))
    assert c_order.tobytes() == f_order.tobytes()
