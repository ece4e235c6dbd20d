"""A job's lease: a delivery runs a job only while no other live delivery holds it, a killed
worker's job is taken over at once, and a delivery taken over stops."""

from __future__ import annotations

import pytest

from service.db import update_progress
from tests.workers.support import ELSEWHERE, Home, exited_process, hold, wait_for, worker_context
from workers import jobs
from workers.lease import LeaseLost, is_gone, job_lease, process_name


def test_a_job_held_by_a_live_delivery_is_left_to_it_until_released(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    with job_lease(home.sessions, job_id, stale_after_s=600, every_s=60) as lease:
        assert lease is not None  # this process is alive: the lease is not taken for gone
        assert jobs.run_job(worker_context(home), job_id) == "running"
    assert home.job(job_id).status == "queued"
    assert home.events(job_id, "started") == []
    assert jobs.run_job(worker_context(home), job_id) == "succeeded"
    assert home.job(job_id).lease_holder is None  # released when the delivery ended


def test_a_killed_workers_job_is_taken_over_at_once_and_one_elsewhere_once_silent(
    home: Home,
) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    hold(home, job_id, ELSEWHERE)  # alive as far as anyone here can tell
    assert jobs.run_job(worker_context(home), job_id) == "running"
    hold(home, job_id, ELSEWHERE, heartbeat_age_s=601)
    assert jobs.run_job(worker_context(home, stale_after_s=600), job_id) == "succeeded"

    other = home.new_job(insecure_test_noise=True, seed=3)
    hold(home, other, f"{exited_process()}#token")  # its heartbeat is fresh, its process gone
    assert jobs.run_job(worker_context(home), other) == "succeeded"


def test_a_process_is_gone_only_when_this_machine_shows_it_has_exited() -> None:
    assert not is_gone(f"{process_name()}#token")
    assert is_gone(f"{exited_process()}#token")
    assert not is_gone(ELSEWHERE)
    assert not is_gone("no-proc-host///7/#token")  # a holder that could not name its namespace


def test_a_delivery_taken_over_stops_at_its_next_phase(home: Home) -> None:
    job_id = home.new_job(insecure_test_noise=True, seed=3)
    with job_lease(home.sessions, job_id, stale_after_s=600, every_s=0.01) as lease:
        assert lease is not None
        with home.sessions() as session:
            update_progress(session, job_id, iteration=0, phase="starting")
        first = home.job(job_id).heartbeat_at
        wait_for("a heartbeat", lambda: home.job(job_id).heartbeat_at != first)
        lease.check()
        hold(home, job_id, ELSEWHERE)  # its heartbeat went stale and another took the job
        wait_for("the lease to be seen lost", lambda: lease.lost)
        with pytest.raises(LeaseLost):
            lease.check()
    assert home.job(job_id).lease_holder == ELSEWHERE  # not the lost holder's to release
