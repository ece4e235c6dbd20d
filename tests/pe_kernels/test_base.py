from __future__ import annotations

import numpy as np
import pytest

from pe_kernels import BUILT_IN_BACKENDS, NumpyBlockedBackend
from pe_kernels.base import NearestNeighbourBackend, VotingBackend, dedupe_rows, vote_histogram
from pe_kernels.reference import reference_search


def test_every_backend_is_built_in_once_with_its_facts() -> None:
    names = [backend.name for backend in BUILT_IN_BACKENDS]
    assert names == [
        "reference",
        "numpy-blocked",
        "numpy-blocked-bf16",
        "torch-blocked",
        "faiss",
        "triton",
    ]
    assert {b.name for b in BUILT_IN_BACKENDS if b.on_device} == {"torch-blocked", "triton"}
    assert {b.name: b.requires for b in BUILT_IN_BACKENDS if b.requires} == {
        "numpy-blocked-bf16": "torch",
        "faiss": "faiss",
        "triton": "triton",
    }


@pytest.mark.parametrize("backend", BUILT_IN_BACKENDS[:4], ids=lambda b: b.name)
def test_built_backends_follow_the_protocol(backend: type[NearestNeighbourBackend]) -> None:
    built = backend()
    assert isinstance(built, NearestNeighbourBackend)
    assert built.name == backend.name


def test_faiss_is_built_only_with_faiss_installed() -> None:
    pytest.importorskip("faiss")
    from pe_kernels import FaissBackend

    assert FaissBackend().name == "faiss"


@pytest.mark.parametrize(("n", "m", "k"), [(50, 20, 1), (50, 20, 3), (7, 2, 5), (1, 1, 2)])
def test_vote_histogram_counts_each_record_min_k_m_times(n: int, m: int, k: int) -> None:
    rng = np.random.default_rng(n + m + k)
    private = rng.standard_normal((n, 6)).astype(np.float32)
    synthetic = rng.standard_normal((m, 6)).astype(np.float32)
    votes = vote_histogram(NumpyBlockedBackend(), private, synthetic, k)
    assert votes.shape == (m,) and votes.dtype == np.int64
    assert votes.sum() == n * min(k, m)
    neighbours = reference_search(private, synthetic, k)
    np.testing.assert_array_equal(votes, np.bincount(neighbours[neighbours >= 0], minlength=m))


def test_vote_histogram_uses_a_backends_own_votes() -> None:
    class Counting:
        name = "counting"
        requires = None
        on_device = False

        def search(self, private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
            raise AssertionError("search must not be called when votes exists")

        def votes(self, private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
            return np.arange(len(synthetic), dtype=np.int64)

    backend = Counting()
    assert isinstance(backend, VotingBackend)
    assert not isinstance(NumpyBlockedBackend(), VotingBackend)
    votes = vote_histogram(backend, np.ones((2, 3), np.float32), np.ones((4, 3), np.float32), 1)
    np.testing.assert_array_equal(votes, [0, 1, 2, 3])


def test_vote_histogram_leaves_values_to_the_backend() -> None:
    # The backend reads every value anyway (the Triton one as float64 norms), so vote_histogram
    # scans them only for its own no-records shortcut.
    seen: list[bool] = []

    class Counting:
        name = "counting"
        requires = None
        on_device = False

        def search(self, private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
            raise AssertionError("search must not be called when votes exists")

        def votes(self, private: np.ndarray, synthetic: np.ndarray, k: int) -> np.ndarray:
            seen.append(bool(np.isnan(private).any()))
            return np.zeros(len(synthetic), dtype=np.int64)

    nan_rows = np.full((2, 3), np.nan, np.float32)
    vote_histogram(Counting(), nan_rows, np.ones((4, 3), np.float32), 1)
    assert seen == [True]
    with pytest.raises(ValueError, match="private embeddings contain NaN"):
        vote_histogram(NumpyBlockedBackend(), nan_rows, np.ones((4, 3), np.float32), 1)
    with pytest.raises(ValueError, match="synthetic embeddings contain NaN"):
        vote_histogram(Counting(), np.zeros((0, 3), np.float32), nan_rows, 1)


def test_vote_histogram_of_no_records_is_zero() -> None:
    votes = vote_histogram(
        NumpyBlockedBackend(),
        np.zeros((0, 4), np.float32),
        np.ones((3, 4), np.float32),
        2,
    )
    np.testing.assert_array_equal(votes, [0, 0, 0])
    assert votes.dtype == np.int64


def test_vote_histogram_refuses_an_empty_partition() -> None:
    with pytest.raises(ValueError, match="synthetic partition is empty"):
        vote_histogram(
            NumpyBlockedBackend(),
            np.ones((3, 4), np.float32),
            np.zeros((0, 4), np.float32),
            1,
        )


def test_dedupe_keeps_first_occurrences_in_order() -> None:
    rows = np.array([[1, 2], [3, 4], [1, 2], [0, 0], [3, 4], [-0.0, 0], [5, 5]], dtype=np.float32)
    unique, first, inverse = dedupe_rows(rows)
    np.testing.assert_array_equal(first, [0, 1, 3, 6])
    np.testing.assert_array_equal(unique, rows[[0, 1, 3, 6]])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 2, 1, 2, 3])
    np.testing.assert_array_equal(unique[inverse], rows)
    assert first.dtype == inverse.dtype == np.int64


def test_dedupe_round_trips_random_resamples() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 5)).astype(np.float32)
    rows = base[rng.integers(0, 30, size=200)]
    unique, first, inverse = dedupe_rows(rows)
    assert len(np.unique(unique, axis=0)) == len(unique)
    assert np.all(np.diff(first) > 0)
    np.testing.assert_array_equal(rows[first], unique)
    np.testing.assert_array_equal(unique[inverse], rows)
    # Every row's first occurrence is the one kept.
    for i, u in enumerate(inverse):
        assert first[u] == np.flatnonzero((rows == rows[i]).all(axis=1))[0]


def test_dedupe_of_nothing() -> None:
    unique, first, inverse = dedupe_rows(np.zeros((0, 3), np.float32))
    assert unique.shape == (0, 3) and first.size == inverse.size == 0


def test_dedupe_refuses_nan() -> None:
    with pytest.raises(ValueError, match="NaN"):
        dedupe_rows(np.array([[np.nan]], dtype=np.float32))
