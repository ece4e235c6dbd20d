from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pe_kernels import dispatch
from pe_kernels.dispatch import (
    BF16_MIN_WORK,
    CPU_BACKEND,
    CPU_BF16_BACKEND,
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


WITH_BF16 = (*ALL, "numpy-blocked-bf16")


def test_cpu_picks_the_bf16_shortlist_for_large_votes_where_the_cpu_has_bf16() -> None:
    large = (100_000, 10_000, 512)
    assert BF16_MIN_WORK <= 10_000 * 10_000 * 2048
    assert choose_backend(*large, available=WITH_BF16, bf16_gemm=True) == CPU_BF16_BACKEND
    assert choose_backend(10_000, 10_000, 2048, available=WITH_BF16, bf16_gemm=True) == (
        "numpy-blocked-bf16"
    )
    # Too small to repay loading torch's CPU library; no bf16 instructions; not available.
    assert choose_backend(1_000, 2_000, 512, available=WITH_BF16, bf16_gemm=True) == CPU_BACKEND
    assert choose_backend(*large, available=WITH_BF16, bf16_gemm=False) == CPU_BACKEND
    assert choose_backend(*large, available=ALL, bf16_gemm=True) == CPU_BACKEND
    # Never on a device.
    assert choose_backend(*large, device="cuda", available=WITH_BF16, bf16_gemm=True) == "triton"


def test_bf16_flags_are_read_from_cpuinfo() -> None:
    line = "flags\t\t: fpu sse avx512f avx512bw {}\n"
    assert dispatch.bf16_gemm_cpu("processor\t: 0\n" + line.format("amx_tile amx_bf16"))
    # AVX512-BF16 without AMX (AMD Zen 4): MKL's bfloat16 GEMM ran slower than fp32 there.
    assert not dispatch.bf16_gemm_cpu(line.format("avx512_bf16"))
    assert not dispatch.bf16_gemm_cpu(line.format("avx512_vnni avx_vnni"))
    assert not dispatch.bf16_gemm_cpu("model name\t: avx512_bf16 in a name, not a flag\n")


def test_auto_checks_that_the_bf16_backend_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "bf16_gemm_cpu", lambda: True)
    usable = dispatch._bf16_backend_usable()
    expected = CPU_BF16_BACKEND if usable else CPU_BACKEND
    assert choose_backend(100_000, 10_000, 512, available=WITH_BF16) == expected

    def missing() -> None:
        raise BackendUnavailableError("no bfloat16 GEMM here")

    monkeypatch.setattr(dispatch, "MklBfloat16Gemm", missing)
    assert choose_backend(100_000, 10_000, 512, available=WITH_BF16) == CPU_BACKEND


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
