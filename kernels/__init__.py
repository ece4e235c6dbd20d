"""Exact nearest-neighbour vote backends: reference, blocked CPU paths, FAISS, dispatcher.

Importing this package registers every backend: ``reference`` (slow float64 brute force),
``numpy-blocked``, ``torch-blocked`` and ``faiss`` (faiss itself is imported only when that
backend is created). All of them return what ``kernels.reference.reference_search`` returns, bit
for bit: fast paths shortlist with fp32 GEMMs and re-rank a certified candidate set exactly
(``kernels.certify``).
"""

from kernels.base import (
    BACKEND_REGISTRY,
    NearestNeighbourBackend,
    create_backend,
    dedupe_rows,
    register_backend,
    vote_histogram,
)
from kernels.blocked import NumpyBlockedBackend, TorchBlockedBackend
from kernels.dispatch import ResolvedBackend, choose_backend, resolve_backend
from kernels.faiss_backend import FaissBackend
from kernels.reference import ReferenceBackend, exact_sq_dist, reference_search

register_backend(ReferenceBackend.name, ReferenceBackend)
register_backend(NumpyBlockedBackend.name, NumpyBlockedBackend)
register_backend(TorchBlockedBackend.name, TorchBlockedBackend)
register_backend(FaissBackend.name, FaissBackend)

__all__ = [
    "BACKEND_REGISTRY",
    "FaissBackend",
    "NearestNeighbourBackend",
    "NumpyBlockedBackend",
    "ReferenceBackend",
    "ResolvedBackend",
    "TorchBlockedBackend",
    "choose_backend",
    "create_backend",
    "dedupe_rows",
    "exact_sq_dist",
    "reference_search",
    "register_backend",
    "resolve_backend",
    "vote_histogram",
]
