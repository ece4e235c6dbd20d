"""The ``backend`` fixture: every fast backend at every block size of ``support``."""

from __future__ import annotations

import pytest

from pe_kernels.base import NearestNeighbourBackend
from tests.pe_kernels.support import BLOCK_BYTES, FAST_BACKENDS, make_backend


@pytest.fixture(
    params=[(name, size) for name in FAST_BACKENDS for size in BLOCK_BYTES],
    ids=lambda p: f"{p[0]}-{p[1] or 'default'}",
)
def backend(request: pytest.FixtureRequest) -> NearestNeighbourBackend:
    name, size = request.param
    return make_backend(name, size)
