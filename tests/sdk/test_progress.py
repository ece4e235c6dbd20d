"""Progress lines with an ETA from the job's event timestamps (no server, no clock: the times
are given)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from privevo_client import Event
from privevo_client._core import Eta, Progress, progress_line
from privevo_client.models import BaseJob

START = datetime(2026, 1, 1, tzinfo=UTC)


def event(event_id: int, kind: str, seconds: float, **payload: object) -> Event:
    return Event(
        id=event_id, kind=kind, payload=payload, created_at=START + timedelta(seconds=seconds)
    )


def job(status: str = "running", iteration: int = 2) -> BaseJob:
    return BaseJob(
        id="job_1", dataset_id="ds_1", status=status, iteration=iteration, iterations=5,
        phase="vote", epsilon_reserved=1.0, delta_reserved=1e-6, epsilon_spent=0.25,
        created_at=START, started_at=START, finished_at=None, error=None, spec={},
    )  # fmt: skip


def test_the_eta_is_the_pace_of_the_iterations_times_those_left() -> None:
    eta = Eta()
    eta.add([event(1, "created", 0), event(2, "started", 1)], now=100.0)
    assert eta.seconds_left(5, now=100.0) is None  # nothing timed yet
    eta.add([event(3, "iteration", 5, iteration=0)], now=101.0)
    assert eta.seconds_left(5, now=101.0) is None  # one point is no pace
    # Iterations 0 to 2 took 20 s on the server's clock: 10 s each, 3 left.
    eta.add([event(4, "progress", 9, iteration=1), event(5, "iteration", 25, iteration=2)], 102.0)
    assert eta.cursor == 5
    assert eta.seconds_left(5, now=102.0) == 30.0
    # Counted down on the client's clock since it saw the last iteration, never below 0.
    assert eta.seconds_left(5, now=110.0) == 22.0
    assert eta.seconds_left(5, now=200.0) == 0.0


def test_a_resumed_delivery_is_timed_afresh() -> None:
    eta = Eta()
    eta.add([event(1, "iteration", 0, iteration=0), event(2, "iteration", 10, iteration=1)], 0.0)
    assert eta.seconds_left(5, now=0.0) == 40.0
    # The worker died; the next delivery resumes at iteration 2, four times slower.
    eta.add([event(3, "requeued", 500), event(4, "started", 600)], 1.0)
    assert eta.seconds_left(5, now=1.0) is None
    eta.add([event(5, "iteration", 640, iteration=2), event(6, "iteration", 680, iteration=3)], 2.0)
    assert eta.seconds_left(5, now=2.0) == 80.0


def test_the_line_shows_iteration_epsilon_and_eta_until_the_job_ends() -> None:
    assert progress_line(job(), eta_s=30.0).endswith("2/5 vote eps 0.25/1 eta 30 s running")
    assert progress_line(job(), eta_s=600.0).endswith("eta 10 min running")
    assert progress_line(job()).endswith("eta unknown running")
    assert progress_line(job("succeeded", 5), eta_s=3.0).endswith("eps 0.25/1 succeeded")


def test_a_log_gets_a_line_per_change_of_state_not_per_tick_of_the_eta() -> None:
    stream = io.StringIO()  # not a terminal
    shown = Progress(stream)
    shown.show(job(), eta_s=30.0)
    shown.show(job(), eta_s=29.0)  # only the ETA moved
    shown.show(job(iteration=3), eta_s=20.0)
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" eps ", 1)[1] for line in lines] == [
        "0.25/1 eta 30 s running",
        "0.25/1 eta 20 s running",
    ]
