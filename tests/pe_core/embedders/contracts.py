"""The record-independence contract every registered embedder must pass, as a test mixin.

The vote-sensitivity proof needs each private record's vector to be a function of that record
alone, bit for bit (see :class:`pe_core.embedders.base.Embedder`). Usage::

    class TestMyEmbedderIsRecordIndependent(RecordIndependenceContract):
        registered_name = "my-embedder"

        @classmethod
        def make_embedder(cls) -> Embedder: ...

        @classmethod
        def make_records(cls) -> Samples: ...  # ``n`` records, 200 unless there is a reason
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from pe_core.embedders import Embedder
from pe_core.samples import Samples


def assert_same_bits(got: NDArray[np.float32], expected: NDArray[np.float32], what: str) -> None:
    """Fails unless both are float32 arrays of one shape with identical bytes, row by row."""
    assert got.dtype == np.float32 and expected.dtype == np.float32, (got.dtype, expected.dtype)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    differ = np.flatnonzero(
        (np.ascontiguousarray(got).view(np.uint32) != expected.view(np.uint32)).any(axis=1)
    )
    if len(differ):
        gap = float(np.abs(got.astype(np.float64) - expected).max())
        raise AssertionError(
            f"{what}: {len(differ)} of {len(got)} records got other bits than in the whole "
            f"dataset (max |difference| {gap:.3g}; rows {differ[:8].tolist()})"
        )


def record_orders(n: int) -> dict[str, NDArray[np.int64]]:
    """Three other batch positions for every record, and the dataset less its first record."""
    every = np.arange(n, dtype=np.int64)
    return {
        "reversed": every[::-1].copy(),
        "rotated by a third": np.roll(every, n // 3),
        "shuffled": np.random.default_rng(0).permutation(n),
        "without the first record": every[1:],
    }


def check_record_independence(embedder: Embedder, records: Samples) -> None:
    """``embed(D)[i]`` equals record i embedded in other orders, in D less one record, alone."""
    whole = embedder.embed(records)
    for what, order in record_orders(len(records)).items():
        assert_same_bits(embedder.embed(records.take(order)), whole[order], what)
    alone = np.concatenate([embedder.embed(records.take([i])) for i in range(len(records))])
    assert_same_bits(alone, whole, "each record embedded alone")


class RecordIndependenceContract:
    """Checks one embedder instance on ``n`` records (made once per class).

    Subclasses set ``registered_name`` (the registry name they stand for; a test checks that
    every registered embedder has a contract class) and implement :meth:`make_embedder` and
    :meth:`make_records`. Records should be awkward: varied lengths or sizes, duplicates, a
    count that leaves the last batch short.
    """

    registered_name: ClassVar[str]
    n: ClassVar[int] = 200

    @classmethod
    def make_embedder(cls) -> Embedder:
        raise NotImplementedError

    @classmethod
    def make_records(cls) -> Samples:
        raise NotImplementedError

    @pytest.fixture(scope="class")
    @classmethod
    def embedder(cls) -> Embedder:
        return cls.make_embedder()

    @pytest.fixture(scope="class")
    @classmethod
    def records(cls) -> Samples:
        records = cls.make_records()
        assert len(records) == cls.n
        return records

    def test_a_vector_is_a_function_of_its_record_alone(
        self, embedder: Embedder, records: Samples
    ) -> None:
        check_record_independence(embedder, records)

    def test_a_later_torch_thread_count_does_not_change_vectors(
        self, embedder: Embedder, records: Samples
    ) -> None:
        # Another part of the process (a generator's num_threads) may change torch's count
        # between the private embedding and a neighbouring run's; the embedder pins its own.
        some = records.take(np.arange(min(8, len(records))))
        before = embedder.embed(some)
        threads = torch.get_num_threads()
        pinned = getattr(embedder, "num_threads", None) or threads
        torch.set_num_threads(1 if pinned > 1 else 2)
        try:
            after = embedder.embed(some)
        finally:
            torch.set_num_threads(threads)
        assert_same_bits(after, before, "after torch's thread count changed")
