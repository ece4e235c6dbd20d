"""One small registry type shared by every extension point (APIs, embedders, NN backends, ...)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised for a name that no plug-in registered; the message lists the valid names."""


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
        return self.factory(name)(**config)
