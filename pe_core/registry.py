"""One small registry type shared by every extension point (APIs, embedders, NN backends, ...)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pe_core.errors import PrivevoError

T = TypeVar("T")


class UnknownNameError(PrivevoError, ValueError):
    """Raised for a name that no plug-in registered; the message lists the valid names."""


class PluginConfigError(PrivevoError, TypeError):
    """Raised for parameters a plug-in does not take; the message lists those it does."""


class Registry(Generic[T]):
    """Maps a public name to a factory for one kind of plug-in.

    Args:
        kind: what the registry holds, used in error messages ("variation API").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str, factory: Callable[..., T]) -> None:
        if name in self._factories:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def factory(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid names: {valid}") from None

    def create(self, name: str, **config: Any) -> T:
        factory = self.factory(name)
        signature = inspect.signature(factory)
        try:
            signature.bind(**config)
        except TypeError as exc:
            accepted = ", ".join(signature.parameters) or "none"
            raise PluginConfigError(
                f"{self.kind} {name!r}: {exc}; it accepts: {accepted}"
            ) from None
        return factory(**config)
