"""The reliability campaign as tests: real `privevo serve` processes on SQLite and on a
PostgreSQL of their own, with a Redis of their own, probed over loopback only.

Every server this folder needs is started here on a free port and stopped by the test that
started it; the machine's own PostgreSQL (5432) and Redis (6379) are never touched, so a test
may stop its database to see what the gateway answers during an outage.

Two lengths: ``make test`` runs the short one; ``make test-reliability`` sets
``PRIVEVO_RELIABILITY=full``, which raises the number of examples and probes. Each test adds
its figures (``figures`` fixture), printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import Server

FULL = os.environ.get("PRIVEVO_RELIABILITY", "short") == "full"
"""The full campaign (``make test-reliability``) instead of the short one (``make test``)."""

_FIGURES: list[str] = []


def scale(short: int, full: int) -> int:
    """How many examples or probes to run at this length."""
    return full if FULL else short


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answered on 127.0.0.1:{port} within {timeout_s} s")


class OwnRedis:
    """A redis-server of the tests' own, in memory only, on a free port.

    ``restart`` stops it and starts it again on the same port, empty: a Redis restarted
    without persistence, which loses every message it held.
    """

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.binary, self.folder = binary, folder
        self.port = free_port()
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait_for_port(self.port, 10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class OwnPostgres:
    """A PostgreSQL cluster of the tests' own in a temporary folder, on a free port.

    initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` user.
    ``stop`` and ``start`` take it down and up again with its data (an outage).
    """

    def __init__(self) -> None:
        bin_dir = _postgres_bin()
        if bin_dir is None:
            pytest.skip("PostgreSQL's server binaries are not installed (postgresql package)")
        self.bin = bin_dir
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="privevo-pg-"))
        self.data = self.folder / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.folder, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")  # fmt: skip
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=60"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.folder / "log"), "-w", "-t", "60", "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    redis = OwnRedis(tmp_path_factory.mktemp("redis"))
    yield redis
    redis.stop()


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    postgres = OwnPostgres()
    yield postgres
    postgres.remove()


def start_server(
    home: Path, redis: OwnRedis, database_url: str | None = None, **env: str
) -> Server:
    """A `privevo serve` on ``database_url`` (default SQLite in ``home``), migrated, started."""
    server = Server(home, database_url=database_url)
    server.env.update(PRIVEVO_BROKER_URL=redis.url, **env)
    server.cli("keys", "create", "--tenant", "warmup")  # migrates the database
    server.start()
    return server


def new_database(postgres: OwnPostgres) -> str:
    """The URL of a fresh database on the tests' own PostgreSQL."""
    name = f"privevo_{os.urandom(4).hex()}"
    subprocess.run(
        [*postgres.as_user, str(postgres.bin / "createdb"), "-h", "127.0.0.1",
         "-p", str(postgres.port), "-U", "postgres", name],
        check=True, timeout=60,
    )  # fmt: skip
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


def gateway_on(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A started gateway on SQLite or on a fresh database of the tests' own PostgreSQL."""
    redis = request.getfixturevalue("own_redis")
    url = new_database(request.getfixturevalue("own_postgres")) if kind == "postgresql" else None
    server = start_server(tmp_path_factory.mktemp(f"gateway-{kind}"), redis, url)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A gateway on SQLite and one on a fresh database of the tests' own PostgreSQL."""
    yield from gateway_on(request.param, request, tmp_path_factory)


@pytest.fixture(scope="session")
def figures() -> list[str]:
    """Lines of figures each test adds; printed once the run ends."""
    return _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section(f"reliability figures ({'full' if FULL else 'short'} run)")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def key_for(server: Server, tenant: str) -> str:
    return server.cli("keys", "create", "--tenant", tenant)


def client_for(server: Server, tenant: str) -> httpx.Client:
    return server.client(key_for(server, tenant))
