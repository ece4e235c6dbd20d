"""Errors that the CLI and the service turn into clear user-facing messages."""

from __future__ import annotations

from types import ModuleType

from pe_kernels.errors import import_optional as _import_optional


class PrivevoError(Exception):
    """Base class: the message says what is wrong and how to fix it."""


class DataError(PrivevoError):
    """A dataset file is missing, corrupt or has the wrong schema. The message names the file."""


class MissingDependencyError(PrivevoError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def import_optional(module: str, extra: str) -> ModuleType:
    """Imports an optional dependency or raises one uniform message naming the extra."""
    return _import_optional(module, extra, error=MissingDependencyError)
