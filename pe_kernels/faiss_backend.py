"""Exact k-NN on FAISS ``IndexFlatL2``: an fp32 shortlist, then the shared certified re-rank.

FAISS returns each row's k' = min(m, k + 4) smallest fp32 distances. With v_i the k-th of them
and ``threshold_i`` the certified bound of ``pe_kernels.certify`` (v_i + 2 tol_i rounded up):

- if k' == m, or the shortlist's last distance exceeds ``threshold_i``, every synthetic index
  within the threshold is in the shortlist (FAISS returns the k' smallest fp32 distances, so an
  index left out has a distance at least the last one), and the re-rank of those candidates is
  exact;
- otherwise the shortlist may be cut short, and the row falls back to the blocked numpy path.

FAISS is an optional extra (``pip install 'privevo[faiss]'``), imported when a backend is built.
Its PyPI wheels (1.12 to 1.15 at least) bundle OpenBLAS 0.3.15, which does not recognise CPUs
newer than 2021 (Sapphire and Emerald Rapids) and runs generic SSE3 kernels there, about 5x
slower; set ``OPENBLAS_CORETYPE=SkylakeX`` (AVX-512) or ``Haswell`` (AVX2) before the process
starts on such machines. ``benchmarks/nn_histogram.py`` does so for its FAISS runs.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from pe_kernels.base import check_search_inputs
from pe_kernels.blocked import NumpyBlockedBackend
from pe_kernels.certify import (
    RERANK_BYTES_PER_CANDIDATE,
    certify_candidates,
    distance_error_bound,
    rerank,
    sq_norms64,
)
from pe_kernels.errors import import_optional
from pe_kernels.reference import DEFAULT_MAX_BLOCK_BYTES

SHORTLIST_EXTRA = 4
"""Extra shortlist entries beyond k, so rows with near-ties rarely need the fallback."""


class FaissBackend:
    """Exact k-NN: FAISS ``IndexFlatL2`` shortlist plus a certified float64 re-rank.

    Args:
        max_block_bytes: working-memory bound of one block of private rows (~128 MB default),
            also passed to the blocked fallback.

    Raises:
        MissingDependencyError: faiss is not installed.
    """

    name: ClassVar[str] = "faiss"
    requires: ClassVar[str | None] = "faiss"
    on_device: ClassVar[bool] = False

    def __init__(self, max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES) -> None:
        self._faiss = import_optional("faiss", "faiss")
        self.max_block_bytes = max_block_bytes
        self._fallback = NumpyBlockedBackend(max_block_bytes)

    def search(
        self, private: NDArray[np.float32], synthetic: NDArray[np.float32], k: int
    ) -> NDArray[np.int64]:
        check_search_inputs(private, synthetic, k)
        n, dim = private.shape
        n_synthetic = synthetic.shape[0]
        out = np.full((n, k), -1, dtype=np.int64)
        if n == 0 or n_synthetic == 0:
            return out
        kept = min(k, n_synthetic)
        shortlist = min(n_synthetic, k + SHORTLIST_EXTRA)
        index = self._faiss.IndexFlatL2(dim)
        index.add(np.ascontiguousarray(synthetic))
        max_synthetic_sq_norm = float(sq_norms64(synthetic).max())
        # Per private row: FAISS outputs and candidate pairs (shortlist-sized) and a float32 copy
        # of it; FAISS tiles its own distance blocks.
        row_bytes = shortlist * (4 + 8 + RERANK_BYTES_PER_CANDIDATE) + dim * 4
        # A quarter of the budget goes to the exact re-rank's chunks, as in the blocked paths.
        rerank_bytes = self.max_block_bytes // 4
        block_rows = max(1, min(n, (self.max_block_bytes - rerank_bytes) // row_bytes))
        for start in range(0, n, block_rows):
            block = np.ascontiguousarray(private[start : start + block_rows])
            dist, idx = index.search(block, shortlist)
            tol = distance_error_bound(sq_norms64(block), max_synthetic_sq_norm, dim)
            rows, cols, values, threshold = certify_candidates(
                np.repeat(np.arange(len(block), dtype=np.int64), shortlist),
                idx.ravel().astype(np.int64),
                dist.ravel(),
                len(block),
                kept,
                tol,
            )
            out_block = out[start : start + len(block)]
            out_block[:] = rerank(block, synthetic, (rows, cols, values), tol, k, rerank_bytes)
            # Where the last shortlisted distance is within the threshold, indices beyond the
            # shortlist may be too; those rows' re-ranked answers are replaced by the fallback.
            cut_short = dist[:, -1] <= threshold
            if shortlist < n_synthetic and cut_short.any():
                out_block[cut_short] = self._fallback.search(block[cut_short], synthetic, k)
        return out
