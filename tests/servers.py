"""A real `privevo serve` process for API and SDK tests (SQLite in a temp folder, Redis)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REDIS = ("127.0.0.1", 6379)
REPO = Path(__file__).resolve().parents[1]


def answers(address: tuple[str, int]) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(address) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PRIVEVO_HOME": str(home),
            "PRIVEVO_BROKER_URL": "redis://127.0.0.1:6379/13",
            "PRIVEVO_MAX_UPLOAD_BYTES": str(3 * 1024 * 1024),
            "PRIVEVO_ALLOW_INSECURE_TEST_NOISE": "true",
        }
        if database_url is not None:
            self.env["PRIVEVO_DATABASE_URL"] = database_url
        self.process: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "privevo.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout.strip()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "privevo.cli", "serve", "--port", str(self.port),
             "--no-local-worker"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("privevo serve did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self, key: str | None) -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    if not answers(REDIS):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (make test starts one)")
    server = Server(tmp_path_factory.mktemp("service"))
    server.cli("keys", "create", "--tenant", "warmup")  # creates the database
    server.start()
    yield server
    server.stop()


def start_worker(server: Server, log: str = "worker.log", **env: str) -> subprocess.Popen[bytes]:
    """A real Celery worker (solo pool, queue cpu) on the server's settings and ``env``, its
    output appended to ``log`` in the server's home."""
    command = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
               "-P", "solo", "-Q", "cpu", "--loglevel", "warning",
               "--without-mingle", "--without-gossip", "--without-heartbeat"]  # fmt: skip
    with (server.home / log).open("ab") as sink:
        return subprocess.Popen(
            command, env={**server.env, **env}, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
        )


@contextmanager
def gateway_with_worker(home: Path, database_url: str, broker_url: str) -> Iterator[Server]:
    """``privevo serve`` and one real Celery worker (solo pool, queue cpu), sharing a home, a
    database and a broker; each test module passes a Redis database of its own, so that no
    other module's worker takes its messages. Skips where Redis does not answer."""
    if not answers(REDIS):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (make test starts one)")
    server = Server(home, database_url=database_url)
    server.env["PRIVEVO_BROKER_URL"] = broker_url
    server.start()  # it migrates the database before it answers
    worker = start_worker(server)
    try:
        yield server
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()
