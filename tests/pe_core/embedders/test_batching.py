"""Fixed-shape batch planning and the pinned torch thread count."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pe_core.embedders.batching import check_num_threads, fixed_shape_batches, torch_threads


@given(st.lists(st.integers(1, 9), max_size=60), st.integers(1, 5))
def test_batches_hold_each_record_once_with_one_key_and_at_most_rows(
    keys: list[int], per_key: int
) -> None:
    def rows(key: int) -> int:
        return 1 + (key * per_key) % 4

    seen = []
    for key, members in fixed_shape_batches(keys, rows):
        assert 1 <= len(members) <= rows(key)
        assert all(keys[i] == key for i in members)
        assert members == sorted(members)
        seen += members
    assert sorted(seen) == list(range(len(keys)))


def test_a_key_without_rows_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        list(fixed_shape_batches(["a"], lambda key: 0))


def test_torch_threads_pins_and_restores_even_on_error() -> None:
    before = torch.get_num_threads()
    other = 1 if before > 1 else 2
    with pytest.raises(RuntimeError, match="inside"), torch_threads(other):
        assert torch.get_num_threads() == other
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_thread_counts_must_be_positive() -> None:
    check_num_threads(None)
    check_num_threads(1)
    with pytest.raises(ValueError, match="num_threads"):
        check_num_threads(0)
