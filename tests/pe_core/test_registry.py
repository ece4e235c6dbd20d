import pytest

from pe_core.errors import PrivevoError
from pe_core.registry import PluginConfigError, Registry, UnknownNameError


class Thing:
    def __init__(self, size: int = 1, *, colour: str = "red") -> None:
        self.size, self.colour = size, colour


def test_create_passes_config():
    registry: Registry[Thing] = Registry("thing")
    registry.register("plain", Thing)
    thing = registry.create("plain", size=3, colour="blue")
    assert (thing.size, thing.colour) == (3, "blue")
    assert registry.names() == ["plain"]


def test_unknown_name_lists_valid_names():
    registry: Registry[Thing] = Registry("thing")
    registry.register("b", Thing)
    registry.register("a", Thing)
    with pytest.raises(UnknownNameError, match="unknown thing 'c'; valid names: a, b"):
        registry.create("c")


def test_bad_config_names_accepted_parameters():
    registry: Registry[Thing] = Registry("thing")
    registry.register("plain", Thing)
    with pytest.raises(PluginConfigError, match="accepts: size, colour") as info:
        registry.create("plain", shape="round")
    assert isinstance(info.value, PrivevoError)


def test_duplicate_registration_is_refused():
    registry: Registry[Thing] = Registry("thing")
    registry.register("plain", Thing)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("plain", Thing)
