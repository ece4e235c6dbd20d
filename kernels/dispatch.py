"""Chooses a nearest-neighbour backend by problem size and device, once per job.

The choice is recorded in job metadata by the caller, so ``resolve_backend`` returns the name
(and device) with the backend. All registered backends give identical results (each equals
``reference_search`` bit for bit), so the choice only affects speed and memory: the path measured
fastest on each kind of device (``DEVICE_BACKEND``, ``DEVICE_FALLBACK``, ``CPU_BACKEND``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

from kernels.base import BACKEND_REGISTRY, NearestNeighbourBackend, create_backend
from pe_core.errors import PrivevoError

AUTO = "auto"

CPU_BACKEND = "numpy-blocked"
"""The CPU pick at every size: one worker per core, each GEMM + selection + exact re-rank.

Exact votes on 2 cores as a ratio to plain (inexact) FAISS ``IndexFlatL2`` in the same run
(benchmarks/nn_histogram.py, median of 3 interleaved rounds on a shared machine, so +-5%). On
one machine: at (n 1e5, m 1e4) d 64 0.96, d 128 0.95, d 256 1.02, d 512 0.94-1.00, against 1.40,
1.21, 1.26 and 1.06-1.16 for the exact faiss backend; at (n 1e4, m 1e4, d 2048) 1.02-1.06 against
1.16-1.20. On an Emerald Rapids machine, with FAISS's bundled OpenBLAS told its core type: d 512
0.82-1.15 (exact faiss 1.03-1.24), d 2048 1.17-1.26 (torch-blocked 1.17-1.27, exact faiss
1.49-1.63), two runs; after equal block shares per worker and 64 MiB worker blocks (2026-11-30):
d 512 0.80-0.98 in four runs, d 2048 0.95-1.08 in eight (most at 1.03-1.05). It holds more
working memory (about 100-200 MiB against 25-100 MiB), inside ``max_block_bytes``.
"""

DEVICE_BACKEND = "triton"
"""The pick on CUDA where triton is installed: the fused kernel at its default precision,
bfloat16x3 (three bf16 tensor-core products per coordinate; the rows it cannot settle are
re-ranked exactly on the host or take a cuBLAS fp32 pass).

Measured on an H200 (benchmarks/results/h200-2026-11-30.md), end to end (host arrays in, counts
out), as a ratio to a plain fp32 torch GEMM + argmin, which is not exact: (n, m, d) = (1e4, 1e4,
512) 2.05, (1e5, 1e4, 512) 1.54, (1e6, 1e4, 512) 1.20, (1e4, 1e4, 2048) 2.33; ``torch-blocked``
took 4.7-7.9 and the kernel at fp32 1.8-2.9. The rest is the pageable host-to-device copy that
the peer pays too, and the host re-rank of the 2% of random unit rows that do not settle.
"""

DEVICE_FALLBACK = "torch-blocked"
"""The pick on other torch devices, and on CUDA without triton: cuBLAS fp32 GEMM blocks and the
certified re-rank of every row on the host, 4.7-7.9x the time of the plain GEMM + argmin on the
H200 (float64 norms, a finite scan and a sort of every row's candidates, all on the host)."""

DEVICE_BACKENDS = frozenset({"torch-blocked", "triton"})
"""Backends that run their distance pass on a non-CPU torch device."""

_OPTIONAL_MODULES = {"faiss": "faiss", "triton": "triton"}


class BackendUnavailableError(PrivevoError, ValueError):
    """A named backend cannot run on the requested device (e.g. triton without CUDA)."""


@dataclass(frozen=True)
class ResolvedBackend:
    """A backend and the registry name it was created under (for job metadata)."""

    name: str
    backend: NearestNeighbourBackend
    device: str = "cpu"


def default_device() -> str:
    """ "cuda" where torch sees a CUDA device, else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def available_backends() -> frozenset[str]:
    """Registered backend names whose optional dependencies are installed."""
    return frozenset(
        name
        for name in BACKEND_REGISTRY.names()
        if name not in _OPTIONAL_MODULES
        or importlib.util.find_spec(_OPTIONAL_MODULES[name]) is not None
    )


def choose_backend(
    n_private: int,
    n_synthetic: int,
    dim: int,
    *,
    device: str = "cpu",
    available: Iterable[str] | None = None,
) -> str:
    """Picks the fastest available backend for a problem size and device.

    Args:
        n_private: private records n.
        n_synthetic: synthetic samples m.
        dim: embedding dimension d.
        device: "cpu", or a torch device ("cuda", "cuda:1", ...) for the GEMM.
        available: backend names to choose from; default ``available_backends()``.

    Returns:
        A registered backend name: ``DEVICE_BACKEND`` on CUDA where available, else
        ``DEVICE_FALLBACK`` on torch devices; ``CPU_BACKEND`` on CPU.

    Raises:
        ValueError: no available backend suits the device.
    """
    if min(n_private, n_synthetic, dim) < 0:
        raise ValueError(f"sizes must be >= 0, got n={n_private} m={n_synthetic} d={dim}")
    names = available_backends() if available is None else frozenset(available)
    if device != "cpu":
        if device.startswith("cuda") and DEVICE_BACKEND in names:
            return DEVICE_BACKEND
        if DEVICE_FALLBACK not in names:
            raise ValueError(f"no available nearest-neighbour backend runs on {device!r}")
        return DEVICE_FALLBACK
    if CPU_BACKEND not in names:
        raise ValueError(
            f"no CPU nearest-neighbour backend available among {sorted(names)}; "
            f"{CPU_BACKEND} should always be registered (import kernels)"
        )
    return CPU_BACKEND


def resolve_backend(
    name: str, n_private: int, n_synthetic: int, dim: int, *, device: str | None = None
) -> ResolvedBackend:
    """Creates the named backend, choosing one by size and device for ``"auto"``.

    Args:
        name: a registered backend name, or "auto".
        n_private: private records n (used by "auto").
        n_synthetic: synthetic samples m (used by "auto").
        dim: embedding dimension d (used by "auto").
        device: "cpu" or a torch device; only device backends accept another device. None:
            ``default_device()`` for "auto" and device backends, "cpu" for the others.

    Returns:
        The backend, the name it was created under and its device.

    Raises:
        UnknownNameError: the name is neither registered nor "auto"; lists valid names.
        BackendUnavailableError: the backend cannot run on ``device``; says what to use.
    """
    if device is None:
        device = default_device() if name == AUTO or name in DEVICE_BACKENDS else "cpu"
    chosen = choose_backend(n_private, n_synthetic, dim, device=device) if name == AUTO else name
    if chosen not in DEVICE_BACKENDS and device != "cpu":
        raise BackendUnavailableError(
            f"backend {chosen!r} runs on CPU only; use one of {sorted(DEVICE_BACKENDS)} or "
            f"'auto' for device {device!r}"
        )
    config = {"device": device} if chosen in DEVICE_BACKENDS else {}
    try:
        backend = create_backend(chosen, **config)
    except PrivevoError:
        raise
    except ValueError as exc:  # the backend's own refusal, e.g. triton without CUDA
        raise BackendUnavailableError(f"nn_backend {chosen!r}: {exc}") from None
    return ResolvedBackend(chosen, backend, device)
