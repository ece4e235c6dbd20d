"""Faults against the production shape on loopback: a gateway, real Celery workers and a
redis-server of the tests' own (restarted or stopped here, never the machine's).

Every job ends, with exactly one recorded release per iteration and its budget charged once,
through a create while Redis is down, a Redis restarted without persistence while jobs wait
and run, and workers SIGKILLed at random points; concurrent creates with one idempotency key
make one job and one message; a gateway killed mid-upload leaves nothing once restarted; and
many clients at once get no 5xx.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from service import db
from service.settings import Settings
from tests.reliability.conftest import OwnRedis, client_for, scale, start_server
from tests.servers import Server, start_worker
from tests.service.test_api import npz_bytes, upload

ITERATIONS = 2
EPSILON = 0.2
JOB = {"epsilon": EPSILON, "delta": 1e-7, "iterations": ITERATIONS, "num_samples": 40}
JOB_TIMEOUT_S = 240.0
# Workers that find a lost message quickly: Redis's own redelivery would come an hour late.
RECOVERY = {
    "PRIVEVO_STALE_AFTER_S": "3",
    "PRIVEVO_SWEEP_INTERVAL_S": "1",
    "PRIVEVO_VISIBILITY_TIMEOUT_S": "3600",
}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server for one test, in memory only: restarting it loses every message."""
    (tmp_path / "redis").mkdir()
    server = OwnRedis(tmp_path / "redis")
    yield server
    if server.process.poll() is None:
        server.stop()


@pytest.fixture
def gateway(tmp_path: Path, redis_server: OwnRedis) -> Iterator[Server]:
    server = start_server(tmp_path / "home", redis_server)
    yield server
    server.stop()


class Workers:
    """Celery workers of the gateway's installation, started and killed by the test."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        process = start_worker(self.server, **RECOVERY)
        self.processes.append(process)
        return process

    def kill(self, process: subprocess.Popen[bytes]) -> None:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill(process)

    def log(self) -> str:
        path = self.server.home / "worker.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture
def workers(gateway: Server) -> Iterator[Workers]:
    pool = Workers(gateway)
    yield pool
    pool.stop()


def sessions_of(server: Server) -> sessionmaker[Session]:
    url = server.env.get("PRIVEVO_DATABASE_URL") or Settings(home=server.home).resolved_database_url
    return db.make_session_factory(db.make_engine(url))


def new_dataset(client: httpx.Client, epsilon_cap: float) -> str:
    response = upload(client, npz_bytes(2), epsilon_cap=str(epsilon_cap))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def create_jobs(client: httpx.Client, dataset_id: str, count: int, **job: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = client.post("/v1/jobs", json={"dataset_id": dataset_id, **JOB, **job})
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def wait_until(what: str, done: Callable[[], bool], timeout_s: float, log: Callable[[], str]):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:g} s; workers' log:\n{log()}")


def statuses(client: httpx.Client, job_ids: list[str]) -> Counter[str]:
    return Counter(client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in job_ids)


def all_ended(client: httpx.Client, job_ids: list[str]) -> Callable[[], bool]:
    return lambda: statuses(client, job_ids).keys() <= {"succeeded", "failed", "canceled"}


def check_exactly_once(
    server: Server, client: httpx.Client, dataset_id: str, job_ids: list[str]
) -> dict[str, int]:
    """Every job succeeded with one release per iteration, none twice, and the dataset's
    budget charged exactly the jobs' reservations. Returns each job's message generations."""
    assert statuses(client, job_ids) == Counter({"succeeded": len(job_ids)})
    sessions = sessions_of(server)
    with sessions() as session:
        releases = session.scalars(select(db.Release).where(db.Release.job_id.in_(job_ids)))
        per_job = Counter((r.job_id, r.iteration, r.mechanism) for r in releases)
        messages = session.scalars(select(db.JobMessage).where(db.JobMessage.job_id.in_(job_ids)))
        generations = {m.job_id: m.generation for m in messages}
    assert set(per_job.values()) == {1}, "a release was recorded twice"
    assert Counter(job for job, _, _ in per_job) == Counter(dict.fromkeys(job_ids, ITERATIONS))
    budget = client.get(f"/v1/datasets/{dataset_id}/budget").json()
    assert budget["epsilon_spent"] == pytest.approx(EPSILON * len(job_ids))
    assert budget["epsilon_reserved"] == 0.0
    return generations


def test_a_job_created_while_redis_is_down_runs_once_it_is_back(
    gateway: Server, redis_server: OwnRedis, workers: Workers, figures: list[str]
) -> None:
    with client_for(gateway, "alice") as alice:
        dataset_id = new_dataset(alice, epsilon_cap=1.0)
        redis_server.stop()
        body = {"dataset_id": dataset_id, **JOB}
        headers = {"Idempotency-Key": "retry-me"}
        first = alice.post("/v1/jobs", json=body, headers=headers)
        again = alice.post("/v1/jobs", json=body, headers=headers)
        listed = alice.get("/v1/jobs")
        assert (first.status_code, again.status_code, listed.status_code) == (202, 202, 200)
        assert first.json()["id"] == again.json()["id"]
        job_id = first.json()["id"]

        time.sleep(3)  # the courier tries, and fails, while Redis is down
        redis_server.start()
        workers.start()
        started = time.monotonic()
        wait_until("the job ended", all_ended(alice, [job_id]), JOB_TIMEOUT_S, workers.log)
        generations = check_exactly_once(gateway, alice, dataset_id, [job_id])
    assert generations == {job_id: 1}  # the committed message, sent once Redis was back
    figures.append(
        f"create with Redis down: 202 twice (one job), ran {time.monotonic() - started:.0f} s "
        "after Redis returned"
    )


def test_jobs_survive_a_redis_restart_without_persistence(
    gateway: Server, redis_server: OwnRedis, workers: Workers, figures: list[str]
) -> None:
    count = scale(4, 14)
    with client_for(gateway, "alice") as alice:
        dataset_id = new_dataset(alice, epsilon_cap=EPSILON * count)
        job_ids = create_jobs(alice, dataset_id, count)
        workers.start()
        wait_until(
            "a job started",
            lambda: statuses(alice, job_ids)["queued"] < count,
            JOB_TIMEOUT_S,
            workers.log,
        )
        before = statuses(alice, job_ids)
        redis_server.restart()  # every waiting and unacknowledged message is gone
        wait_until("every job ended", all_ended(alice, job_ids), JOB_TIMEOUT_S, workers.log)
        generations = check_exactly_once(gateway, alice, dataset_id, job_ids)
    resent = sum(g - 1 for g in generations.values())
    assert resent <= count  # at most one replacement per lost message
    figures.append(
        f"Redis restarted empty with {before['queued']} queued and {before['running']} running "
        f"jobs: {count} of {count} succeeded, {resent} messages sent again, releases exactly once"
    )


def test_workers_killed_at_random_points_lose_no_job_and_release_nothing_twice(
    gateway: Server, workers: Workers, figures: list[str]
) -> None:
    count, kills = scale(4, 30), scale(2, 15)
    chance = random.Random()
    with client_for(gateway, "alice") as alice:
        dataset_id = new_dataset(alice, epsilon_cap=EPSILON * count)
        # Jobs of a few seconds each, so that most kills land in one.
        job_ids = create_jobs(alice, dataset_id, count, num_samples=600)
        live = [workers.start(), workers.start()]
        mid_job = killed = 0
        for _ in range(kills):
            time.sleep(chance.uniform(1.5, 4.0))
            if all_ended(alice, job_ids)():
                break
            mid_job += statuses(alice, job_ids)["running"] > 0
            victim = live.pop(chance.randrange(len(live)))
            workers.kill(victim)
            killed += 1
            live.append(workers.start())
        wait_until("every job ended", all_ended(alice, job_ids), JOB_TIMEOUT_S, workers.log)
        generations = check_exactly_once(gateway, alice, dataset_id, job_ids)
    figures.append(
        f"workers SIGKILLed: {killed} kills ({mid_job} while a job ran) over {count} jobs: "
        f"{count} succeeded, {sum(g - 1 for g in generations.values())} messages sent again, "
        "releases exactly once, budget charged once"
    )


def test_concurrent_creates_with_one_key_make_one_job_and_one_message(
    gateway: Server, redis_server: OwnRedis, figures: list[str]
) -> None:
    with client_for(gateway, "alice") as alice:
        dataset_id = new_dataset(alice, epsilon_cap=1.0)
        body = {"dataset_id": dataset_id, **JOB}
        start = threading.Barrier(20)

        def create(_: int) -> httpx.Response:
            start.wait()
            return alice.post("/v1/jobs", json=body, headers={"Idempotency-Key": "once"})

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(create, range(20)))
        assert {r.status_code for r in responses} == {202}
        (job_id,) = {r.json()["id"] for r in responses}
        queue = redis.Redis.from_url(redis_server.url)

        def messages() -> int:
            return sum(job_id.encode() in raw for raw in queue.lrange("cpu", 0, -1))

        wait_until("the message was sent", lambda: messages() > 0, 30, lambda: "")
        time.sleep(3)  # the courier's next rounds, and the retries' wake-ups, send nothing more
        assert messages() == 1
    figures.append("20 concurrent creates with one Idempotency-Key: 1 job, 1 broker message")


def test_many_clients_at_once_get_no_5xx(gateway: Server, figures: list[str]) -> None:
    clients, seconds = scale(8, 50), scale(5, 60)
    with client_for(gateway, "alice") as alice:
        dataset_id = new_dataset(alice, epsilon_cap=10.0)
        (job_id,) = create_jobs(alice, dataset_id, 1)
        requests: list[tuple[str, int, float]] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def client_loop(seed: int) -> None:
            chance = random.Random(seed)
            while time.monotonic() < stop_at:
                kind = chance.choice(["GET job", "GET jobs", "GET dataset", "POST job"])
                began = time.monotonic()
                if kind == "GET job":
                    response = alice.get(f"/v1/jobs/{job_id}")
                elif kind == "GET jobs":
                    response = alice.get("/v1/jobs", params={"limit": 20})
                elif kind == "GET dataset":
                    response = alice.get(f"/v1/datasets/{dataset_id}/budget")
                else:
                    body = {"dataset_id": dataset_id, **JOB, "epsilon": 0.001, "delta": 1e-9}
                    response = alice.post("/v1/jobs", json=body)
                with lock:
                    requests.append((kind, response.status_code, time.monotonic() - began))

        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client_loop, range(clients)))
    codes = Counter(code for _, code, _ in requests)
    assert not [code for code in codes if code >= 500], codes
    assert codes[200] > 0 and codes[202] > 0
    latencies = sorted(seconds for _, _, seconds in requests)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    figures.append(
        f"{clients} clients for {seconds} s: {len(requests)} requests, statuses "
        f"{dict(sorted(codes.items()))}, p99 {p99 * 1000:.0f} ms"
    )


def test_a_gateway_killed_mid_upload_leaves_nothing_once_restarted(
    gateway: Server, figures: list[str]
) -> None:
    uploads = gateway.home / "storage" / "uploads"
    key = client_for(gateway, "alice").headers["Authorization"]
    boundary = "privevo-faults"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\ncut\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="modality"\r\n\r\nimage\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    stop = threading.Event()

    def body() -> Iterator[bytes]:
        yield head
        while not stop.is_set():  # never ends: the gateway dies first
            yield bytes(64 * 1024)
            time.sleep(0.05)

    def send() -> None:
        headers = {
            "Authorization": key,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        }
        with contextlib.suppress(httpx.TransportError):  # the gateway is killed under it
            httpx.post(f"{gateway.url}/v1/datasets", content=body(), headers=headers, timeout=60)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        deadline = time.monotonic() + 30
        while sum(path.stat().st_size for path in uploads.glob("*/.*.tmp")) < 256 * 1024:
            assert time.monotonic() < deadline, "the upload never reached storage"
            time.sleep(0.05)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(timeout=30)
        left = sum(path.stat().st_size for path in uploads.rglob("*") if path.is_file())
    finally:
        stop.set()
        sender.join(timeout=30)
    gateway.start()
    deadline = time.monotonic() + 30
    while [path for path in uploads.rglob("*") if path.is_file()]:
        assert time.monotonic() < deadline, "the restarted gateway left the orphan upload"
        time.sleep(0.2)
    figures.append(
        f"gateway SIGKILLed mid-upload: {left / 1024:.0f} KiB left behind, deleted by the "
        "restarted gateway at start"
    )
