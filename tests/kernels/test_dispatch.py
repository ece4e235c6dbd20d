from __future__ import annotations

import numpy as np
import pytest

from kernels import dispatch
from kernels.dispatch import (
    CPU_BACKEND,
    DEVICE_BACKEND,
    DEVICE_FALLBACK,
    BackendUnavailableError,
    ResolvedBackend,
    available_backends,
    choose_backend,
    resolve_backend,
)
from pe_core.registry import UnknownNameError

ALL = ("reference", "numpy-blocked", "torch-blocked", "faiss", "triton")
BUILT_IN = ("reference", "numpy-blocked", "torch-blocked")


@pytest.mark.parametrize("dim", [1, 64, 512, 2048, 8192])
def test_cpu_picks_numpy_blocked_at_every_size(dim: int) -> None:
    assert choose_backend(100_000, 10_000, dim, available=ALL) == CPU_BACKEND == "numpy-blocked"
    assert choose_backend(10, 3, dim, available=BUILT_IN) == "numpy-blocked"


def test_cuda_picks_triton_where_installed_and_torch_blocked_elsewhere() -> None:
    # Measured fastest end to end on an H200 (kernels.dispatch.DEVICE_BACKEND).
    assert choose_backend(100_000, 10_000, 512, device="cuda", available=ALL) == DEVICE_BACKEND
    assert (DEVICE_BACKEND, DEVICE_FALLBACK) == ("triton", "torch-blocked")
    assert choose_backend(10, 10, 4, device="cuda:1", available=ALL) == "triton"
    assert choose_backend(10, 10, 4, device="cuda:1", available=BUILT_IN) == "torch-blocked"
    # Triton kernels here target CUDA only.
    assert choose_backend(10, 10, 4, device="mps", available=ALL) == "torch-blocked"
    with pytest.raises(ValueError, match="cuda"):
        choose_backend(10, 10, 4, device="cuda", available=("numpy-blocked", "faiss"))


def test_cpu_never_picks_triton_or_faiss() -> None:
    assert choose_backend(100_000, 10_000, 512, available=("numpy-blocked", "triton")) == (
        "numpy-blocked"
    )


def test_no_cpu_backend_is_an_error() -> None:
    with pytest.raises(ValueError, match="numpy-blocked"):
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


def test_default_device_follows_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dispatch.default_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dispatch.default_device() == "cpu"


def test_resolve_without_a_device_uses_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dispatch, "default_device", lambda: "cuda:3")
    monkeypatch.setattr(dispatch, "available_backends", lambda: frozenset(BUILT_IN))
    resolved = resolve_backend("auto", 10, 10, 8)
    assert (resolved.name, resolved.device) == ("torch-blocked", "cuda:3")
    assert resolved.backend.device == "cuda:3"  # type: ignore[attr-defined]
    # A CPU-only backend asked for by name stays on the CPU.
    assert resolve_backend("numpy-blocked", 10, 10, 8).device == "cpu"


def test_resolve_auto_returns_the_chosen_name_with_the_backend() -> None:
    resolved = resolve_backend("auto", 1000, 100, 4096, device="cpu")
    assert isinstance(resolved, ResolvedBackend)
    assert resolved.name == "numpy-blocked" == resolved.backend.name
    assert resolved.device == "cpu"
    private = np.zeros((2, 4096), np.float32)
    assert resolved.backend.search(private, np.ones((3, 4096), np.float32), 1).shape == (2, 1)


def test_resolve_a_named_backend() -> None:
    resolved = resolve_backend("torch-blocked", 10, 10, 8, device="cpu")
    assert resolved.name == resolved.backend.name == "torch-blocked"


def test_resolve_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="numpy-blocked"):
        resolve_backend("hnsw", 10, 10, 8)


def test_resolve_cpu_only_backend_on_a_device_is_refused() -> None:
    with pytest.raises(BackendUnavailableError, match="CPU only"):
        resolve_backend("numpy-blocked", 10, 10, 8, device="cuda")


def test_resolve_triton_on_the_cpu_is_a_privevo_error() -> None:
    pytest.importorskip("triton")
    from kernels import triton_impl

    if triton_impl.INTERPRETING:
        pytest.skip("the interpreter lets triton run on the CPU")
    # A PrivevoError, so the CLI prints it as a one-line error, not a traceback.
    with pytest.raises(BackendUnavailableError, match="needs a CUDA device"):
        resolve_backend("triton", 10, 10, 8, device="cpu")


def test_resolve_auto_on_cuda_configures_the_device_backend() -> None:
    resolved = resolve_backend("auto", 10, 10, 8, device="cuda:1")
    expected = "triton" if "triton" in available_backends() else "torch-blocked"
    assert (resolved.name, resolved.device) == (expected, "cuda:1")
    assert resolved.backend.device == "cuda:1"  # type: ignore[attr-defined]


def test_resolve_triton_by_name_configures_its_device() -> None:
    pytest.importorskip("triton")
    resolved = resolve_backend("triton", 10, 10, 8, device="cuda:1")
    assert (resolved.name, resolved.device) == ("triton", "cuda:1")
