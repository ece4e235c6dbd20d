"""Exact nearest-neighbour vote backends: reference, blocked CPU paths, FAISS, Triton, dispatch.

The backends (``BUILT_IN_BACKENDS``): ``reference`` (slow float64 brute force),
``numpy-blocked``, ``numpy-blocked-bf16`` (its bfloat16 GEMM comes from torch's CPU library,
loaded only when the backend is built), ``torch-blocked``, ``faiss`` and ``triton`` (a fused GPU
kernel; torch, faiss and triton are imported only when a backend that needs them is built). All
of them return what ``pe_kernels.reference.reference_search`` returns, bit for bit: fast paths
shortlist with fp32 (or rounded) GEMMs and re-rank a certified candidate set exactly
(``pe_kernels.certify``).

This package imports nothing of privevo's: ``pe_core.nn`` registers these classes by name and
resolves ``nn_backend`` for a job.

Only clean integer counts come out of here. Their noise is added on the host by the exact
discrete-Gaussian sampler, never by a GPU kernel (``pe_kernels.triton_backend`` says why).
"""

from pe_kernels.base import (
    NearestNeighbourBackend,
    VotingBackend,
    dedupe_rows,
    vote_histogram,
)
from pe_kernels.bfloat16 import Bfloat16BlockedBackend
from pe_kernels.blocked import NumpyBlockedBackend, TorchBlockedBackend
from pe_kernels.dispatch import (
    AUTO,
    BUILT_IN_BACKENDS,
    available_backends,
    choose_backend,
    default_device,
)
from pe_kernels.errors import BackendUnavailableError, KernelError, MissingDependencyError
from pe_kernels.faiss_backend import FaissBackend
from pe_kernels.reference import ReferenceBackend, exact_sq_dist, reference_search
from pe_kernels.triton_backend import TritonBackend

__all__ = [
    "AUTO",
    "BUILT_IN_BACKENDS",
    "BackendUnavailableError",
    "Bfloat16BlockedBackend",
    "FaissBackend",
    "KernelError",
    "MissingDependencyError",
    "NearestNeighbourBackend",
    "NumpyBlockedBackend",
    "ReferenceBackend",
    "TorchBlockedBackend",
    "TritonBackend",
    "VotingBackend",
    "available_backends",
    "choose_backend",
    "dedupe_rows",
    "default_device",
    "exact_sq_dist",
    "reference_search",
    "vote_histogram",
]
