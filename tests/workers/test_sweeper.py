"""The outbox courier and the stale-job sweeper against real brokers: a redis-server of the
tests' own (restarted empty to lose its messages) and the file-system broker.

A job gets a message again only when it has none: jobs waiting long in the queue get no second
message, lost ones are sent again within two sweeps, a message in a dead worker's hands is
replaced and its copy dropped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis
from sqlalchemy import update

from service.broker import MessageFinder
from service.db import JobMessage, reserve, update_progress, write_transaction
from service.db.models import utcnow
from service.db.outbox import claim_outgoing
from service.outbox import BrokerRefused, Courier
from tests.reliability.conftest import OwnRedis
from tests.service.db.support import new_dataset, new_tenant, silence
from tests.workers.support import REPO, Home, wait_for
from workers.sweeper import (
    QUEUED_LOST,
    RUNNING_LOST,
    TAKEN_BY_DEAD_WORKER,
    Sweeper,
    SweepReport,
    sweep,
)

INTERVAL_S = 0.3
"""A short sweep interval; sweeps here are spaced by it (the Redis finder lets one look per
interval)."""


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@dataclass
class Broker:
    """A broker for one test: its courier and finder, and a count of its job messages."""

    kind: str
    url: str
    home: Home
    courier: Courier

    @property
    def finder(self) -> MessageFinder:
        assert self.courier.finder is not None
        return self.courier.finder

    def messages(self) -> Counter[str]:
        """Job id to its messages in the broker (waiting, or taken and unacknowledged), read
        by task id (``<job>.<generation>``), apart from the finder's own parsing."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.url)
            raws = client.lrange("cpu", 0, -1)
            raws += [json.dumps(json.loads(v)[0]).encode() for v in client.hvals("unacked")]
        else:
            folder = self.home.root / "broker"
            raws = [path.read_bytes() for path in folder.glob("*.cpu.msg")]
        return Counter(json.loads(raw)["headers"]["id"].rsplit(".", 1)[0] for raw in raws)

    def lose_everything(self, own_redis: OwnRedis) -> None:
        """Loses every message: Redis restarted without persistence, or the files taken by
        workers that died."""
        if self.kind == "redis":
            own_redis.restart()
        else:
            for path in (self.home.root / "broker").glob("*.msg"):
                path.unlink()

    def sweep(self, *, stale_after_s: float = 60.0) -> SweepReport:
        time.sleep(INTERVAL_S)
        return sweep(
            self.home.sessions,
            self.courier,
            self.finder,
            interval_s=INTERVAL_S,
            stale_after_s=stale_after_s,
        )


@pytest.fixture(params=["redis", "filesystem"])
def broker(request: pytest.FixtureRequest, home: Home) -> Broker:
    if request.param == "redis":
        server: OwnRedis = request.getfixturevalue("own_redis")
        redis.Redis.from_url(server.url).flushdb()
        url = server.url
    else:
        url = "filesystem://"
    return Broker(request.param, url, home, home.courier(url))


def queued_jobs(home: Home, count: int) -> list[str]:
    """``count`` queued jobs of one tenant (their dataset's file is never read here)."""
    with home.sessions() as session:
        tenant = new_tenant(session)
        dataset = new_dataset(session, tenant, epsilon_cap=10.0)
        return [
            reserve(session, tenant, dataset.id, 0.01, 1e-7, None, {}, iterations=1).id
            for _ in range(count)
        ]


def sent_long_ago(home: Home) -> None:
    """Ages every sent message by an hour: past any sweep's patience."""
    with home.sessions() as session, write_transaction(session):
        session.execute(
            update(JobMessage)
            .where(JobMessage.state == "sent")
            .values(sent_at=utcnow().replace(year=2000))
        )


def deliver_all(courier: Courier) -> int:
    sent = total = 0
    while sent := courier.deliver():
        total += sent
    return total


def test_jobs_waiting_long_in_the_queue_get_no_second_message(broker: Broker) -> None:
    jobs = queued_jobs(broker.home, 100)
    assert deliver_all(broker.courier) == 100
    sent_long_ago(broker.home)
    reports = [broker.sweep() for _ in range(3)]
    assert [r.checked for r in reports] == [100, 100, 100]  # it did look, three times
    assert [r.requeued for r in reports] == [(), (), ()]
    assert broker.messages() == Counter(dict.fromkeys(jobs, 1))
    assert all(broker.home.events(job, "requeued") == [] for job in jobs)


def test_lost_messages_are_sent_again_within_two_sweeps_and_once(
    broker: Broker, own_redis: OwnRedis
) -> None:
    jobs = queued_jobs(broker.home, 14)
    deliver_all(broker.courier)
    sent_long_ago(broker.home)
    broker.lose_everything(own_redis)
    assert broker.messages() == Counter()
    first = broker.sweep()
    assert first.requeued == ()  # one look may fall between a take and its record
    second = broker.sweep()
    assert sorted(second.requeued) == sorted((job, QUEUED_LOST) for job in jobs)
    assert broker.messages() == Counter(dict.fromkeys(jobs, 1))
    sent_long_ago(broker.home)
    assert [broker.sweep().requeued for _ in range(2)] == [(), ()]
    assert broker.messages() == Counter(dict.fromkeys(jobs, 1))
    assert all(broker.home.events(job, "requeued") == [{"reason": QUEUED_LOST}] for job in jobs)


def take_and_die(url: str) -> None:
    """A process that takes one message off ``cpu`` (late ack) and is killed holding it."""
    code = (
        "import os, signal\n"
        "from kombu import Connection\n"
        f"with Connection({url!r}) as connection:\n"
        "    queue = connection.SimpleQueue('cpu', no_ack=False)\n"
        "    queue.get(timeout=10)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, check=False)
    assert done.returncode == -9


def test_a_message_in_a_dead_workers_hands_is_replaced_and_its_copy_dropped(
    own_redis: OwnRedis, home: Home
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    client.flushdb()
    courier = home.courier(own_redis.url)
    broker = Broker("redis", own_redis.url, home, courier)
    (job,) = queued_jobs(home, 1)
    deliver_all(courier)
    take_and_die(own_redis.url)
    assert client.llen("cpu") == 0 and client.hlen("unacked") == 1
    sent_long_ago(home)
    # Taken just now: its worker may be starting it.
    assert broker.sweep(stale_after_s=30).requeued == ()
    time.sleep(1.0)
    assert broker.sweep(stale_after_s=1).requeued == ((job, TAKEN_BY_DEAD_WORKER),)
    assert client.hlen("unacked") == 0
    assert broker.messages() == Counter({job: 1})
    assert json.loads(client.lindex("cpu", 0))["headers"]["id"] == f"{job}.2"


def test_a_running_job_whose_worker_died_is_sent_again_unless_its_message_waits(
    broker: Broker, own_redis: OwnRedis
) -> None:
    (job,) = queued_jobs(broker.home, 1)
    deliver_all(broker.courier)
    with broker.home.sessions() as session:
        update_progress(session, job, iteration=0, phase="starting")
        silence(session, job, 120)
    # Its message still waits in the queue (say, replaced earlier and no worker free yet).
    assert [broker.sweep().requeued for _ in range(3)] == [(), (), ()]
    broker.lose_everything(own_redis)  # the worker took it and died; no copy left anywhere
    assert broker.sweep().requeued == ()
    assert broker.sweep().requeued == ((job, RUNNING_LOST),)
    assert broker.messages() == Counter({job: 1})
    assert broker.sweep().requeued == ()  # the replacement waits for a free worker


def test_the_outbox_keeps_a_message_the_broker_refused_and_sends_it_once_back(
    own_redis: OwnRedis, home: Home
) -> None:
    courier = home.courier(own_redis.url)
    broker = Broker("redis", own_redis.url, home, courier)
    redis.Redis.from_url(own_redis.url).flushdb()
    (job,) = queued_jobs(home, 1)
    own_redis.stop()
    try:
        with pytest.raises(BrokerRefused):
            courier.deliver()
    finally:
        own_redis.start()
    assert deliver_all(courier) == 1
    assert broker.messages() == Counter({job: 1})
    # A sender that died after sending, before marking it sent: the next one finds the
    # message in the broker and only marks it.
    (other,) = queued_jobs(home, 1)
    with home.sessions() as session:
        (claimed,) = claim_outgoing(session, job_id=other, lease_s=0.0)
    courier.send(claimed.job_id, claimed.queue, claimed.task_id)
    assert deliver_all(courier) == 1
    assert broker.messages() == Counter({job: 1, other: 1})


def test_the_sweeper_thread_sends_the_outbox_until_stopped(broker: Broker) -> None:
    (job,) = queued_jobs(broker.home, 1)
    sweeper = Sweeper(
        broker.home.sessions,
        broker.courier,
        broker.finder,
        interval_s=0.05,
        stale_after_s=60,
    )
    sweeper.start()
    try:
        wait_for("the job's message", lambda: broker.messages()[job] == 1)
    finally:
        sweeper.stop()
    assert broker.messages() == Counter({job: 1})
