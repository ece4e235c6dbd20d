"""The nearest-neighbour backend registry, and the one place a job's ``nn_backend`` is resolved.

``pe_kernels`` ships the backends and knows nothing of privevo; this module registers them under
their names, builds the one a job names (or the one ``auto`` picks by size and device) and turns
the kernels' refusals into ``PrivevoError``s, so the CLI and the service report them in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pe_kernels
from pe_core.errors import MissingDependencyError, PrivevoError
from pe_core.registry import Registry
from pe_kernels import NearestNeighbourBackend, dispatch

AUTO = pe_kernels.AUTO

BACKEND_REGISTRY: Registry[NearestNeighbourBackend] = Registry("nearest-neighbour backend")
for _backend in pe_kernels.BUILT_IN_BACKENDS:
    BACKEND_REGISTRY.register(_backend.name, _backend)


def register_backend(name: str, factory: Callable[..., NearestNeighbourBackend]) -> None:
    BACKEND_REGISTRY.register(name, factory)


def create_backend(name: str, **config: Any) -> NearestNeighbourBackend:
    return BACKEND_REGISTRY.create(name, **config)


def backend_names() -> list[str]:
    """Every name ``nn_backend`` accepts: the registered backends and ``auto``."""
    return [AUTO, *BACKEND_REGISTRY.names()]


class BackendUnavailableError(PrivevoError, ValueError):
    """A named backend cannot run here (e.g. triton without CUDA); the message says what to use."""


@dataclass(frozen=True)
class ResolvedBackend:
    """A backend and the registry name it was created under (for job metadata)."""

    name: str
    backend: NearestNeighbourBackend
    device: str = "cpu"


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
            ``pe_kernels.default_device()`` for "auto" and device backends, "cpu" for the others.

    Returns:
        The backend, the name it was created under and its device.

    Raises:
        UnknownNameError: the name is neither registered nor "auto"; lists valid names.
        BackendUnavailableError: the backend cannot run on ``device``; says what to use.
        MissingDependencyError: the backend's optional dependency is not installed.
    """
    if device is None:
        device = dispatch.default_device() if name == AUTO or _on_device(name) else "cpu"
    try:
        chosen = (
            dispatch.choose_backend(n_private, n_synthetic, dim, device=device)
            if name == AUTO
            else name
        )
        if not _on_device(chosen) and device != "cpu":
            raise BackendUnavailableError(
                f"backend {chosen!r} runs on CPU only; use one of "
                f"{[n for n in BACKEND_REGISTRY.names() if _on_device(n)]} or 'auto' for device "
                f"{device!r}"
            )
        backend = create_backend(chosen, **({"device": device} if _on_device(chosen) else {}))
    except pe_kernels.MissingDependencyError as exc:
        raise MissingDependencyError(str(exc)) from exc
    except pe_kernels.KernelError as exc:
        raise BackendUnavailableError(f"nn_backend {name!r}: {exc}") from exc
    return ResolvedBackend(chosen, backend, device)


def _on_device(name: str) -> bool:
    """Whether the named backend runs on a torch device (and so takes ``device``)."""
    return bool(getattr(BACKEND_REGISTRY.factory(name), "on_device", False))
