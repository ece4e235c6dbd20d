"""Vote counters and the shard partition: shards sum to the single-process counts exactly."""

import numpy as np
import pytest

from pe_core.config import PeJob
from pe_core.embedders.raw_pixels import RawPixelsEmbedder
from pe_core.nn import resolve_backend
from pe_core.samples import Samples
from pe_core.votes import LocalVotes, check_partition, count_votes, prepare_private, shard_of

JOB = {"iterations": 1, "num_samples": 40, "epsilon": 1.0, "delta": 1e-5, "k": 3}
USER_LEVEL = {"privacy_unit": "user", "votes_per_user": 2}


def records(n: int, seed: int = 0) -> Samples:
    """Random 4x4 images of 3 labels, with 7 users spread over the labels."""
    rng = np.random.default_rng(seed)
    return Samples(
        ids=np.array([f"r{i}" for i in range(n)]),
        labels=rng.integers(0, 3, n),
        label_names=("a", "b", "c"),
        images=rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8),
        users=np.array([f"user-{i % 7}" for i in range(n)]),
    )


@pytest.mark.parametrize("unit", [{}, USER_LEVEL], ids=["record", "user"])
@pytest.mark.parametrize("shards", [1, 2, 5, 9])
def test_shards_sum_to_the_counts_of_all_records(unit: dict, shards: int) -> None:
    job = PeJob(**JOB, **unit)
    private = records(60)
    rng = np.random.default_rng(1)
    synthetic = rng.normal(size=(40, 16)).astype(np.float32)
    synthetic[6] = synthetic[
        3
    ]  # a duplicate (both label 0): its twin takes no votes, in every shard alike
    labels = np.arange(40, dtype=np.int64) % 3

    def prepared(samples: Samples):
        embed = RawPixelsEmbedder().embed
        return prepare_private(samples, embed, metric=job.metric, privacy_unit=job.privacy_unit)

    whole = LocalVotes(job, prepared(private)).counts(1, synthetic, labels)
    assignment = shard_of(private, shards, job.privacy_unit)
    backend = resolve_backend("numpy-blocked", 0, 0, 0)
    parts = [
        count_votes(
            prepared(private.take(np.flatnonzero(assignment == s))),
            synthetic,
            labels,
            job=job,
            backend=backend,
        )
        for s in range(shards)
    ]
    np.testing.assert_array_equal(np.sum(parts, axis=0), whole)
    assert whole[6] == 0 and whole.sum() > 0


def test_shard_of_keeps_users_whole_and_records_once() -> None:
    private = records(50)
    by_record = shard_of(private, 4, "record")
    assert np.array_equal(np.bincount(by_record), [13, 13, 12, 12])
    by_user = shard_of(private, 3, "user")
    for user in np.unique(private.users):
        assert len(set(by_user[private.users == user].tolist())) == 1
    with pytest.raises(ValueError, match="at least 1"):
        shard_of(private, 0, "record")


def test_a_broken_partition_is_refused() -> None:
    users = np.array([0, 0, 1, 1])
    check_partition(np.array([0, 0, 1, 1]), 2, users)
    with pytest.raises(AssertionError, match="split over shards"):
        check_partition(np.array([0, 1, 1, 1]), 2, users)
    with pytest.raises(AssertionError, match="no shard"):
        check_partition(np.array([0, 2, 1, 1]), 2, None)
    with pytest.raises(AssertionError, match="no shard"):
        check_partition(np.array([[0, 1], [1, 1]]), 2, None)
