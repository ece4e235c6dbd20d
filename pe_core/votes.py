"""Where the clean vote histogram is counted: in this process, or summed over shards.

The engine asks a :class:`VoteCounter` for the clean counts of each iteration and hands them
straight to the noise. :class:`LocalVotes` counts every private record here. A distributed
counter (the service's ``workers.fanout``) counts disjoint shards of the records elsewhere and
sums their partial histograms exactly; :func:`shard_of` is the partition both sides agree on.

Why summing shards is the same release (see ``pe_core.histogram`` for the sensitivity
argument): records vote independently and each partial is an integer histogram of its own
records over the same synthetic set, so the sum equals the single-process counts exactly,
provided every record is in exactly one shard. A record in two shards would vote twice and
double its sensitivity; a user split over shards could vote for up to c bins in each. So the
partition gives every record one shard, keeps each user's records in one shard, and
:func:`shard_of` asserts both before any count is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from pe_core.config import PeJob
from pe_core.errors import PrivevoError
from pe_core.histogram import prepare_embeddings, user_vote_counts, vote_counts
from pe_core.nn import ResolvedBackend, resolve_backend
from pe_core.samples import Samples


class VoteCounter(Protocol):
    """Counts the clean votes of all private records for one synthetic set. PRIVATE.

    Attributes:
        backend_name: the nearest-neighbour backend used, for the report (None before the first
            count).
    """

    @property
    def backend_name(self) -> str | None: ...

    def counts(
        self, iteration: int, synthetic: NDArray[np.float32], labels: NDArray[np.int64]
    ) -> NDArray[np.int64]:
        """The (m,) clean counts of iteration ``iteration`` for the (m, d) prepared ``synthetic``
        embeddings (``pe_core.histogram.prepare_embeddings``) and their label indices."""
        ...

    def released(self, iteration: int) -> None:
        """The noisy release of ``iteration`` is in the ledger: drop what was kept to count it."""
        ...


VoteCounterFactory = Callable[[Samples], VoteCounter]
"""Builds the counter of a run from its private records (once per run, after any resume)."""


@dataclass(frozen=True)
class PrivateVectors:
    """Private records prepared for the vote. PRIVATE.

    Attributes:
        by_label: per label index, the (n_c, d) float32 prepared embeddings of its records.
        users_by_label: per label index, the (n_c,) user codes of those records (one code per
            user across labels); None when the unit of privacy is one record.
    """

    by_label: list[NDArray[np.float32]]
    users_by_label: list[NDArray[np.int64]] | None

    @property
    def records(self) -> int:
        return sum(len(vectors) for vectors in self.by_label)


def user_codes(private: Samples) -> NDArray[np.int64]:
    """One integer per user, shared by all of that user's records and labels."""
    if private.users is None:
        raise PrivevoError(
            "the job's unit of privacy is one user, but the records name no users: give the "
            "user column (--user-column, or user_column at upload)"
        )
    return np.unique(private.users, return_inverse=True)[1].astype(np.int64)


def prepare_private(
    private: Samples,
    embed: Callable[[Samples], NDArray[np.floating]],
    *,
    metric: Literal["l2", "cosine"],
    privacy_unit: Literal["record", "user"],
) -> PrivateVectors:
    """Embeds ``private`` and splits it by label (with user codes for a user-level job)."""
    vectors = prepare_embeddings(embed(private), metric)
    partitions = [private.labels == label for label in range(len(private.label_names))]
    users = None
    if privacy_unit == "user":
        codes = user_codes(private)
        users = [codes[members] for members in partitions]
    return PrivateVectors([vectors[members] for members in partitions], users)


def count_votes(
    private: PrivateVectors,
    synthetic: NDArray[np.float32],
    labels: NDArray[np.int64],
    *,
    job: PeJob,
    backend: ResolvedBackend,
) -> NDArray[np.int64]:
    """The clean counts of ``private`` for the job's unit of privacy. PRIVATE: noise them."""
    if private.users_by_label is None:
        return vote_counts(private.by_label, synthetic, labels, k=job.k, backend=backend.backend)
    return user_vote_counts(
        private.by_label,
        private.users_by_label,
        synthetic,
        labels,
        k=job.k,
        votes_per_user=job.votes_per_user,
        backend=backend.backend,
    )


def backend_for(
    job: PeJob, private: PrivateVectors, synthetic: NDArray[np.float32]
) -> ResolvedBackend:
    """The job's nearest-neighbour backend; ``auto`` chooses one by the sizes of the vote."""
    return resolve_backend(
        job.nn_backend,
        n_private=private.records,
        n_synthetic=len(synthetic),
        dim=synthetic.shape[1],
    )


class LocalVotes:
    """Counts every private record in this process (the default, and the CLI's only way).

    Args:
        job: the job (k, the unit of privacy, the backend).
        private: the prepared private records.
        backend: the backend already built for a named ``nn_backend``; None for ``auto``, which
            is chosen at the first count, when the sizes are known.
    """

    def __init__(
        self, job: PeJob, private: PrivateVectors, backend: ResolvedBackend | None = None
    ) -> None:
        self.job = job
        self.private = private
        self.backend = backend

    @property
    def backend_name(self) -> str | None:
        return None if self.backend is None else self.backend.name

    def counts(
        self, iteration: int, synthetic: NDArray[np.float32], labels: NDArray[np.int64]
    ) -> NDArray[np.int64]:
        if self.backend is None:
            self.backend = backend_for(self.job, self.private, synthetic)
        return count_votes(self.private, synthetic, labels, job=self.job, backend=self.backend)

    def released(self, iteration: int) -> None:
        pass  # nothing is kept beyond the call


def shard_of(
    private: Samples, shards: int, privacy_unit: Literal["record", "user"]
) -> NDArray[np.int64]:
    """The shard (0 .. shards - 1) of each private record: records round-robin by position, or
    whole users round-robin by user code. Checked by :func:`check_partition` before it is used.

    Raises:
        ValueError: ``shards`` is below 1.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    codes = user_codes(private) if privacy_unit == "user" else None
    basis = np.arange(len(private), dtype=np.int64) if codes is None else codes
    assignment = basis % shards
    check_partition(assignment, shards, codes)
    return assignment


def check_partition(
    assignment: NDArray[np.int64], shards: int, users: NDArray[np.int64] | None
) -> None:
    """Asserts that ``assignment`` puts every record in exactly one of ``shards`` shards and,
    given the records' ``users``, every user's records in one shard.

    Raises:
        AssertionError: it does not (a bug: a record in two shards votes twice, and a user split
            over shards could vote for c bins in each, voiding the sensitivity bound).
    """
    if assignment.ndim != 1 or not np.all((assignment >= 0) & (assignment < shards)):
        raise AssertionError("a record would be in no shard or in more than one")
    if users is not None:
        if users.shape != assignment.shape:
            raise AssertionError("the user codes do not match the records")
        pairs = np.unique(np.stack([users, assignment], axis=1), axis=0)
        if len(pairs) != len(np.unique(users)):
            raise AssertionError("a user's records would be split over shards")
