"""The nearest-neighbour backend protocol, input checks, votes and row dedupe.

Every private record votes for its k nearest synthetic samples by squared L2 distance (Step 2 of
the PE loop, Alg. 1 of arXiv:2305.15560). Cosine similarity is handled one level up by
normalising both sides, so backends only ever see L2.

Per-record votes are private data: they live only in memory, are returned by ``search`` and
nowhere else, and are never logged.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray


@runtime_checkable
class NearestNeighbourBackend(Protocol):
    """Exact k-nearest-neighbour search by squared L2 distance.

    Attributes:
        name: the registry name of the backend, recorded in job metadata.
        requires: the module the backend needs beyond numpy (``"faiss"``), or None.
        on_device: True when the backend takes a ``device`` argument and runs its distance pass
            on that torch device; False for CPU-only backends.
    """

    name: ClassVar[str]
    requires: ClassVar[str | None]
    on_device: ClassVar[bool]

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        """Finds each private row's k nearest synthetic rows.

        Args:
            private: (n, d) float32 private embeddings.
            synthetic: (m, d) float32 synthetic embeddings.
            k: neighbours per private row, >= 1.

        Returns:
            (n, k) int64 synthetic row indices; row i is sorted by (exact distance, index) with
            the exact distance of ``pe_kernels.reference.exact_sq_dist``, and padded with -1 when
            m < k.

        Raises:
            TypeError, ValueError: inputs that ``check_search_inputs`` refuses, NaN and infinite
                values included (``vote_histogram`` leaves the values to the backend).
        """
        ...


@runtime_checkable
class VotingBackend(NearestNeighbourBackend, Protocol):
    """A backend that also counts votes itself, without returning per-record neighbours.

    ``vote_histogram`` uses ``votes`` where a backend has it (a GPU kernel that adds votes with
    atomics moves m counts to the host instead of n k indices).
    """

    def votes(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        """Vote counts with ``vote_histogram``'s contract.

        The caller has checked types, shapes and k, but not the values: as in ``search``, the
        backend raises ``ValueError`` on NaN or infinite values, best where it reads them anyway
        (a separate host scan of a million rows of 512 takes 0.1-0.2 s, as long as a GPU's
        whole vote).

        Args:
            private: (n, d) float32 private embeddings, n >= 1.
            synthetic: (m, d) float32 synthetic embeddings, m >= 1.
            k: neighbours per record, >= 1.

        Returns:
            (m,) int64 counts equal to the bincount of ``search``'s neighbours.

        Raises:
            ValueError: NaN or infinite values.
        """
        ...


def _all_finite(array: NDArray[np.floating]) -> bool:
    # In chunks of ~4 MB, so the check's boolean temporary stays small whatever the row count.
    rows = max(1, 2**22 // max(1, array.shape[1]))
    return all(np.isfinite(array[i : i + rows]).all() for i in range(0, array.shape[0], rows))


def non_finite_error(role: str) -> ValueError:
    """The error for NaN or infinite embeddings, wherever they are found."""
    return ValueError(f"{role} embeddings contain NaN or infinite values")


def check_search_inputs(
    private: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    k: int,
    *,
    values: bool = True,
) -> None:
    """Raises a clear error unless the arguments fit ``NearestNeighbourBackend.search``.

    Inputs must already be float32: exactness is defined on the float32 values, so a silent
    cast from float64 would change which neighbours are "exact".

    Args:
        private: the private embeddings.
        synthetic: the synthetic embeddings.
        k: neighbours per record.
        values: also scan every value for NaN and infinities (False: the caller checks them).
    """
    for role, array in (("private", private), ("synthetic", synthetic)):
        if not isinstance(array, np.ndarray) or array.dtype != np.float32 or array.ndim != 2:
            got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array)
            raise TypeError(f"{role} embeddings must be a float32 (rows, dim) array, got {got}")
        if array.shape[1] < 1:
            raise ValueError(f"{role} embeddings must have dim >= 1, got shape {array.shape}")
        if values and not _all_finite(array):
            raise non_finite_error(role)
    if private.shape[1] != synthetic.shape[1]:
        raise ValueError(
            f"private dim {private.shape[1]} differs from synthetic dim {synthetic.shape[1]}"
        )
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def vote_histogram(
    backend: NearestNeighbourBackend,
    private: NDArray[np.float32],
    synthetic: NDArray[np.float32],
    k: int,
) -> NDArray[np.int64]:
    """Counts the votes of every private record for its k nearest synthetic samples.

    Each record adds 1 to each of min(k, m) distinct bins, so adding or removing one record
    changes the histogram by at most sqrt(min(k, m)) in L2 norm (1 per bin).

    Args:
        backend: the search backend.
        private: (n, d) float32 private embeddings; n may be 0.
        synthetic: (m, d) float32 synthetic embeddings of one label partition, m >= 1.
        k: neighbours per record, >= 1.

    Returns:
        (m,) int64 vote counts summing to n * min(k, m).

    Raises:
        ValueError: m == 0 (an empty partition has no bins to vote for), or bad inputs.
    """
    # The backend checks the values (its search or votes reads them anyway); scanning them here
    # too would cost as much as a GPU's whole vote.
    check_search_inputs(private, synthetic, k, values=False)
    n_synthetic = synthetic.shape[0]
    if n_synthetic == 0:
        raise ValueError(
            "cannot vote: the synthetic partition is empty (0 samples); every label needs at "
            "least one synthetic sample"
        )
    if private.shape[0] == 0:
        # No backend runs, so the values are checked here.
        check_search_inputs(private, synthetic, k)
        return np.zeros(n_synthetic, dtype=np.int64)
    if isinstance(backend, VotingBackend):
        return backend.votes(private, synthetic, k)
    neighbours = backend.search(private, synthetic, k)
    return np.bincount(neighbours[neighbours >= 0], minlength=n_synthetic).astype(np.int64)


def dedupe_rows(
    synthetic: NDArray[np.float32],
) -> tuple[NDArray[np.float32], NDArray[np.int64], NDArray[np.int64]]:
    """Merges exactly equal rows, keeping first occurrences in their original order.

    PE resamples with replacement, so a population often holds exact copies; k > 1 votes need k
    distinct bins, so callers vote over the unique rows and map bins back with the outputs.
    Rows are equal when their values are equal (0.0 equals -0.0).

    Args:
        synthetic: (m, d) float32 rows, all finite.

    Returns:
        ``(unique_rows, first_index, inverse)``: unique_rows (u, d) equals
        ``synthetic[first_index]``, first_index (u,) int64 is increasing, and inverse (m,) int64
        maps each original row to its unique row, so ``unique_rows[inverse] == synthetic``.
    """
    if synthetic.ndim != 2 or synthetic.shape[1] < 1:
        raise ValueError(f"expected a (rows, dim >= 1) array, got shape {synthetic.shape}")
    if not _all_finite(synthetic):
        raise ValueError("rows contain NaN or infinite values")
    # Adding +0.0 turns -0.0 into +0.0, so byte equality below matches value equality.
    canonical = np.ascontiguousarray(synthetic + synthetic.dtype.type(0))
    as_bytes = canonical.view(np.dtype((np.void, canonical.dtype.itemsize * canonical.shape[1])))
    _, first, inverse = np.unique(as_bytes.ravel(), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    first_index = first[order].astype(np.int64)
    return synthetic[first_index], first_index, rank[inverse.ravel()].astype(np.int64)
