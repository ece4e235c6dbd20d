"""Embedders map samples to vectors in which private records vote for their nearest sample."""

from pe_core.embedders.base import (
    EMBEDDER_REGISTRY,
    CachedEmbedder,
    Embedder,
    create_embedder,
    register_embedder,
)
from pe_core.embedders.inception import InceptionEmbedder
from pe_core.embedders.minilm import MiniLMEmbedder
from pe_core.embedders.raw_pixels import RawPixelsEmbedder

register_embedder("raw-pixels", RawPixelsEmbedder)
register_embedder("inception", InceptionEmbedder)
register_embedder("minilm", MiniLMEmbedder)

__all__ = [
    "EMBEDDER_REGISTRY",
    "CachedEmbedder",
    "Embedder",
    "InceptionEmbedder",
    "MiniLMEmbedder",
    "RawPixelsEmbedder",
    "create_embedder",
    "register_embedder",
]
