"""Backends under test: every registered fast path, at default and at tiny block sizes."""

from __future__ import annotations

import pytest

from pe_kernels import BUILT_IN_BACKENDS
from pe_kernels.base import NearestNeighbourBackend

BY_NAME = {backend.name: backend for backend in BUILT_IN_BACKENDS}

FAST_BACKENDS = ("numpy-blocked", "numpy-blocked-bf16", "torch-blocked", "faiss")

# 1 byte forces one private row per block and one pair per exact-distance chunk; 4096 bytes
# gives a few rows per block; None keeps the ~128 MB default (one block for test sizes).
BLOCK_BYTES = (None, 1, 4096)


def make_backend(name: str, max_block_bytes: int | None = None) -> NearestNeighbourBackend:
    """Builds a built-in backend by name, skipping the test when faiss is needed but missing."""
    if name == "faiss":
        pytest.importorskip("faiss")
    config = {} if max_block_bytes is None else {"max_block_bytes": max_block_bytes}
    return BY_NAME[name](**config)
