"""The asynchronous client: the surface of :mod:`privevo_client.client` with ``await``."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import httpx
from pydantic import PrivateAttr

from privevo_client import _core
from privevo_client.archive import safe_extract, zip_folder
from privevo_client.errors import JobFailed, PrivevoConnectionError, api_error
from privevo_client.models import Audit, BaseJob, Budget, Dataset, Evaluation, Event


class AsyncClient:
    """The async twin of :class:`privevo_client.Client`; same arguments, same behaviour.

    Use as ``async with AsyncClient(...) as client``, or ``await client.close()``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = _core.DEFAULT_TIMEOUT,
        max_retries: int = 3,
        backoff: float = 0.5,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": _core.USER_AGENT},
            timeout=timeout,
        )
        self._policy = _core.RetryPolicy(max_retries=max_retries, backoff_s=backoff)
        self._rng = random.Random()
        self.datasets = AsyncDatasets(self)
        self.jobs = AsyncJobs(self)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, call: _core.Call, *, stream: bool = False) -> httpx.Response:
        """Sends ``call``, retrying per the policy; see ``Client._send``."""
        attempt = 0
        while True:
            try:
                with call.request(self._http) as request:
                    response = await self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not self._policy.retries_error(call, exc, attempt):
                    raise PrivevoConnectionError(
                        f"{call.method} {call.path}: {type(exc).__name__}: {exc}"
                    ) from exc
                await asyncio.sleep(self._policy.delay(attempt, None, self._rng))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            if not self._policy.retries_status(call, response.status_code, attempt):
                raise api_error(response.status_code, response.content, conflict=call.conflict)
            await asyncio.sleep(self._policy.delay(attempt, _core.retry_after(response), self._rng))
            attempt += 1

    async def _json(self, call: _core.Call) -> Any:
        return (await self._send(call)).json()


class AsyncDatasets:
    """``client.datasets``; see :class:`privevo_client.client.Datasets`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def upload(
        self,
        path: str | Path,
        *,
        epsilon_cap: float | None = None,
        name: str | None = None,
        modality: Literal["image", "text"] | None = None,
        delta_cap: float | None = None,
        text_column: str = "text",
        label_column: str = "label",
        user_column: str | None = None,
        role: Literal["private", "heldout"] = "private",
        expires_at: datetime | None = None,
    ) -> Dataset:
        """Uploads a private dataset, or held-out data; see ``Datasets.upload``."""
        path = Path(path)
        form = _core.upload_form(
            path,
            name=name,
            modality=modality,
            epsilon_cap=epsilon_cap,
            delta_cap=delta_cap,
            text_column=text_column,
            label_column=label_column,
            user_column=user_column,
            role=role,
            expires_at=expires_at,
        )
        if not path.is_dir():
            return Dataset.model_validate(await self._client._json(_core.upload_call(path, form)))
        with tempfile.TemporaryDirectory(prefix="privevo-upload-") as scratch:
            archive = Path(scratch, "images.zip")
            await asyncio.to_thread(zip_folder, path, archive)
            return Dataset.model_validate(
                await self._client._json(_core.upload_call(archive, form))
            )

    async def get(self, dataset_id: str) -> Dataset:
        call = _core.Call("GET", f"/v1/datasets/{_core.segment(dataset_id)}")
        return Dataset.model_validate(await self._client._json(call))

    async def list(self, *, page_size: int = 50) -> AsyncIterator[Dataset]:
        """Every dataset of this tenant (``async for``), fetched a page at a time."""
        cursor: str | None = None
        while True:
            params = _core.page_params(cursor, page_size)
            page = await self._client._json(_core.Call("GET", "/v1/datasets", params=params))
            for item in page["items"]:
                yield Dataset.model_validate(item)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def delete(self, dataset_id: str) -> None:
        call = _core.Call("DELETE", f"/v1/datasets/{_core.segment(dataset_id)}")
        await self._client._send(call)

    async def budget(self, dataset_id: str) -> Budget:
        call = _core.Call("GET", f"/v1/datasets/{_core.segment(dataset_id)}/budget")
        return Budget.model_validate(await self._client._json(call))


class AsyncJobs:
    """``client.jobs``; see :class:`privevo_client.client.Jobs`."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def _job(self, data: Any) -> AsyncJob:
        job = AsyncJob.model_validate(data)
        job._client = self._client
        return job

    async def create(
        self,
        dataset: str | Dataset,
        *,
        epsilon: float,
        delta: float = 1e-6,
        iterations: int = 4,
        num_samples: int | None = None,
        api: str | None = None,
        idempotency_key: str | None = None,
        eval_dataset: str | Dataset | None = None,
        audit: bool | Mapping[str, Any] = False,
        **engine_fields: Any,
    ) -> AsyncJob:
        """Reserves budget and queues a PE job; see ``Jobs.create``."""
        dataset_id = dataset.id if isinstance(dataset, Dataset) else dataset
        call = _core.create_job_call(
            dataset_id,
            eval_dataset_id=eval_dataset.id if isinstance(eval_dataset, Dataset) else eval_dataset,
            audit=audit,
            epsilon=epsilon,
            delta=delta,
            iterations=iterations,
            num_samples=num_samples,
            api=api,
            idempotency_key=idempotency_key,
            engine_fields=engine_fields,
        )
        return self._job(await self._client._json(call))

    async def get(self, job_id: str) -> AsyncJob:
        call = _core.Call("GET", f"/v1/jobs/{_core.segment(job_id)}")
        return self._job(await self._client._json(call))

    async def list(self, *, page_size: int = 50) -> AsyncIterator[AsyncJob]:
        """Every job of this tenant (``async for``), fetched a page at a time."""
        cursor: str | None = None
        while True:
            params = _core.page_params(cursor, page_size)
            page = await self._client._json(_core.Call("GET", "/v1/jobs", params=params))
            for item in page["items"]:
                yield self._job(item)
            cursor = page["next_cursor"]
            if cursor is None:
                return

    async def cancel(self, job_id: str) -> AsyncJob:
        call = _core.Call("POST", f"/v1/jobs/{_core.segment(job_id)}/cancel")
        return self._job(await self._client._json(call))

    async def events(
        self, job_id: str, *, after: int = 0, page_size: int = 100
    ) -> AsyncIterator[Event]:
        """The job's events with id above ``after``, oldest first (``async for``)."""
        cursor: int | None = after
        path = f"/v1/jobs/{_core.segment(job_id)}/events"
        while cursor is not None:
            params = _core.page_params(cursor, page_size)
            page = await self._client._json(_core.Call("GET", path, params=params))
            for item in page["items"]:
                yield Event.model_validate(item)
            cursor = page["next_cursor"]

    async def audit(self, job_id: str) -> Audit:
        """A succeeded audit job's report; see ``Jobs.audit``."""
        return Audit.model_validate(await self._client._json(_core.audit_call(job_id)))

    async def evaluation(self, job_id: str) -> Evaluation:
        """NOT DP, yours only: a job's scores against its held-out data; see
        ``Jobs.evaluation``."""
        return Evaluation.model_validate(await self._client._json(_core.evaluation_call(job_id)))

    async def evaluation_report(self, job_id: str, path: str | Path) -> Path:
        """Saves a job's NOT DP report page, 0600; see ``Jobs.evaluation_report``."""
        response = await self._client._send(_core.evaluation_report_call(job_id))
        return await asyncio.to_thread(_core.write_private_file, Path(path), response.content)

    async def download(self, job_id: str, directory: str | Path) -> Path:
        """Fetches and safely extracts a succeeded job's result; see ``Jobs.download``."""
        call = _core.Call("GET", f"/v1/jobs/{_core.segment(job_id)}/result")
        directory = Path(directory)
        with tempfile.TemporaryFile() as scratch:
            response = await self._client._send(call, stream=True)
            try:
                async for chunk in response.aiter_bytes():
                    scratch.write(chunk)
            except httpx.TransportError as exc:
                raise PrivevoConnectionError(f"downloading job {job_id}: {exc}") from exc
            finally:
                await response.aclose()
            scratch.seek(0)
            await asyncio.to_thread(safe_extract, scratch, directory)
        return directory


class AsyncJob(BaseJob):
    """A job, bound to the async client that fetched it."""

    _client: AsyncClient = PrivateAttr()

    async def refresh(self) -> Self:
        self._update(await self._client.jobs.get(self.id))
        return self

    async def wait(
        self,
        *,
        progress: bool = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> Self:
        """Polls until the job is final; see ``Job.wait``."""
        shown = _core.Progress() if progress else None
        eta = _core.Eta()
        deadline = _core.Deadline(timeout)
        try:
            while True:
                await self.refresh()
                if shown is not None:
                    if not self.done:
                        events = self._client.jobs.events(self.id, after=eta.cursor)
                        eta.add([event async for event in events], time.monotonic())
                    shown.show(self, eta.seconds_left(self.iterations, time.monotonic()))
                if self.done:
                    break
                if deadline.left() <= 0:
                    raise deadline.expired_error(self)
                await asyncio.sleep(max(0.0, min(poll_interval, deadline.left())))
        finally:
            if shown is not None:
                shown.close()
        if raise_on_failure and self.status != "succeeded":
            raise JobFailed(self)
        return self

    async def cancel(self) -> Self:
        self._update(await self._client.jobs.cancel(self.id))
        return self

    async def download(self, directory: str | Path) -> Path:
        return await self._client.jobs.download(self.id, directory)

    async def audit(self) -> Audit:
        return await self._client.jobs.audit(self.id)

    async def evaluation(self) -> Evaluation:
        return await self._client.jobs.evaluation(self.id)

    async def evaluation_report(self, path: str | Path) -> Path:
        return await self._client.jobs.evaluation_report(self.id, path)
