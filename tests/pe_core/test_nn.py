"""pe_core.nn: the backend registry over pe_kernels, and resolving a job's nn_backend."""

from __future__ import annotations

import numpy as np
import pytest

import pe_kernels
from pe_core.errors import MissingDependencyError, PrivevoError
from pe_core.nn import (
    BACKEND_REGISTRY,
    BackendUnavailableError,
    ResolvedBackend,
    backend_names,
    create_backend,
    resolve_backend,
)
from pe_core.registry import UnknownNameError
from pe_kernels import dispatch
from pe_kernels.dispatch import available_backends

BUILT_IN = ("reference", "numpy-blocked", "torch-blocked")


def test_every_built_in_backend_is_registered_under_its_name() -> None:
    assert BACKEND_REGISTRY.names() == sorted(b.name for b in pe_kernels.BUILT_IN_BACKENDS)
    assert backend_names()[0] == "auto"


def test_unknown_backend_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError, match="numpy-blocked"):
        create_backend("annoy")


def test_a_missing_optional_module_is_a_privevo_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(module: str, extra: str) -> None:
        raise pe_kernels.MissingDependencyError(f"{module} missing: pip install 'privevo[{extra}]'")

    monkeypatch.setattr(pe_kernels.faiss_backend, "import_optional", missing)
    with pytest.raises(MissingDependencyError, match=r"privevo\[faiss\]") as caught:
        resolve_backend("faiss", 10, 10, 8)
    assert isinstance(caught.value, PrivevoError)


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
    from pe_kernels import triton_impl

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
