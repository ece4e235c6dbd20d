"""Real servers for the tests: a `privevo serve` process for API and SDK tests (SQLite in a temp
folder, Redis), its Celery workers, and an S3 API (moto's standalone server)."""

from __future__ import annotations

import os
import secrets
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


def start_worker(
    server: Server, log: str = "worker.log", app: str = "workers.celery_app", **env: str
) -> subprocess.Popen[bytes]:
    """A real Celery worker of ``app`` (solo pool, queue cpu) on the server's settings and
    ``env``, its output appended to ``log`` in the server's home."""
    command = [sys.executable, "-m", "celery", "-A", app, "worker",
               "-P", "solo", "-Q", "cpu", "--loglevel", "warning",
               "--without-mingle", "--without-gossip", "--without-heartbeat"]  # fmt: skip
    with (server.home / log).open("ab") as sink:
        return subprocess.Popen(
            command, env={**server.env, **env}, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT
        )


@contextmanager
def gateway_with_worker(
    home: Path, database_url: str, broker_url: str, **env: str
) -> Iterator[Server]:
    """``privevo serve`` and one real Celery worker (solo pool, queue cpu), sharing a home, a
    database and a broker, with ``env`` added to their environment; each test module passes a
    Redis database of its own, so that no other module's worker takes its messages. Skips
    where Redis does not answer."""
    if not answers(REDIS):
        pytest.skip("Redis does not answer on 127.0.0.1:6379 (make test starts one)")
    server = Server(home, database_url=database_url)
    server.env["PRIVEVO_BROKER_URL"] = broker_url
    server.env.update(env)
    server.start()  # it migrates the database before it answers
    worker = start_worker(server)
    try:
        yield server
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        server.stop()


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Nothing of the machine's own AWS setup may reach a test (or a real account).
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
"""Dummy credentials for the S3 test server (which takes any); set for each test only."""


JOB_TIMEOUT_S = 180.0
"""How long a test waits for a small job to end on a real worker (they take seconds)."""


def wait_for_end(client: httpx.Client, job_id: str, worker_log: Path) -> dict:
    """The job's JSON once it has ended; fails with the worker's log if it does not end."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"the job did not end in {JOB_TIMEOUT_S} s:\n{worker_log.read_text()}")


class S3Server:
    """moto's standalone S3 server, a process of its own on a free loopback port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto's S3 server exited with {self.process.returncode}")
            if answers(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        raise RuntimeError("moto's S3 server did not answer within 60 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self):  # boto3's S3 client: untyped
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def new_bucket(self) -> str:
        """Makes an empty bucket of its own for one test and returns its name."""
        name = f"test-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str) -> list[str]:
        """Every object name in ``bucket``, and every unfinished multipart upload's, as the
        store holds them (not through the backend under test)."""
        client = self.client()
        names = [
            entry["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for entry in page.get("Contents", [])
        ]
        pending = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted(names + [f"(unfinished upload) {entry['Key']}" for entry in pending])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dummy S3 credentials in this test's environment (boto3's chain reads them)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
