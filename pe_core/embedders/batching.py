"""Fixed-shape batching: what makes a private record's vector a function of that record alone.

The vote-sensitivity proof assumes each private record's votes depend on that record alone, so
its embedding must too, bit for bit: near a tie, a last-bit change moves a vote. A network's
output bits depend on the shapes it runs at (BLAS and oneDNN pick kernels and reduction orders
by shape: a sentence's MiniLM vector in a pass of 4 rows differs by 1.5e-7 from the same
sentence alone), on the thread count (Inception features move by up to 5e-6 between 1 and 2
torch threads) and on data-dependent branches (transformers skips the attention mask when no
row of a batch has padding). What we rely on is that, for a fixed shape, the content of the
other rows does not reach a row's bits: every layer is row-wise or a GEMM / convolution whose
output rows are each reduced in one order whatever the other rows hold. The
:class:`~pe_core.embedders.base.Embedder` contract tests check that on every shipped embedder,
with each record at several batch positions among different batch-mates.

So the torch embedders run every record in a batch whose shape is a function of that record
alone: records are grouped by a key computed from the record itself (its token count and mask
for a transformer; the fixed 299 x 299 input for Inception), each group runs in batches of a
fixed number of rows that depends on the key only, and empty rows are filled with public filler
(zeros), never left out. The torch thread count is read once and pinned for every call.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def fixed_shape_batches(
    keys: Sequence[K], rows: Callable[[K], int]
) -> Iterator[tuple[K, list[int]]]:
    """Splits record indices into batches of records that share a shape key.

    Args:
        keys: one shape key per record, computed from that record alone.
        rows: the batch's row count for a key (a function of the key only, at least 1).

    Yields:
        (key, indices): at most ``rows(key)`` indices of records with that key, in input order.
        The caller pads each batch to exactly ``rows(key)`` rows with public filler, so a
        record's tensor shape never depends on how many records share its key.
    """
    groups: dict[K, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    for key, members in groups.items():
        size = rows(key)
        if size < 1:
            raise ValueError(f"a batch needs at least one row, got {size} for key {key!r}")
        for start in range(0, len(members), size):
            yield key, members[start : start + size]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Runs the block with ``count`` torch intra-op threads, then restores the previous count.

    The thread count is process-wide in torch, so a concurrent caller in another Python thread
    would see it too; embedders run in the job's own thread, where that cannot happen.
    """
    import torch

    previous = torch.get_num_threads()
    if previous != count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def check_num_threads(num_threads: int | None) -> None:
    """Refuses a thread count below one (None means: the count torch has when the model loads)."""
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"num_threads must be positive, got {num_threads}")
