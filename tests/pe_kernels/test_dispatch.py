from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pe_kernels import dispatch
from pe_kernels.dispatch import (
    CPU_BACKEND,
    DEVICE_BACKEND,
    DEVICE_FALLBACK,
    available_backends,
    choose_backend,
)
from pe_kernels.errors import BackendUnavailableError

ALL = ("reference", "numpy-blocked", "torch-blocked", "faiss", "triton")
BUILT_IN = ("reference", "numpy-blocked", "torch-blocked")


@pytest.mark.parametrize("dim", [1, 64, 512, 2048, 8192])
def test_cpu_picks_numpy_blocked_at_every_size(dim: int) -> None:
    assert choose_backend(100_000, 10_000, dim, available=ALL) == CPU_BACKEND == "numpy-blocked"
    assert choose_backend(10, 3, dim, available=BUILT_IN) == "numpy-blocked"


def test_cuda_picks_triton_where_installed_and_torch_blocked_elsewhere() -> None:
    # Measured fastest end to end on an H200 (pe_kernels.dispatch.DEVICE_BACKEND).
    assert choose_backend(100_000, 10_000, 512, device="cuda", available=ALL) == DEVICE_BACKEND
    assert (DEVICE_BACKEND, DEVICE_FALLBACK) == ("triton", "torch-blocked")
    assert choose_backend(10, 10, 4, device="cuda:1", available=ALL) == "triton"
    assert choose_backend(10, 10, 4, device="cuda:1", available=BUILT_IN) == "torch-blocked"
    # Triton kernels here target CUDA only.
    assert choose_backend(10, 10, 4, device="mps", available=ALL) == "torch-blocked"
    with pytest.raises(BackendUnavailableError, match="cuda"):
        choose_backend(10, 10, 4, device="cuda", available=("numpy-blocked", "faiss"))


def test_cpu_never_picks_triton_or_faiss() -> None:
    assert choose_backend(100_000, 10_000, 512, available=("numpy-blocked", "triton")) == (
        "numpy-blocked"
    )


def test_no_cpu_backend_is_an_error() -> None:
    with pytest.raises(BackendUnavailableError, match="numpy-blocked"):
        choose_backend(10, 10, 4, available=("torch-blocked",))


def test_negative_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        choose_backend(-1, 10, 4, available=ALL)


def test_available_backends_follow_the_optional_import(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {"reference", "numpy-blocked", "torch-blocked"} <= available_backends()
    monkeypatch.setattr(dispatch.importlib.util, "find_spec", lambda name: None)
    assert not {"faiss", "triton"} & available_backends()
    assert choose_backend(1000, 1000, 64) == "numpy-blocked"
    assert choose_backend(1000, 1000, 64, device="cuda") == "torch-blocked"


def test_default_device_follows_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch

    monkeypatch.setattr(dispatch, "GPU_DRIVER_FILES", (str(tmp_path),))  # a driver is present
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dispatch.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dispatch.default_device() == "cpu"


@pytest.mark.skipif(sys.platform != "linux", reason="the driver files are Linux's")
def test_no_gpu_driver_means_cpu_without_importing_torch(tmp_path: Path) -> None:
    # A fresh interpreter: this one may have imported torch already.
    code = (
        "import sys; from pe_kernels import dispatch; "
        f"dispatch.GPU_DRIVER_FILES = ({str(tmp_path / 'no-such-driver')!r},); "
        "print(dispatch.default_device(), 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["cpu", "False"]
