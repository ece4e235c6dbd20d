"""The embedder registry knows the shipped embedders by their public names."""

from __future__ import annotations

import pytest

from pe_core.embedders import (
    EMBEDDER_REGISTRY,
    Embedder,
    InceptionEmbedder,
    MiniLMEmbedder,
    RawPixelsEmbedder,
    create_embedder,
)
from pe_core.registry import UnknownNameError


def test_shipped_embedders_are_registered() -> None:
    assert {"raw-pixels", "inception", "minilm"} <= set(EMBEDDER_REGISTRY.names())
    assert EMBEDDER_REGISTRY.factory("raw-pixels") is RawPixelsEmbedder
    assert EMBEDDER_REGISTRY.factory("inception") is InceptionEmbedder
    assert EMBEDDER_REGISTRY.factory("minilm") is MiniLMEmbedder


@pytest.mark.parametrize(
    ("name", "config", "modality"),
    [
        ("raw-pixels", {"size": 8, "grayscale": True}, "image"),
        ("inception", {"batch_size": 2}, "image"),
        ("minilm", {"batch_size": 8}, "text"),
    ],
)
def test_create_is_lazy_and_satisfies_the_protocol(
    name: str, config: dict[str, object], modality: str
) -> None:
    embedder = create_embedder(name, **config)
    assert isinstance(embedder, Embedder)
    assert embedder.modality == modality
    assert getattr(embedder, "_model", None) is None


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(UnknownNameError, match="inception, minilm, raw-pixels"):
        create_embedder("clip")
