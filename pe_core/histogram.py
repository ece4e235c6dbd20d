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

from pe_core.apis.base import VariationApi
from pe_core.samples import Samples
from pe_kernels.base import NearestNeighbourBackend, dedupe_rows, vote_histogram


def prepare_embeddings(
    embeddings: NDArray[np.floating], metric: Literal["l2", "cosine"]
) -> NDArray[np.float32]:
    """Returns C-contiguous float32 vectors in which squared L2 ranks neighbours for ``metric``.

    Cosine similarity ranks like L2 on unit vectors (||a - b||^2 = 2 - 2 cos), so cosine is L2
    after normalising in float64. A zero vector stays zero.
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
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
    the variations are then discarded. Otherwise it is the sample's own embedding.
    """
    if lookahead == 0:
        return embed(population)
    total: NDArray[np.float64] | None = None
    for _ in range(lookahead):
        batch = embed(api.variation(population, degree, rng)).astype(np.float64)
        total = batch if total is None else total + batch
    assert total is not None
    return (total / lookahead).astype(np.float32)


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
