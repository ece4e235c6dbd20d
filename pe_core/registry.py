"""One small registry type shared by every extension point (APIs, embedders, NN backends, ...)."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Collection, Iterable, Mapping
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

    def register(self, name: str, factory: Callable[..., T], *, replace: bool = False) -> None:
        """Registers ``factory`` under ``name``; a second registration needs ``replace``."""
        if name in self._factories and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._factories[name] = factory

    def names(self) -> list[str]:
        return sorted(self._factories)

    def factory(self, name: str) -> Callable[..., T]:
        try:
            return self._factories[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self.names())}; "
                f"valid names: {valid}"
            ) from None

    def check_config(
        self, name: str, config: Mapping[str, Any], *, given: Collection[str] = ()
    ) -> None:
        """Refuses keys the named factory does not take, without building anything.

        Args:
            name: a registered name.
            config: the user's parameters.
            given: parameters the caller passes itself (e.g. ``label_names``), which the user
                may not set.

        Raises:
            UnknownNameError: the name is not registered.
            PluginConfigError: an unknown or caller-given key; names the nearest valid one.
        """
        parameters = inspect.signature(self.factory(name)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        accepted = [key for key in parameters if key not in given]
        for key in config:
            if key not in accepted:
                raise PluginConfigError(
                    f"{self.kind} {name!r} takes no parameter {key!r}"
                    f"{did_you_mean(key, accepted)}; it accepts: {', '.join(accepted) or 'none'}"
                )

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


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest choice, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
