"""Exact nearest-neighbour vote backends: reference, blocked CPU paths, FAISS, Triton, dispatcher.

Importing this package registers every backend: ``reference`` (slow float64 brute force),
``numpy-blocked``, ``torch-blocked``, ``faiss`` and ``triton`` (a fused GPU kernel; faiss and
triton are imported only when their backend is created). All of them return what
``kernels.reference.reference_search`` returns, bit for bit: fast paths shortlist with fp32 (or
rounded) GEMMs and re-rank a certified candidate set exactly (``kernels.certify``).

Only clean integer counts come out of here. Their noise is added on the host by the exact
discrete-Gaussian sampler, never by a GPU kernel (``kernels.triton_backend`` says why).
"""

from kernels.base import (
    BACKEND_REGISTRY,
    NearestNeighbourBackend,
    VotingBackend,
    create_backend,
    dedupe_rows,
    register_backend,
    vote_histogram,
)
from kernels.blocked import NumpyBlockedBackend, TorchBlockedBackend
from kernels.dispatch import (
    BackendUnavailableError,
    ResolvedBackend,
    choose_backend,
    default_device,
    resolve_backend,
)
from kernels.faiss_backend import FaissBackend
from kernels.reference import ReferenceBackend, exact_sq_dist, reference_search
from kernels.triton_backend import TritonBackend

register_backend(ReferenceBackend.name, ReferenceBackend)
register_backend(NumpyBlockedBackend.name, NumpyBlockedBackend)
register_backend(TorchBlockedBackend.name, TorchBlockedBackend)
register_backend(FaissBackend.name, FaissBackend)
register_backend(TritonBackend.name, TritonBackend)

__all__ = [
    "BACKEND_REGISTRY",
    "BackendUnavailableError",
    "FaissBackend",
    "NearestNeighbourBackend",
    "NumpyBlockedBackend",
    "ReferenceBackend",
    "ResolvedBackend",
    "TorchBlockedBackend",
    "TritonBackend",
    "VotingBackend",
    "choose_backend",
    "create_backend",
    "dedupe_rows",
    "default_device",
    "exact_sq_dist",
    "reference_search",
    "register_backend",
    "resolve_backend",
    "vote_histogram",
]
