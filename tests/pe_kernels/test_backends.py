"""Every fast backend equals the float64 reference bit for bit, ties and padding included."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.datasets import load_digits

from pe_kernels.base import NearestNeighbourBackend, vote_histogram
from pe_kernels.reference import reference_search
from tests.pe_kernels.support import FAST_BACKENDS, make_backend


def _check(backend: NearestNeighbourBackend, private: np.ndarray, synthetic: np.ndarray) -> None:
    for k in (1, 2, 5):
        got = backend.search(private, synthetic, k)
        expected = reference_search(private, synthetic, k)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, expected, err_msg=f"k={k}")


@pytest.mark.parametrize(
    ("n", "m", "dim"),
    [(1, 1, 1), (1, 9, 3), (9, 1, 3), (13, 4, 17), (40, 3, 130), (7, 60, 1), (25, 33, 130)],
)
def test_awkward_shapes(backend: NearestNeighbourBackend, n: int, m: int, dim: int) -> None:
    rng = np.random.default_rng(n * 1000 + m * 10 + dim)
    private = rng.standard_normal((n, dim)).astype(np.float32)
    synthetic = rng.standard_normal((m, dim)).astype(np.float32)
    _check(backend, private, synthetic)


def test_no_private_rows(backend: NearestNeighbourBackend) -> None:
    got = backend.search(np.zeros((0, 5), np.float32), np.ones((3, 5), np.float32), 2)
    assert got.shape == (0, 2) and got.dtype == np.int64


def test_no_synthetic_rows_pads_every_row(backend: NearestNeighbourBackend) -> None:
    got = backend.search(np.ones((3, 5), np.float32), np.zeros((0, 5), np.float32), 2)
    np.testing.assert_array_equal(got, np.full((3, 2), -1))
    assert got.dtype == np.int64


def test_fewer_synthetic_than_k_pads_with_minus_one(backend: NearestNeighbourBackend) -> None:
    private = np.array([[0.0, 0.0], [5.0, 5.0]], dtype=np.float32)
    synthetic = np.array([[4.0, 4.0], [1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    got = backend.search(private, synthetic, 5)
    np.testing.assert_array_equal(got, [[1, 2, 0, -1, -1], [0, 1, 2, -1, -1]])


def test_exact_duplicate_synthetic_rows(backend: NearestNeighbourBackend) -> None:
    rng = np.random.default_rng(1)
    base = rng.standard_normal((12, 17)).astype(np.float32)
    # Resampling with replacement: most rows appear several times, in shuffled order.
    synthetic = base[rng.integers(0, 12, size=50)]
    private = np.concatenate([base, rng.standard_normal((30, 17)).astype(np.float32)])
    _check(backend, private, synthetic)


@pytest.mark.parametrize("dim", [1, 3, 17])
def test_exact_ties_among_distinct_rows(backend: NearestNeighbourBackend, dim: int) -> None:
    rng = np.random.default_rng(dim)
    axes = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32)
    synthetic = np.concatenate([axes[rng.permutation(2 * dim)], 2 * axes[:1]])
    # The origin ties with every +-e_j; the other private rows are permutation-equivalent too.
    private = np.concatenate([np.zeros((1, dim)), 0.5 * np.eye(dim)]).astype(np.float32)
    _check(backend, private, synthetic)


def test_permuted_coordinates_tie(backend: NearestNeighbourBackend) -> None:
    values = np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32)
    synthetic = np.array(list(itertools.permutations(values)), dtype=np.float32)
    private = np.array([[0.0, 0.0, 0.0, 0.0], [1.5, 1.5, 1.5, 1.5]], dtype=np.float32)
    _check(backend, private, synthetic)


def test_pixel_like_data(backend: NearestNeighbourBackend) -> None:
    digits = load_digits().images.reshape(-1, 64)
    pixels = (np.round(digits * 255 / 16) / 255).astype(np.float32)
    rng = np.random.default_rng(2)
    synthetic = pixels[rng.choice(len(pixels), 80, replace=True)]
    private = np.concatenate([pixels[:60], synthetic[:5]])
    _check(backend, private, synthetic)


def test_coarse_integer_pixels_scaled_by_255(backend: NearestNeighbourBackend) -> None:
    rng = np.random.default_rng(3)
    # Few grey levels make many exact distance ties between distinct images.
    private = (rng.integers(0, 3, size=(30, 9)) * 127 / 255).astype(np.float32)
    synthetic = (rng.integers(0, 3, size=(40, 9)) * 127 / 255).astype(np.float32)
    _check(backend, private, synthetic)


def test_random_unit_vectors(backend: NearestNeighbourBackend) -> None:
    rng = np.random.default_rng(4)
    private = rng.standard_normal((120, 130)).astype(np.float32)
    synthetic = rng.standard_normal((90, 130)).astype(np.float32)
    private /= np.linalg.norm(private, axis=1, keepdims=True)
    synthetic /= np.linalg.norm(synthetic, axis=1, keepdims=True)
    _check(backend, private, synthetic)


def test_large_offset_small_spread(backend: NearestNeighbourBackend) -> None:
    rng = np.random.default_rng(5)
    # Norms dwarf distances, so the certified window holds many candidates per row.
    private = (1000 + 0.01 * rng.standard_normal((30, 17))).astype(np.float32)
    synthetic = (1000 + 0.01 * rng.standard_normal((40, 17))).astype(np.float32)
    _check(backend, private, synthetic)


def test_read_only_inputs(backend: NearestNeighbourBackend) -> None:
    rng = np.random.default_rng(6)
    private = rng.standard_normal((10, 8)).astype(np.float32)
    synthetic = rng.standard_normal((12, 8)).astype(np.float32)
    private.flags.writeable = False
    synthetic.flags.writeable = False
    _check(backend, private, synthetic)


def test_strided_inputs(backend: NearestNeighbourBackend) -> None:
    rng = np.random.default_rng(7)
    private = rng.standard_normal((20, 16)).astype(np.float32)[::2, ::2]
    synthetic = rng.standard_normal((30, 16)).astype(np.float32)[::3, 1::2]
    _check(backend, private, synthetic)


@pytest.mark.parametrize("name", [*FAST_BACKENDS, "reference"])
def test_rejects_bad_inputs(name: str) -> None:
    backend = make_backend(name)
    good = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match="float32"):
        backend.search(good.astype(np.float64), good, 1)
    with pytest.raises(ValueError, match="dim"):
        backend.search(good, np.zeros((2, 4), np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        backend.search(good, good, 0)
    with pytest.raises(ValueError, match="NaN"):
        backend.search(good, np.full((2, 3), np.nan, np.float32), 1)
    # vote_histogram leaves the value scan to the backend: it must still refuse them.
    for spoilt in (np.nan, np.inf):
        bad = good.copy()
        bad[1, 2] = spoilt
        with pytest.raises(ValueError, match="private embeddings contain NaN"):
            vote_histogram(backend, bad, good, 1)
        with pytest.raises(ValueError, match="synthetic embeddings contain NaN"):
            vote_histogram(backend, good, bad, 1)


def test_faiss_falls_back_where_its_shortlist_is_cut_short() -> None:
    backend = make_backend("faiss")
    calls: list[int] = []
    fallback = backend._fallback  # type: ignore[attr-defined]
    original = fallback.search

    def spy(private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
        calls.append(len(private))
        return original(private, synthetic, k)

    fallback.search = spy
    dim = 17
    # The origin ties with all 34 points +-e_j, far more than the shortlist of k + 4; for
    # k >= 2 so do the rows 3 e_j, whose k-th nearest ties with 32 points.
    synthetic = np.concatenate([np.eye(dim), -np.eye(dim)]).astype(np.float32)[::-1].copy()
    private = np.concatenate([np.zeros((1, dim)), 3 * np.eye(dim)]).astype(np.float32)
    _check(backend, private, synthetic)
    assert calls == [1, len(private), len(private)]


_small_arrays = st.integers(1, 6).flatmap(
    lambda dim: st.tuples(
        hnp.arrays(
            np.float32,
            st.tuples(st.integers(0, 12), st.just(dim)),
            elements=st.integers(-4, 4).map(lambda v: v / 4),
        ),
        hnp.arrays(
            np.float32,
            st.tuples(st.integers(1, 12), st.just(dim)),
            elements=st.integers(-4, 4).map(lambda v: v / 4),
        ),
    )
)


@pytest.mark.parametrize("name", FAST_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(arrays=_small_arrays, k=st.integers(1, 6))
def test_property_matches_reference(name: str, arrays: tuple, k: int) -> None:
    private, synthetic = arrays
    backend = make_backend(name, max_block_bytes=256)
    expected = reference_search(private, synthetic, k)
    np.testing.assert_array_equal(backend.search(private, synthetic, k), expected)


def test_torch_refuses_reduced_precision_matmul() -> None:
    import torch

    backend = make_backend("torch-blocked")
    good = np.zeros((2, 3), np.float32)
    previous = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        with pytest.raises(RuntimeError, match="IEEE fp32"):
            backend.search(good, good, 1)
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = previous
    assert backend.search(good, good, 1).shape == (2, 1)


@pytest.mark.parametrize("max_block_bytes", [1, 4096, 2**27])
def test_torch_device_selection_path_on_cpu(max_block_bytes: int) -> None:
    # The selection that runs on GPUs (top-k, compare and nonzero in torch), exercised on CPU.
    import torch

    from pe_kernels.blocked import TorchKernel, blocked_search

    rng = np.random.default_rng(8)
    base = rng.standard_normal((15, 17)).astype(np.float32)
    synthetic = np.concatenate([base, base[:5], np.zeros((1, 17), np.float32)])
    private = np.concatenate([base[:4], rng.standard_normal((30, 17)).astype(np.float32)])
    for k in (1, 2, 5):
        kernel = TorchKernel(torch, torch.from_numpy(synthetic))
        kernel.select_with_numpy = False
        got = blocked_search(private, synthetic, k, kernel, max_block_bytes)
        np.testing.assert_array_equal(got, reference_search(private, synthetic, k))


@pytest.mark.parametrize("threads", [1, 3, 40])
@pytest.mark.parametrize("max_block_bytes", [1, 4096, None])
def test_numpy_worker_threads(threads: int, max_block_bytes: int | None) -> None:
    # Workers take blocks as they come free: 40 workers leave most idle.
    from pe_kernels.blocked import NumpyBlockedBackend

    config = {} if max_block_bytes is None else {"max_block_bytes": max_block_bytes}
    backend = NumpyBlockedBackend(threads=threads, **config)
    rng = np.random.default_rng(9)
    base = rng.standard_normal((10, 7)).astype(np.float32)
    synthetic = np.concatenate([base, base[:4], rng.standard_normal((9, 7)).astype(np.float32)])
    private = np.concatenate([base[2:6], rng.standard_normal((25, 7)).astype(np.float32)])
    _check(backend, private, synthetic)


@pytest.mark.parametrize(("threads", "n"), [(2, 29), (3, 100), (2, 1)])
def test_numpy_workers_get_equal_shares_of_blocks(
    threads: int, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every worker gets the same number of blocks (sizes within one row), so no core idles
    # through a last block alone.
    from pe_kernels import blocked

    sizes: list[int] = []
    original = blocked.blocked_search

    def spy(private: np.ndarray, *args: object) -> np.ndarray:
        sizes.append(len(private))
        return original(private, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(blocked, "blocked_search", spy)
    rng = np.random.default_rng(10)
    private = rng.standard_normal((n, 7)).astype(np.float32)
    synthetic = rng.standard_normal((23, 7)).astype(np.float32)
    backend = blocked.NumpyBlockedBackend(max_block_bytes=threads * 1500, threads=threads)
    got = backend.search(private, synthetic, 2)
    np.testing.assert_array_equal(got, reference_search(private, synthetic, 2))
    assert sum(sizes) == n
    assert len(sizes) % threads == 0 or n < threads
    assert max(sizes) - min(sizes) <= 1


def test_numpy_needs_a_thread() -> None:
    from pe_kernels.blocked import NumpyBlockedBackend

    with pytest.raises(ValueError, match="threads must be >= 1"):
        NumpyBlockedBackend(threads=0)


def test_torch_blocks_are_larger_on_a_device_by_default() -> None:
    from pe_kernels.blocked import DEVICE_MAX_BLOCK_BYTES, TorchBlockedBackend
    from pe_kernels.reference import DEFAULT_MAX_BLOCK_BYTES

    assert TorchBlockedBackend().max_block_bytes == DEFAULT_MAX_BLOCK_BYTES
    # Only stored here: the device is first touched by a search.
    assert TorchBlockedBackend(device="cuda:1").max_block_bytes == DEVICE_MAX_BLOCK_BYTES
    assert DEVICE_MAX_BLOCK_BYTES > DEFAULT_MAX_BLOCK_BYTES
    assert TorchBlockedBackend(4096, device="cuda").max_block_bytes == 4096
