"""Helpers for the worker tests: a service home with a database and storage, jobs, workers."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pe_core.config import PeJob
from pe_core.policy import PrivacyPolicy
from pe_core.privacy import release_digest
from pe_core.samples import Samples
from service.app import celery_sender
from service.db import (
    Job,
    JobEvent,
    Release,
    create_dataset,
    create_tenant,
    make_engine,
    make_session_factory,
    read_transaction,
    reserve,
    upgrade,
    write_transaction,
)
from service.db.models import utcnow
from service.outbox import Courier
from service.settings import Settings
from service.storage import LocalStorage
from tests.conftest import digits_28
from workers import jobs

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("PRIVEVO_TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
# Redis hands the message of a killed worker out again this long after its delivery. Shorter
# than a job here: a live worker's message is then handed out again too, and that delivery
# stops at the job's lease (or finds the job ended).
VISIBILITY_TIMEOUT_S = 4
TASK_TIME_LIMIT_S = 600
ITERATIONS = 2


@dataclass
class Home:
    """A service installation in a temporary folder: SQLite database, storage, broker folder."""

    root: Path
    url: str
    sessions: sessionmaker[Session]
    storage: LocalStorage

    @classmethod
    def create(cls, root: Path) -> Home:
        url = f"sqlite:///{root / 'privevo.sqlite3'}"
        upgrade(url)
        sessions = make_session_factory(make_engine(url))
        return cls(root, url, sessions, LocalStorage(root / "storage"))

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PRIVEVO_HOME": str(self.root),
            "PRIVEVO_DATABASE_URL": self.url,
            "PRIVEVO_STORAGE_ROOT": str(self.storage.root),
            "PRIVEVO_BROKER_URL": REDIS_URL,
            "PRIVEVO_TASK_TIME_LIMIT_S": str(TASK_TIME_LIMIT_S),
            "PRIVEVO_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
            "PRIVEVO_ALLOW_INSECURE_TEST_NOISE": "true",
        }

    def store_npz(self, samples: Samples, **arrays: Any) -> tuple[str, str]:
        """Stores ``samples`` as an uploaded npz; returns (its storage key, its sha256)."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            images=samples.images,
            labels=samples.labels,
            label_names=np.array(samples.label_names),
            **arrays,
        )
        data = buffer.getvalue()
        key = f"uploads/{hashlib.sha256(data).hexdigest()[:16]}.npz"
        with self.storage.open_write(key) as handle:
            handle.write(data)
        return key, hashlib.sha256(data).hexdigest()

    def new_job(
        self,
        *,
        user_column: str | None = None,
        heldout: Samples | None = None,
        audit: dict[str, Any] | None = None,
        **spec: Any,
    ) -> str:
        """A queued drawtext job on 20 digits per label (28x28), T = 2, 60 samples.

        With ``user_column`` the dataset is user-level: the npz holds that array, naming 25
        users of 8 records each. With ``heldout``, those records are a held-out dataset of the
        same tenant that the job names as its ``eval_dataset_id``. With ``audit`` (canaries,
        guesses, seed) the job is an audit, as the gateway stores its option.
        """
        digits = digits_28(20)
        users = {} if user_column is None else {user_column: np.arange(len(digits)) % 25}
        key, sha256 = self.store_npz(digits, **users)
        job = PeJob(
            iterations=ITERATIONS, num_samples=60, epsilon=4.0, delta=1e-5, **spec
        ).model_dump(mode="json")
        with self.sessions() as session:
            tenant = create_tenant(session, "acme")
            dataset = create_dataset(
                session,
                tenant.id,
                name="digits.npz",
                modality="image",
                record_count=len(digits),
                labels=list(digits.label_names),
                sha256=sha256,
                storage_path=key,
                epsilon_cap=10.0,
                delta_cap=1e-3,
                user_column=user_column,
            )
            evaluation = {}
            if heldout is not None:
                heldout_key, heldout_sha256 = self.store_npz(heldout)
                evaluation["eval_dataset_id"] = create_dataset(
                    session,
                    tenant.id,
                    name="heldout.npz",
                    modality="image",
                    record_count=len(heldout),
                    labels=list(heldout.label_names),
                    sha256=heldout_sha256,
                    storage_path=heldout_key,
                    role="heldout",
                ).id
            # Stored as the gateway stores its job body: the engine's fields and the dataset.
            body = {**job, "dataset_id": dataset.id, **evaluation}
            if audit is not None:
                body["audit"] = audit
            return reserve(
                session,
                tenant.id,
                dataset.id,
                4.0,
                1e-5,
                None,
                body,
                iterations=ITERATIONS,
                eval_dataset_id=evaluation.get("eval_dataset_id"),
            ).id

    def job(self, job_id: str) -> Job:
        with self.sessions() as session, read_transaction(session):
            return session.scalars(select(Job).where(Job.id == job_id)).one()

    def releases(self, job_id: str) -> list[Release]:
        statement = select(Release).where(Release.job_id == job_id).order_by(Release.id)
        with self.sessions() as session, read_transaction(session):
            return list(session.scalars(statement))

    def events(self, job_id: str, kind: str) -> list[dict[str, Any]]:
        statement = (
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.kind == kind)
            .order_by(JobEvent.id)
        )
        with self.sessions() as session, read_transaction(session):
            return [event.payload for event in session.scalars(statement)]

    def file(self, key: str) -> Path:
        return self.storage.path(key)

    def courier(self, broker_url: str = REDIS_URL) -> Courier:
        """Sends the outbox's messages as the gateway does, to ``broker_url``."""
        settings = Settings(
            home=self.root, broker_url=broker_url, task_time_limit_s=TASK_TIME_LIMIT_S
        )
        send, finder = celery_sender(settings)
        return Courier(self.sessions, send, finder)


def worker_context(home: Home, **fields: Any) -> jobs.JobContext:
    """A worker's context on ``home``: seeded test noise allowed, quick heartbeats, an hour's
    time limit; ``fields`` change any of them or add others (``work``, ``fanout``)."""
    defaults: dict[str, Any] = {
        "time_limit_s": 3600.0,
        "heartbeat_s": 0.05,
        "policy": PrivacyPolicy(allow_insecure_test_noise=True),
    }
    return jobs.JobContext(home.sessions, home.storage, **(defaults | fields))


def stored_digest(path: Path) -> str:
    """The release digest of a stored noisy vector."""
    with np.load(path, allow_pickle=False) as npz:
        return release_digest(npz["values"])


ELSEWHERE = "another-host/boot/4026531836/7/123#token"
"""A job lease holder on another machine: alive as far as anyone here can tell."""


def hold(home: Home, job_id: str, holder: str, *, heartbeat_age_s: float = 0.0) -> None:
    """Records ``holder`` as the job's lease holder, which last beat ``heartbeat_age_s`` ago."""
    with home.sessions() as session, write_transaction(session):
        job = session.get_one(Job, job_id)
        job.lease_holder = holder
        job.heartbeat_at = utcnow() - timedelta(seconds=heartbeat_age_s)


def exited_process() -> str:
    """The process name of a Python process that has exited."""
    code = "from workers.lease import process_name; print(process_name())"
    return subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()


Worker = subprocess.Popen[bytes]


def start_worker(home: Home, app: str = "workers.celery_app", **env: str) -> Worker:
    """A real ``celery worker`` process (solo pool, queue cpu) for ``home``."""
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker", "-P", "solo", "-Q", "cpu",
        "--concurrency", "1", "--loglevel", "warning",
        "--without-mingle", "--without-gossip", "--without-heartbeat",
    ]  # fmt: skip
    with (home.root / f"worker-{time.monotonic_ns()}.log").open("w") as log:
        return subprocess.Popen(
            command, cwd=REPO, env={**home.env(), **env}, stdout=log, stderr=subprocess.STDOUT
        )


def stop_worker(worker: Worker) -> None:
    """Ends a worker that a test started: a warm shutdown, else a kill."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGCONT)
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] == "T"


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0) -> T:
    """Polls ``probe`` every 50 ms until it returns a value other than None (or False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value is not None and value is not False:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def worker_logs(home: Home) -> str:
    return "\n".join(path.read_text() for path in sorted(home.root.glob("worker-*.log")))
