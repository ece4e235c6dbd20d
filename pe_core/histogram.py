"""The nearest-neighbour vote histogram whose noisy release is PE's only use of private data.

Step 2 of PE's loop (Alg. 2 of arXiv:2305.15560): each private record votes for its k nearest
synthetic samples of its own label, in an embedding space. The clean counts built here are
private: they live only in memory, are handed straight to the noise mechanism and are never
logged, checkpointed or returned to a user.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from pe_core.apis.base import BatchedVariations, VariationApi
from pe_core.samples import Samples
from pe_kernels.base import (
    NearestNeighbourBackend,
    check_search_inputs,
    dedupe_rows,
    vote_histogram,
)


def prepare_embeddings(
    embeddings: NDArray[np.floating], metric: Literal["l2", "cosine"]
) -> NDArray[np.float32]:
    """Returns C-contiguous float32 vectors in which squared L2 ranks neighbours for ``metric``.

    Cosine similarity ranks like L2 on unit vectors (||a - b||^2 = 2 - 2 cos), so cosine is L2
    after normalising in float64. A zero vector stays zero.
    """
    vectors = np.asarray(embeddings)
    if metric != "cosine" and vectors.dtype.kind == "f":
        # No float64 round trip for L2: float32 values pass through it unchanged, and wider
        # floats round to float32 once either way.
        return np.ascontiguousarray(vectors, dtype=np.float32)
    vectors = vectors.astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def lookahead_embeddings(
    api: VariationApi,
    embed: Callable[[Samples], NDArray[np.float32]],
    population: Samples,
    *,
    lookahead: int,
    degree: float,
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """Embeddings the population is judged by (Sec. 4 "lookahead" of arXiv:2305.15560).

    With ``lookahead`` L > 0, a sample's embedding is the mean of the embeddings of L fresh
    variations of it at ``degree``, so a sample is voted for by what its variations look like;
    the variations are then discarded. Otherwise it is the sample's own embedding. An API
    that batches variations (:class:`~pe_core.apis.base.BatchedVariations`) makes the L
    variations in one call, which gives the same ones.
    """
    if lookahead == 0:
        return embed(population)
    variations = (
        api.variations(population, degree, rng, lookahead)
        if isinstance(api, BatchedVariations)
        else (api.variation(population, degree, rng) for _ in range(lookahead))
    )
    total: NDArray[np.float64] | None = None
    for varied in variations:
        vectors = embed(varied)
        # In place, in float64 (each float32 value widens exactly), so no 2,000 x d float64
        # temporaries per variation; astype copies, so a cached embedding is never written.
        if total is None:
            total = vectors.astype(np.float64)
        else:
            total += vectors
    assert total is not None
    total /= lookahead
    return total.astype(np.float32)


def vote_counts(
    private_by_label: Sequence[NDArray[np.float32]],
    synthetic: NDArray[np.float32],
    synthetic_labels: NDArray[np.int64],
    *,
    k: int,
    backend: NearestNeighbourBackend,
) -> NDArray[np.int64]:
    """Clean vote counts, one per synthetic sample, in population order. PRIVATE: noise them.

    Private records of label c vote only among synthetic samples of label c (labels partition
    both sides). Exact duplicate synthetic vectors are merged before the search: the first
    occurrence takes the votes and its twins get none, which is "ties go to the lowest index"
    and makes a record's k votes land on k distinct bins.

    Sensitivity (add/remove one record; Sec. 4 of arXiv:2305.15560): adding or removing one
    private record x of label c changes only the search of x itself: records vote
    independently, and the synthetic population is fixed by the earlier releases (adaptive
    composition covers that dependence, so it is conditioned on here). x adds exactly one vote
    to each of at most k DISTINCT bins of its own partition (distinct because duplicates were
    merged; at most k because a partition with fewer than k distinct samples yields fewer), so
    the count vector moves by 0 or 1 in each of at most k coordinates: L-inf sensitivity 1 with
    at most k coordinates touched. Independent discrete Gaussian noise per coordinate then has
    the privacy loss of k composed one-dimensional discrete Gaussian mechanisms of sensitivity
    1, which is how ``pe_core.privacy.accounting`` charges it (k releases of sensitivity 1 per
    iteration).

    Args:
        private_by_label: per label index c, (n_c, d) float32 private embeddings.
        synthetic: (m, d) float32 synthetic embeddings.
        synthetic_labels: (m,) label index of each synthetic sample.
        k: neighbours each record votes for.
        backend: exact nearest-neighbour backend from ``pe_kernels``.

    Returns:
        (m,) int64 clean counts.
    """
    counts = np.zeros(len(synthetic), dtype=np.int64)
    for label, private in enumerate(private_by_label):
        members = np.flatnonzero(synthetic_labels == label)
        if len(private) == 0 or len(members) == 0:
            continue
        unique, first, _ = dedupe_rows(synthetic[members])
        unique_counts = vote_histogram(backend, private, unique, k)
        np.add.at(counts, members[first], unique_counts)
    return counts


def user_vote_counts(
    private_by_label: Sequence[NDArray[np.float32]],
    users_by_label: Sequence[NDArray[np.int64]],
    synthetic: NDArray[np.float32],
    synthetic_labels: NDArray[np.int64],
    *,
    k: int,
    votes_per_user: int,
    backend: NearestNeighbourBackend,
) -> NDArray[np.int64]:
    """Clean vote counts with one USER as the unit of privacy. PRIVATE: noise them.

    Every record finds its k nearest synthetic samples of its own label, as in
    :func:`vote_counts` (duplicates merged, so the bins are distinct). A user then votes once for
    each of at most c = ``votes_per_user`` DISTINCT bins among all of their records' neighbours,
    across all their labels: the bins most of their own records chose, ties to the lowest
    index. The choice reads that user's records and the public synthetic set only.

    Sensitivity (add/remove one user, with all their records, of any labels): users vote
    independently, and the synthetic population is fixed by the earlier releases (adaptive
    composition covers that dependence). The added or removed user's vote vector is 0/1 with
    at most c ones, and no other user's votes change, so the histogram (one vector over all
    label partitions: a user with records of several labels still touches at most c bins in
    total) moves by 0 or 1 in each of at most c coordinates. With independent discrete Gaussian
    noise per coordinate that is c composed one-dimensional discrete Gaussian mechanisms of
    sensitivity 1: ``PeJob.releases_per_iteration`` charges c releases per iteration. The bound
    is asserted per user before the counts leave this function.

    Args:
        private_by_label: per label index c, (n_c, d) float32 private embeddings.
        users_by_label: per label index c, (n_c,) int64 user codes of those records (codes are
            shared across labels: one user, one code).
        synthetic: (m, d) float32 synthetic embeddings.
        synthetic_labels: (m,) label index of each synthetic sample.
        k: neighbours each record looks at.
        votes_per_user: c, the most bins one user votes for.
        backend: exact nearest-neighbour backend from ``pe_kernels``.

    Returns:
        (m,) int64 clean counts.

    Raises:
        AssertionError: a user would add more than 1 to a bin or vote for more than c bins.
    """
    m = len(synthetic)
    user_parts: list[NDArray[np.int64]] = []
    bin_parts: list[NDArray[np.int64]] = []
    for label, (private, users) in enumerate(zip(private_by_label, users_by_label, strict=True)):
        members = np.flatnonzero(synthetic_labels == label)
        if len(private) == 0 or len(members) == 0:
            continue
        unique, first, _ = dedupe_rows(synthetic[members])
        check_search_inputs(private, unique, k, values=False)
        neighbours = backend.search(private, unique, k)
        found = neighbours >= 0
        user_parts.append(np.repeat(users, found.sum(axis=1)))
        bin_parts.append(members[first][neighbours[found]])
    if not user_parts:
        return np.zeros(m, dtype=np.int64)
    bins = _top_bins_per_user(np.concatenate(user_parts), np.concatenate(bin_parts), votes_per_user)
    return np.bincount(bins, minlength=m).astype(np.int64)


def user_label_counts(
    labels: NDArray[np.int64], users: NDArray[np.int64], n_labels: int, labels_per_user: int
) -> NDArray[np.int64]:
    """Clean counts of distinct users per label, each user in at most c_L labels. PRIVATE.

    A user is counted in the c_L = ``labels_per_user`` labels holding most of their records
    (ties to the lowest label index), chosen from their own records alone. Adding or removing a
    user changes at most c_L counts, each by 1: c_L releases of sensitivity 1
    (``PeJob.label_count_releases``).

    Args:
        labels: (n,) label index of each private record.
        users: (n,) user code of each private record.
        n_labels: the size of the label set.
        labels_per_user: c_L.

    Returns:
        (n_labels,) int64 clean counts.
    """
    bins = _top_bins_per_user(users, labels, labels_per_user)
    return np.bincount(bins, minlength=n_labels).astype(np.int64)


def _top_bins_per_user(
    users: NDArray[np.int64], bins: NDArray[np.int64], bound: int
) -> NDArray[np.int64]:
    """One entry per (user, bin) kept: each user's ``bound`` bins chosen most often among the
    user's own (user, bin) rows, ties to the lowest bin.

    The sensitivity the accountant charges is checked on the result, before any noise: each
    user adds at most 1 to any bin and touches at most ``bound`` bins.

    Raises:
        AssertionError: the bound does not hold (a bug: it would void the guarantee).
    """
    if not len(users):
        return np.zeros(0, dtype=np.int64)
    pairs, times = np.unique(np.stack([users, bins], axis=1), axis=0, return_counts=True)
    pairs = pairs[np.lexsort((pairs[:, 1], -times, pairs[:, 0]))]
    starts = np.flatnonzero(np.r_[True, pairs[1:, 0] != pairs[:-1, 0]])
    rank = np.arange(len(pairs)) - np.repeat(starts, np.diff(np.r_[starts, len(pairs)]))
    kept = pairs[rank < bound]
    if len(np.unique(kept, axis=0)) != len(kept):
        raise AssertionError("a user would add more than one vote to a bin")
    if np.bincount(kept[:, 0]).max() > bound:
        raise AssertionError(f"a user would touch more than {bound} bins")
    return kept[:, 1]
