"""The refusals pe_kernels raises where a caller can act; each message says what to do.

pe_kernels imports nothing of privevo's (a contract test keeps it so), so it has its own error
types; ``pe_core.nn`` turns them into ``PrivevoError`` for the CLI and the service.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class KernelError(Exception):
    """Base class of the refusals below."""


class BackendUnavailableError(KernelError, ValueError):
    """A backend cannot run on the requested device (e.g. triton without CUDA)."""


class MissingDependencyError(KernelError, ImportError):
    """A backend's optional dependency is not installed; the message names the extra."""


def import_optional(
    module: str, extra: str, *, error: type[ImportError] = MissingDependencyError
) -> ModuleType:
    """Imports an optional dependency or raises ``error`` with one message naming the extra
    (``pe_core.errors.import_optional`` passes its own error type)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise error(
            f"{module!r} is needed for this feature but is not installed: "
            f"pip install 'privevo[{extra}]'"
        ) from exc
