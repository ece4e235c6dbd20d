"""Jobs through a real broker and real ``celery worker`` processes (never eager mode).

A worker killed in the middle of a job loses its message to Redis's visibility timeout, or its
job to another worker's stale-job sweeper; the next worker resumes the job from its checkpoint,
and no release is ever drawn twice. Jobs are sent as the gateway sends them: through the outbox.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from service.db import FINAL_STATUSES, Job, JobMessage, cancel, read_transaction
from service.settings import Settings
from tests.workers.support import (
    ITERATIONS,
    REDIS_URL,
    Home,
    Worker,
    is_stopped,
    start_worker,
    stop_worker,
    stored_digest,
    wait_for,
    worker_logs,
)
from workers import jobs

pytestmark = pytest.mark.slow

Send = Callable[[str], None]


@pytest.fixture
def send(home: Home, redis_db: redis.Redis) -> Send:
    """Sends a job's message as the gateway does: from the outbox, by name, via Redis."""
    courier = home.courier()

    def enqueue(job_id: str) -> None:
        courier.deliver()
        assert message(home, job_id).state == "sent"

    return enqueue


def message(home: Home, job_id: str) -> JobMessage:
    with home.sessions() as session, read_transaction(session):
        return session.get_one(JobMessage, job_id)


def final(home: Home, job_id: str) -> Callable[[], Job | None]:
    def probe() -> Job | None:
        job = home.job(job_id)
        return job if job.status in FINAL_STATUSES else None

    return probe


def stopped(worker: Worker, home: Home) -> Callable[[], bool]:
    def probe() -> bool:
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited early:\n{worker_logs(home)}")
        return is_stopped(worker.pid)

    return probe


def release_files(home: Home, job_id: str, t: int) -> tuple[Path, list[Path]]:
    """(the release store's own file of iteration t, the ledger's sha-named copies of it)."""
    job = home.job(job_id)
    folder = jobs.local_folder(home.storage, jobs.job_prefix(job.dataset_id, job.id))
    files = sorted((folder / "state" / "releases").glob(f"iteration-{t}_histogram-*.npz"))
    own = [path for path in files if path.name.count(".") == 1]
    assert len(own) == 1, files
    return own[0], [path for path in files if path.name.count(".") == 2]


def check_results(home: Home, job_id: str) -> None:
    names = {key.split("/", 2)[2] for key in home.storage.list(jobs.result_prefix(job_id))}
    assert {"synthetic/labels.csv", "privacy_report.json", "samples/iter_00.png"} <= names
    assert not [name for name in names if ".state" in name or name.startswith("eval/")]


def test_a_worker_runs_a_job_to_success(home: Home, send: Send) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    worker = start_worker(home)
    try:
        send(job_id)
        job = wait_for("the job to end", final(home, job_id))
    finally:
        stop_worker(worker)
    assert job.status == "succeeded", worker_logs(home)
    assert len(home.releases(job_id)) == ITERATIONS
    check_results(home, job_id)
    # Uploads, the job's private state and its results are the service user's alone, the
    # engine's own files included (the worker runs with umask 077).
    entries = [home.storage.root, *home.storage.root.rglob("*")]
    modes = {str(p): oct(p.stat().st_mode & 0o777) for p in entries}
    expected = {str(p): "0o700" if p.is_dir() else "0o600" for p in entries}
    assert modes == expected
    assert any("state" in path for path in modes) and any("results" in path for path in modes)


@pytest.mark.parametrize("stop_at", ["after-record", "before-record"])
def test_a_killed_worker_is_replaced_without_a_second_release(
    home: Home, send: Send, stop_at: str
) -> None:
    # Production noise: a second draw for iteration 1 could not repeat the first.
    job_id = home.new_job()
    first = start_worker(home, "tests.workers.stopping_app", PRIVEVO_TEST_STOP_AT=stop_at)
    try:
        send(job_id)
        wait_for("the worker to reach its first release", stopped(first, home))
        own_file, _ = release_files(home, job_id, 1)
        drawn = stored_digest(own_file)
        recorded = [release.sha256 for release in home.releases(job_id)]
        assert recorded == ([drawn] if stop_at == "after-record" else [])
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        stop_worker(first)
    second = start_worker(home)
    try:
        job = wait_for("the job to end", final(home, job_id))
    finally:
        stop_worker(second)
    assert job.status == "succeeded", worker_logs(home)
    releases = home.releases(job_id)
    assert [r.mechanism for r in releases] == ["iteration-1/histogram", "iteration-2/histogram"]
    assert releases[0].sha256 == drawn
    assert stored_digest(own_file) == drawn  # no later draw replaced it
    for t, release in enumerate(releases, start=1):
        own, copies = release_files(home, job_id, t)
        assert stored_digest(own) == release.sha256
        assert [stored_digest(copy) for copy in copies] == [release.sha256]
        assert home.file(release.storage_path) == copies[0]
    assert len(home.events(job_id, "release")) == ITERATIONS
    seeds = [event["seed"] for event in home.events(job_id, "started")]
    assert len(seeds) == 2 and seeds[0] == seeds[1]
    report = json.loads(home.file(f"results/{job_id}/privacy_report.json").read_text())
    assert report["status"] == "DP"
    assert report["releases"] == ITERATIONS
    check_results(home, job_id)


def test_a_dead_workers_job_is_swept_and_finished_by_another(
    home: Home, send: Send, redis_db: redis.Redis
) -> None:
    # Redis would hand the message out again only after an hour: recovery is the sweeper's.
    slow_redelivery = {"PRIVEVO_VISIBILITY_TIMEOUT_S": "3600"}
    job_id = home.new_job()
    first = start_worker(
        home, "tests.workers.stopping_app", PRIVEVO_TEST_STOP_AT="after-record", **slow_redelivery
    )
    try:
        send(job_id)
        wait_for("the worker to reach its first release", stopped(first, home))
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        stop_worker(first)
    assert home.job(job_id).status == "running"
    second = start_worker(
        home, PRIVEVO_STALE_AFTER_S="3", PRIVEVO_SWEEP_INTERVAL_S="1", **slow_redelivery
    )
    try:
        job = wait_for("the job to end", final(home, job_id))
    finally:
        stop_worker(second)
    assert job.status == "succeeded", worker_logs(home)
    releases = home.releases(job_id)
    assert [r.mechanism for r in releases] == ["iteration-1/histogram", "iteration-2/histogram"]
    assert len(home.events(job_id, "release")) == ITERATIONS
    assert home.events(job_id, "requeued") == [{"reason": "worker lost"}]
    assert message(home, job_id).generation == 2  # one replacement, for one kill
    # The dead worker's unacknowledged copy was dropped: Redis will not hand it out too.
    assert redis_db.hlen("unacked") == 0
    assert redis_db.llen("cpu") == 0
    check_results(home, job_id)


@pytest.mark.parametrize("broker", ["redis", "filesystem"])
def test_a_job_whose_worker_died_before_starting_it_is_sent_again(
    home: Home, redis_db: redis.Redis, broker: str
) -> None:
    # The worker takes the message and stops before it marks the job running: the job stays
    # queued, its message in the dead worker's hands (Redis) or gone (files).
    url = REDIS_URL if broker == "redis" else "filesystem://"
    env = {"PRIVEVO_BROKER_URL": url, "PRIVEVO_VISIBILITY_TIMEOUT_S": "3600"}
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    first = start_worker(
        home, "tests.workers.stopping_app", PRIVEVO_TEST_STOP_AT="before-start", **env
    )
    try:
        home.courier(url).deliver()
        wait_for("the worker to take the job", stopped(first, home))
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        stop_worker(first)
    assert home.job(job_id).status == "queued"
    second = start_worker(home, PRIVEVO_STALE_AFTER_S="3", PRIVEVO_SWEEP_INTERVAL_S="1", **env)
    try:
        job = wait_for("the job to end", final(home, job_id))
    finally:
        stop_worker(second)
    assert job.status == "succeeded", worker_logs(home)
    reason = "worker lost before starting the job" if broker == "redis" else "message lost"
    assert home.events(job_id, "requeued") == [{"reason": reason}]
    assert message(home, job_id).generation == 2
    assert redis_db.hlen("unacked") == 0


def test_the_embedded_broker_gets_its_folders_when_a_worker_starts(home: Home) -> None:
    settings = Settings(home=home.root, broker_url="filesystem://")
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    assert not settings.broker_folder.exists()
    worker = start_worker(home, PRIVEVO_BROKER_URL="filesystem://")
    try:
        wait_for("the worker's broker folders", (settings.broker_folder / "control").is_dir)
        home.courier("filesystem://").deliver()
        job = wait_for("the job to end", final(home, job_id))
    finally:
        stop_worker(worker)
    assert job.status == "succeeded", worker_logs(home)


def test_a_job_canceled_while_running_stops_and_keeps_its_charge(
    home: Home, send: Send, redis_db: redis.Redis
) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    worker = start_worker(home, "tests.workers.stopping_app", PRIVEVO_TEST_STOP_AT="after-record")
    try:
        send(job_id)
        wait_for("the worker to reach its first release", stopped(worker, home))
        with home.sessions() as session:
            assert cancel(session, home.job(job_id).tenant_id, job_id).status == "canceled"
        worker.send_signal(signal.SIGCONT)
        # The task has ended once its message is acknowledged.
        wait_for("the task to end", lambda: redis_db.hlen("unacked") == 0)
        assert worker.poll() is None, worker_logs(home)
    finally:
        stop_worker(worker)
    job = home.job(job_id)
    (release,) = home.releases(job_id)
    assert job.status == "canceled"
    assert release.mechanism == "iteration-1/histogram"
    assert release.epsilon > 0
    # Canceled after a release: it pays what it reserved, not only what it released.
    assert (job.epsilon_charged, job.delta_charged) == (job.epsilon_reserved, job.delta_reserved)
    assert home.storage.list(jobs.result_prefix(job_id)) == []
    assert [e["iteration"] for e in home.events(job_id, "iteration")] == [0]
