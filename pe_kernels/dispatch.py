"""The backends this package ships, and the choice among them by problem size and device.

All of them give identical results (each equals ``reference_search`` bit for bit), so the choice
only affects speed and memory: the path measured fastest on each kind of device
(``DEVICE_BACKEND``, ``DEVICE_FALLBACK``, ``CPU_BACKEND``). The caller (``pe_core.nn``) makes it
once per job and records it in job metadata.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from pe_kernels.base import NearestNeighbourBackend
from pe_kernels.bfloat16 import Bfloat16BlockedBackend, MklBfloat16Gemm
from pe_kernels.blocked import NumpyBlockedBackend, TorchBlockedBackend
from pe_kernels.errors import BackendUnavailableError
from pe_kernels.faiss_backend import FaissBackend
from pe_kernels.reference import ReferenceBackend
from pe_kernels.triton_backend import TritonBackend

BUILT_IN_BACKENDS: tuple[type[NearestNeighbourBackend], ...] = (
    ReferenceBackend,
    NumpyBlockedBackend,
    Bfloat16BlockedBackend,
    TorchBlockedBackend,
    FaissBackend,
    TritonBackend,
)
"""Every backend class shipped here; each carries its ``name``, ``requires`` and ``on_device``.
Importing a class loads neither torch nor its optional module: they load when it is built."""

AUTO = "auto"

CPU_BACKEND = "numpy-blocked"
"""The CPU pick where ``CPU_BF16_BACKEND`` is not (no bfloat16 instructions, small votes): one
worker per core, each fp32 GEMM + selection + exact re-rank.

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

CPU_BF16_BACKEND = "numpy-blocked-bf16"
"""The CPU pick for large votes on CPUs with bfloat16 matrix instructions (``bf16_gemm_cpu``):
``numpy-blocked``'s workers and exact re-rank, with a bfloat16 GEMM shortlist (MKL from torch's
CPU library, ``pe_kernels.bfloat16``). On this project's 2-core machine (AMX-BF16), as a ratio
to plain FAISS ``IndexFlatL2`` (benchmarks/results/cpu-2core-2026-12-06.md, medians of 5
interleaved rounds): 0.42 at (1e5, 1e4, 512), every round 0.36-0.43, against 0.98 for
``numpy-blocked``; 0.45 at (1e4, 1e4, 2048), rounds 0.43-0.50, against 1.14; 0.52 with k 3 at
(3e4, 1e4, 512). Its working memory is smaller (256-row blocks), plus about 100 MB for the
library, loaded once.
"""

BF16_MIN_WORK = 2**33
"""n m d below which ``auto`` keeps ``CPU_BACKEND`` on bfloat16 CPUs too: loading torch's CPU
library takes about 0.14 s and 100 MB once, and a vote at this size (about 8.6e9, e.g. n 1e4,
m 2e3, d 430) takes about 0.15 s with ``numpy-blocked``, a third less with the bfloat16 GEMM
(here: 0.164 against 0.112 s at (1e4, 2e3, 512), 0.057 against 0.039 s at (2e3, 2e3, 784)), so
a run of a few iterations repays the load from about there."""

BF16_CPU_FLAGS = ("amx_bf16",)
"""/proc/cpuinfo flags under which MKL's bfloat16 GEMM is fast: AMX-BF16, where the numbers
above were measured. AVX512-BF16 alone is not enough: on an AMD EPYC (Zen 4: ``avx512_bf16``,
no AMX) numpy-blocked-bf16 took 1.57x plain FAISS's time at (3e4, 1e4, 512) against 0.93x for
numpy-blocked (2026-12-07, 3 rounds), and 3.8x numpy-blocked's at n 1e5, m 2e3, d 784 in
``benchmarks/fanout.py``. Without AMX, MKL's bfloat16 path gains nothing here."""

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


GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")
"""Device files through which torch reaches a GPU on Linux: NVIDIA's driver, WSL's GPU
paravirtualisation, AMD's ROCm (whose torch builds answer ``torch.cuda`` too)."""


def default_device() -> str:
    """ "cuda" where torch sees a CUDA device, else "cpu".

    On Linux torch is only asked where a GPU driver's device file exists: without one, no CUDA
    or ROCm runtime can find a device, and importing torch just to hear that costs ~2 s and
    ~200 MB, most of a small CPU run.
    """
    if sys.platform == "linux" and not any(os.path.exists(path) for path in GPU_DRIVER_FILES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_gemm_cpu(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has bfloat16 matrix instructions (``BF16_CPU_FLAGS``).

    Args:
        cpuinfo: the text of /proc/cpuinfo; read here when None (False where it cannot be).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {
        flag
        for line in cpuinfo.splitlines()
        if line.startswith("flags")
        for flag in line.partition(":")[2].split()
    }
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def _bf16_backend_usable() -> bool:
    """Whether ``numpy-blocked-bf16`` can be built here (its GEMM loads and passes its probes)."""
    try:
        MklBfloat16Gemm()
    except BackendUnavailableError:
        return False
    return True


def available_backends() -> frozenset[str]:
    """Names of the built-in backends whose optional dependencies are installed."""
    return frozenset(
        backend.name
        for backend in BUILT_IN_BACKENDS
        if backend.requires is None or importlib.util.find_spec(backend.requires) is not None
    )


def choose_backend(
    n_private: int,
    n_synthetic: int,
    dim: int,
    *,
    device: str = "cpu",
    available: Iterable[str] | None = None,
    bf16_gemm: bool | None = None,
) -> str:
    """Picks the fastest available backend for a problem size and device.

    Args:
        n_private: private records n.
        n_synthetic: synthetic samples m.
        dim: embedding dimension d.
        device: "cpu", or a torch device ("cuda", "cuda:1", ...) for the GEMM.
        available: backend names to choose from; default ``available_backends()``.
        bf16_gemm: whether a fast bfloat16 GEMM can run here; default: the CPU has
            ``BF16_CPU_FLAGS`` and ``CPU_BF16_BACKEND`` builds (asked only for large votes).

    Returns:
        A backend name: ``DEVICE_BACKEND`` on CUDA where available, else
        ``DEVICE_FALLBACK`` on torch devices; on CPU ``CPU_BF16_BACKEND`` for votes of
        n m d >= ``BF16_MIN_WORK`` with a fast bfloat16 GEMM, else ``CPU_BACKEND``.

    Raises:
        BackendUnavailableError: no available backend suits the device.
    """
    if min(n_private, n_synthetic, dim) < 0:
        raise ValueError(f"sizes must be >= 0, got n={n_private} m={n_synthetic} d={dim}")
    names = available_backends() if available is None else frozenset(available)
    if device != "cpu":
        if device.startswith("cuda") and DEVICE_BACKEND in names:
            return DEVICE_BACKEND
        if DEVICE_FALLBACK not in names:
            raise BackendUnavailableError(
                f"no available nearest-neighbour backend runs on {device!r}"
            )
        return DEVICE_FALLBACK
    if CPU_BACKEND not in names:
        raise BackendUnavailableError(
            f"no CPU nearest-neighbour backend available among {sorted(names)}; "
            f"{CPU_BACKEND} is always built in"
        )
    if CPU_BF16_BACKEND in names and n_private * n_synthetic * dim >= BF16_MIN_WORK:
        if bf16_gemm is None:
            bf16_gemm = bf16_gemm_cpu() and _bf16_backend_usable()
        if bf16_gemm:
            return CPU_BF16_BACKEND
    return CPU_BACKEND
