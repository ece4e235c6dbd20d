import collections

import numpy as np
import pytest

from pe_core.apis import DrawText
from pe_core.apis.base import BatchedVariations
from pe_core.embedders.raw_pixels import RawPixelsEmbedder
from pe_core.histogram import (
    lookahead_embeddings,
    prepare_embeddings,
    user_label_counts,
    user_vote_counts,
    vote_counts,
)
from pe_core.nn import create_backend
from pe_core.samples import Samples
from pe_kernels.reference import exact_sq_dist, reference_search


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


# ---------------------------------------------------------------------------------------------
# One user as the unit of privacy


def reference_user_votes(private_by_label, users_by_label, synthetic, labels, k, c):
    """Loops over records and users, with exact float64 distances: the definition."""
    counts = np.zeros(len(synthetic), np.int64)
    chosen: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for label, (private, users) in enumerate(zip(private_by_label, users_by_label, strict=True)):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        firsts = [
            i
            for j, i in enumerate(members)
            if not any(np.array_equal(synthetic[i], synthetic[members[p]]) for p in range(j))
        ]
        for record, user in zip(private, users.tolist(), strict=True):
            rows = np.repeat(record[None, :], len(firsts), axis=0)
            distances = exact_sq_dist(rows, synthetic[firsts])
            order = sorted(range(len(firsts)), key=lambda j: (distances[j], j))[:k]
            for j in order:
                chosen[user][firsts[j]] += 1
    for bins in chosen.values():
        for bin_ in sorted(bins, key=lambda b: (-bins[b], b))[:c]:
            counts[bin_] += 1
    return counts  # fmt: skip


def user_data(seed, n_users=12, n_records=60, n_labels=3, m=30, dim=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n_records)
    users = rng.integers(0, n_users, n_records)
    # Few distinct values: many ties and duplicate synthetic rows.
    private = rng.integers(0, 3, (n_records, dim)).astype(np.float32)
    synthetic = rng.integers(0, 3, (m, dim)).astype(np.float32)
    synthetic_labels = rng.integers(0, n_labels, m)
    by_label = [private[labels == c] for c in range(n_labels)]
    users_by_label = [users[labels == c] for c in range(n_labels)]
    return by_label, users_by_label, synthetic, synthetic_labels, users, labels


@pytest.mark.parametrize(
    ("seed", "k", "c"), [(0, 1, 1), (1, 2, 1), (2, 3, 2), (3, 1, 4), (4, 4, 3)]
)
def test_user_votes_match_the_definition(seed, k, c):
    by_label, users_by_label, synthetic, synthetic_labels, _, _ = user_data(seed)
    expected = reference_user_votes(by_label, users_by_label, synthetic, synthetic_labels, k, c)
    got = user_vote_counts(
        by_label, users_by_label, synthetic, synthetic_labels, k=k, votes_per_user=c,
        backend=backend(),
    )  # fmt: skip
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(("k", "c"), [(1, 1), (3, 2), (5, 4)])
def test_one_user_moves_at_most_c_counts_by_one(k, c):
    """The sensitivity the accountant charges: removing one user, whatever labels their records
    have, changes at most c counts, each by 1, and leaves the other users' votes alone."""
    by_label, users_by_label, synthetic, synthetic_labels, users, _ = user_data(7, n_users=6)
    full = user_vote_counts(
        by_label, users_by_label, synthetic, synthetic_labels, k=k, votes_per_user=c,
        backend=backend(),
    )  # fmt: skip
    for gone in np.unique(users).tolist():
        keep = [u != gone for u in users_by_label]
        without = user_vote_counts(
            [p[m] for p, m in zip(by_label, keep, strict=True)],
            [u[m] for u, m in zip(users_by_label, keep, strict=True)],
            synthetic, synthetic_labels, k=k, votes_per_user=c, backend=backend(),
        )  # fmt: skip
        change = full - without
        assert set(change.tolist()) <= {0, 1} and change.sum() <= c


def test_a_user_with_many_records_still_votes_c_times():
    by_label = [np.zeros((50, 2), np.float32), np.ones((50, 2), np.float32)]
    users_by_label = [np.zeros(50, np.int64), np.zeros(50, np.int64)]  # one user, two labels
    synthetic = np.array([[0, 0], [0, 0.5], [1, 1], [1, 1.5]], np.float32)
    counts = user_vote_counts(
        by_label, users_by_label, synthetic, np.array([0, 0, 1, 1]), k=2, votes_per_user=3,
        backend=backend(),
    )  # fmt: skip
    assert counts.sum() == 3 and counts.max() == 1


def test_user_label_counts_count_each_user_in_at_most_c_labels():
    labels = np.array([0, 0, 1, 2, 2, 2, 1, 1])
    users = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    # user 0: labels 0 (2 records), 1 (1), 2 (1); user 1: label 2; user 2: label 1.
    np.testing.assert_array_equal(user_label_counts(labels, users, 3, 1), [1, 1, 1])
    np.testing.assert_array_equal(user_label_counts(labels, users, 3, 2), [1, 2, 1])
    np.testing.assert_array_equal(user_label_counts(labels, users, 3, 3), [1, 2, 2])


class _OneAtATime:
    """A drawtext API seen through the plain protocol: no batched ``variations``."""

    def __init__(self, api):
        self.api = api

    def variation(self, samples, degree, rng):
        return self.api.variation(samples, degree, rng)


def test_lookahead_through_batched_variations_is_the_same_as_one_call_each():
    api = DrawText([str(d) for d in range(10)])
    assert isinstance(api, BatchedVariations)
    assert not isinstance(_OneAtATime(api), BatchedVariations)
    population = Samples.concat(
        [api.random(label, 40, np.random.default_rng(label)) for label in (2, 5)]
    )
    embed = RawPixelsEmbedder().embed
    batched = lookahead_embeddings(
        api, embed, population, lookahead=3, degree=0.6, rng=np.random.default_rng(1)
    )
    single = lookahead_embeddings(
        _OneAtATime(api), embed, population, lookahead=3, degree=0.6, rng=np.random.default_rng(1)
    )
    assert batched.dtype == np.float32 and batched.shape == (80, 28 * 28)
    np.testing.assert_array_equal(batched, single)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int64])
def test_l2_embeddings_are_the_float64_round_trip_without_it(dtype):
    rng = np.random.default_rng(3)
    embeddings = (rng.standard_normal((50, 7)) * 1e3).astype(dtype)
    prepared = prepare_embeddings(embeddings, "l2")
    assert prepared.dtype == np.float32 and prepared.flags.c_contiguous
    np.testing.assert_array_equal(prepared, embeddings.astype(np.float64).astype(np.float32))
