import numpy as np

from pe_core.histogram import prepare_embeddings, vote_counts
from pe_core.nn import create_backend
from pe_kernels.reference import reference_search


def backend():
    return create_backend("numpy-blocked")


def test_votes_stay_within_label_partitions():
    private_by_label = [np.zeros((3, 2), np.float32), np.ones((5, 2), np.float32)]
    synthetic = np.array([[1, 1], [0, 0], [1, 1.1], [0, 0.1]], np.float32)
    labels = np.array([0, 0, 1, 1])
    counts = vote_counts(private_by_label, synthetic, labels, k=1, backend=backend())
    # label 0 records sit at the origin: nearest label-0 sample is index 1;
    # label 1 records sit at (1, 1): nearest label-1 sample is index 2.
    np.testing.assert_array_equal(counts, [0, 3, 5, 0])


def test_duplicates_are_merged_so_k_votes_hit_distinct_bins():
    private_by_label = [np.zeros((4, 3), np.float32)]
    synthetic = np.array([[1, 0, 0], [1, 0, 0], [2, 0, 0], [1, 0, 0], [3, 0, 0]], np.float32)
    counts = vote_counts(private_by_label, synthetic, np.zeros(5, np.int64), k=2, backend=backend())
    np.testing.assert_array_equal(counts, [4, 0, 4, 0, 0])
    assert counts.sum() == 4 * 2


def test_partition_smaller_than_k_gives_fewer_votes():
    private_by_label = [np.zeros((3, 2), np.float32), np.zeros((2, 2), np.float32)]
    synthetic = np.array([[0, 1], [5, 5], [0, 2]], np.float32)
    labels = np.array([0, 1, 0])
    counts = vote_counts(private_by_label, synthetic, labels, k=3, backend=backend())
    np.testing.assert_array_equal(counts, [3, 2, 3])


def test_counts_match_reference_on_random_data():
    rng = np.random.default_rng(0)
    private = rng.normal(size=(200, 16)).astype(np.float32)
    synthetic = rng.normal(size=(50, 16)).astype(np.float32)
    counts = vote_counts([private], synthetic, np.zeros(50, np.int64), k=3, backend=backend())
    expected = np.bincount(reference_search(private, synthetic, 3).ravel(), minlength=50)
    np.testing.assert_array_equal(counts, expected)


def test_cosine_normalises_and_keeps_zero_vectors():
    vectors = prepare_embeddings(np.array([[3.0, 4.0], [0.0, 0.0]]), "cosine")
    np.testing.assert_allclose(vectors, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)
    assert vectors.dtype == np.float32 and vectors.flags.c_contiguous
