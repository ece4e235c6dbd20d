"""The stale-job sweeper without Celery: what it re-enqueues, once, and its thread."""

from __future__ import annotations

from service.db import update_progress
from tests.service.db.support import silence
from tests.workers.support import Home, wait_for
from workers.sweeper import Sweeper, sweep


def test_a_silent_running_job_is_sent_again_once(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    sent: list[tuple[str, str]] = []

    def enqueue(job: str, queue: str) -> None:
        sent.append((job, queue))

    assert sweep(home.sessions, enqueue, stale_after_s=60) == []  # queued: not its business
    with home.sessions() as session:
        update_progress(session, job_id, iteration=0, phase="starting")
    assert sweep(home.sessions, enqueue, stale_after_s=60) == []  # alive
    with home.sessions() as session:
        silence(session, job_id, 120)
    assert sweep(home.sessions, enqueue, stale_after_s=60) == [job_id]
    assert sweep(home.sessions, enqueue, stale_after_s=60) == []
    assert sent == [(job_id, "cpu")]
    assert home.events(job_id, "requeued") == [{"stale_after_s": 60}]


def test_the_sweeper_thread_sweeps_until_stopped(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    with home.sessions() as session:
        update_progress(session, job_id, iteration=0, phase="starting")
        silence(session, job_id, 120)
    sent: list[str] = []
    sweeper = Sweeper(
        home.sessions, lambda job, queue: sent.append(job), interval_s=0.01, stale_after_s=60
    )
    sweeper.start()
    try:
        wait_for("the job to be sent again", lambda: sent)
    finally:
        sweeper.stop()
    assert sent == [job_id]
