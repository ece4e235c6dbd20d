"""The async client against the real server: the same surface, awaited."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from privevo_client import (
    AsyncClient,
    AsyncJob,
    BudgetExceeded,
    Conflict,
    InvalidRequest,
    JobFailed,
    NotFound,
    Unauthorized,
)

from tests.conftest import digits_28
from tests.sdk.conftest import write_digits_npz
from tests.sdk.proxy import flaky_proxy
from tests.servers import Server


def test_datasets_and_jobs(server: Server, alice_key: str, tmp_path: Path):
    data = write_digits_npz(tmp_path / "async.npz", 2, offset=110)

    async def scenario() -> None:
        async with AsyncClient(server.url, alice_key) as client:
            dataset = await client.datasets.upload(data, epsilon_cap=1.0)
            assert (dataset.name, dataset.record_count) == ("async", 20)
            assert await client.datasets.get(dataset.id) == dataset
            assert dataset.id in [d.id async for d in client.datasets.list(page_size=1)]

            job = await client.jobs.create(dataset, epsilon=0.7, iterations=1, num_samples=10)
            assert isinstance(job, AsyncJob) and job.status == "queued"
            assert [e.kind async for e in client.jobs.events(job.id)] == ["created"]
            assert job.id in [j.id async for j in client.jobs.list()]
            with pytest.raises(BudgetExceeded, match="left"):
                await client.jobs.create(dataset, epsilon=0.7)
            assert (await client.datasets.budget(dataset.id)).epsilon_reserved == 0.7

            await job.cancel()
            assert job.status == "canceled"
            with pytest.raises(JobFailed, match="canceled"):
                await job.wait(progress=False)
            assert (await job.refresh()).done
            await client.datasets.delete(dataset.id)
            with pytest.raises(NotFound):
                await client.datasets.get(dataset.id)

    asyncio.run(scenario())


def test_errors_and_retries(server: Server, alice_key: str, bob_key: str, tmp_path: Path):
    data = write_digits_npz(tmp_path / "d.npz", 1, offset=120)

    async def scenario() -> None:
        async with AsyncClient(server.url, "pev_wrong") as stranger:
            with pytest.raises(Unauthorized):
                await stranger.datasets.budget("anything")
        async with AsyncClient(server.url, alice_key) as alice:
            dataset = await alice.datasets.upload(data, epsilon_cap=1.0)
        async with AsyncClient(server.url, bob_key) as bob:
            with pytest.raises(NotFound):
                await bob.datasets.get(dataset.id)
        with flaky_proxy(server.url) as proxy:
            proxy.faults = [503, 504]
            async with AsyncClient(proxy.url, alice_key, backoff=0.01) as alice:
                job = await alice.jobs.create(dataset, epsilon=0.2, num_samples=10)
            assert len(proxy.seen) == 3 and len({s.idempotency_key for s in proxy.seen}) == 1
        async with AsyncClient(server.url, alice_key) as alice:
            assert (await alice.datasets.budget(dataset.id)).epsilon_reserved == 0.2
            await alice.jobs.cancel(job.id)

    asyncio.run(scenario())


def test_a_user_column_uploads_user_level_data(server: Server, alice_key: str, tmp_path: Path):
    digits = digits_28(2, offset=160)
    path = tmp_path / "scans.npz"
    np.savez(path, images=digits.images, labels=digits.labels, patient=np.arange(20) % 4)

    async def scenario() -> None:
        async with AsyncClient(server.url, alice_key) as client:
            dataset = await client.datasets.upload(path, epsilon_cap=1.0, user_column="patient")
            assert (dataset.privacy_unit, dataset.user_column) == ("user", "patient")
            with pytest.raises(InvalidRequest, match="no 'visitor' array"):
                await client.datasets.upload(path, epsilon_cap=1.0, user_column="visitor")

    asyncio.run(scenario())


def test_an_audit_job_and_its_report(server: Server, alice_key: str, bob_key: str, tmp_path: Path):
    data = write_digits_npz(tmp_path / "stand-in.npz", 2, offset=164)

    async def scenario() -> None:
        async with AsyncClient(server.url, alice_key) as alice:
            dataset = await alice.datasets.upload(data, epsilon_cap=1.0)
            audit = {"canaries": 40, "guesses": 10, "seed": 7}
            job = await alice.jobs.create(dataset, epsilon=0.5, num_samples=20, audit=audit)
            assert job.spec["audit"] == audit
            with pytest.raises(Conflict, match="once it has succeeded"):
                await job.audit()
            async with AsyncClient(server.url, bob_key) as bob:
                with pytest.raises(NotFound):
                    await bob.jobs.audit(job.id)
            await job.cancel()

    asyncio.run(scenario())
