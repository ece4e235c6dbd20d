"""SDK fixtures: one real `privevo serve` (tests/servers.py) for the whole package, and keys.

The server is package-scoped, not module-scoped like the plugin's `server` fixture it replaces
here: every start and every key runs the CLI in a fresh process, several seconds each.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from privevo_client import Client

from tests.conftest import digits_28
from tests.servers import REDIS, Server, answers


def write_digits_npz(path: Path, n_per_label: int, *, offset: int = 0) -> Path:
    """Writes 28x28 digits (``n_per_label`` of each of 0-9) as an npz upload.

    The server shares one budget between uploads of the same bytes, so tests that need their
    own budget use their own ``offset``.
    """
    digits = digits_28(n_per_label, offset=offset)
    assert digits.images is not None
    np.savez(path, images=digits.images, labels=digits.labels)
    return path


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not answers(REDIS):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (make test starts one)")
    server = Server(tmp_path_factory.mktemp("sdk-service"))
    server.start()  # it migrates the database before it answers, so keys can be made after
    yield server
    server.stop()


@pytest.fixture(scope="package")
def alice_key(server: Server) -> str:
    return server.cli("keys", "create", "--tenant", "alice")


@pytest.fixture(scope="package")
def bob_key(server: Server) -> str:
    return server.cli("keys", "create", "--tenant", "bob")


@pytest.fixture
def alice(server: Server, alice_key: str) -> Iterator[Client]:
    with Client(server.url, alice_key, max_retries=0) as client:
        yield client


@pytest.fixture
def bob(server: Server, bob_key: str) -> Iterator[Client]:
    with Client(server.url, bob_key, max_retries=0) as client:
        yield client
