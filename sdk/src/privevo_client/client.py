"""The synchronous client."""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Iterator, Mapping
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


class Client:
    """A client of one privevo server, for one API key (one tenant).

    Args:
        base_url: the server, e.g. ``https://privevo.example.com``.
        api_key: a key made with ``privevo keys create``; sent as a Bearer token.
        timeout: seconds, or an ``httpx.Timeout``, per request (an upload's whole body is not
            bounded by it, each read and write is).
        max_retries: retries of a request after a 429, 502, 503, 504 or a connection error
            (an upload only after a 429, 503 or a connection never made).
        backoff: the first retry waits between ``backoff / 2`` and ``backoff`` seconds; each
            further one twice as long (at most 8 s), or the server's Retry-After if longer.

    Use as a context manager, or call :meth:`close`.
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
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": _core.USER_AGENT},
            timeout=timeout,
        )
        self._policy = _core.RetryPolicy(max_retries=max_retries, backoff_s=backoff)
        self._rng = random.Random()
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: _core.Call, *, stream: bool = False) -> httpx.Response:
        """Sends ``call``, retrying per the policy; returns a response with status < 400.

        Raises:
            PrivevoAPIError: the server's error (a subclass by status).
            PrivevoConnectionError: no answer after every retry.
        """
        attempt = 0
        while True:
            try:
                with call.request(self._http) as request:
                    response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                if not self._policy.retries_error(call, exc, attempt):
                    raise PrivevoConnectionError(
                        f"{call.method} {call.path}: {type(exc).__name__}: {exc}"
                    ) from exc
                time.sleep(self._policy.delay(attempt, None, self._rng))
                attempt += 1
                continue
            if response.status_code < 400:
                return response
            response.read()
            response.close()
            if not self._policy.retries_status(call, response.status_code, attempt):
                raise api_error(response.status_code, response.content, conflict=call.conflict)
            time.sleep(self._policy.delay(attempt, _core.retry_after(response), self._rng))
            attempt += 1

    def _json(self, call: _core.Call) -> Any:
        return self._send(call).json()


class Datasets:
    """``client.datasets``: private datasets and their privacy budgets, and held-out data."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(
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
        """Uploads a private dataset, streaming it from disk, with its privacy budget cap; or,
        with ``role="heldout"``, held-out data to evaluate jobs on.

        Args:
            path: an image folder with one subfolder per label (zipped on the fly into a
                temporary file), or a ``.zip``, ``.npz``, ``.jsonl``, ``.csv`` or ``.parquet``.
            epsilon_cap: the most epsilon all jobs on this data may spend together; required
                for private data, refused for held-out data.
            name: a display name; default the file or folder name.
            modality: "image" or "text"; default inferred from ``path`` (required for parquet).
            delta_cap: the most delta all jobs may spend together; default the server's
                (1e-5). Private data only.
            text_column, label_column: columns of a text table.
            user_column: for user-level privacy, the column (tables) or array (npz) naming
                each record's user: the budget and every job then protect all records of one
                user. Fixed at upload; user-level and record-level data never share a budget.
                Private data only.
            role: "private" (the input of jobs), or "heldout": real data kept apart from the
                private data, which only scores jobs that name it (``jobs.create(...,
                eval_dataset=...)``, NOT DP, for you only). Held-out data has no budget and
                is never a job's input.
            expires_at: when the server purges the dataset as a delete does (an aware
                datetime in the future); the budget and its history stay.

        Raises:
            ValueError: private data without ``epsilon_cap``, held-out data with a cap or a
                user column, or a naive ``expires_at`` (nothing is sent).
            InvalidRequest: the file is unreadable, of an unsupported type, or (with
                ``user_column``) a record names no user.
            PayloadTooLarge: it exceeds the server's upload limit.
            Conflict: the data shares records with data of the same unit uploaded before
                under a smaller budget cap (an upload sharing any record joins that budget).
        """
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
            return Dataset.model_validate(self._client._json(_core.upload_call(path, form)))
        with tempfile.TemporaryDirectory(prefix="privevo-upload-") as scratch:
            archive = Path(scratch, "images.zip")
            zip_folder(path, archive)
            return Dataset.model_validate(self._client._json(_core.upload_call(archive, form)))

    def get(self, dataset_id: str) -> Dataset:
        call = _core.Call("GET", f"/v1/datasets/{_core.segment(dataset_id)}")
        return Dataset.model_validate(self._client._json(call))

    def list(self, *, page_size: int = 50) -> Iterator[Dataset]:
        """Every dataset of this tenant, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            params = _core.page_params(cursor, page_size)
            page = self._client._json(_core.Call("GET", "/v1/datasets", params=params))
            yield from (Dataset.model_validate(item) for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def delete(self, dataset_id: str) -> None:
        """Deletes the private data and its caches; the budget already spent stays spent."""
        self._client._send(_core.Call("DELETE", f"/v1/datasets/{_core.segment(dataset_id)}"))

    def budget(self, dataset_id: str) -> Budget:
        """The dataset's privacy budget (held-out data has none: :class:`NotFound`)."""
        call = _core.Call("GET", f"/v1/datasets/{_core.segment(dataset_id)}/budget")
        return Budget.model_validate(self._client._json(call))


class Jobs:
    """``client.jobs``: Private Evolution runs on an uploaded dataset."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _job(self, data: Any) -> Job:
        job = Job.model_validate(data)
        job._client = self._client
        return job

    def create(
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
    ) -> Job:
        """Reserves (epsilon, delta) from the dataset's budget and queues a PE job.

        Args:
            dataset: the dataset or its id.
            epsilon, delta: the job's privacy cost, reserved now, spent as it runs.
            iterations: T, the number of noisy releases.
            num_samples: synthetic samples in all; default the server's (2000).
            api: the variation API, e.g. "drawtext" or "grammar"; default the server's.
            idempotency_key: default a fresh uuid4 per call. All retries of this call send
                the same key, so a retried create never reserves twice.
            eval_dataset: held-out data (``datasets.upload(..., role="heldout")``) or its id
                to score the job against, NOT DP, for you only (:meth:`Job.evaluation`); it
                spends no budget.
            audit: run the job as an empirical privacy audit (:meth:`Job.audit`): True for
                the server's defaults, or ``{"canaries": m, "guesses": r, "seed": s}``.
                drawtext jobs on record-level data only. It spends the dataset's budget like
                any job: audit on a public stand-in (e.g. the MNIST test split uploaded as a
                dataset of its own) unless that is intended.
            **engine_fields: any other field of the server's job model (``embedding``,
                ``k``, ``label_fractions``, ``seed``, ...).

        Raises:
            BudgetExceeded: the job does not fit in what is left of the budget.
            InvalidRequest: a field is out of range or unknown; ``dataset`` is held-out data;
                ``eval_dataset`` is not held-out data of yours, differs in modality, image
                size or labels from the job's data, or shares records with it.
            NotFound: no such dataset for this tenant.
        """
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
        return self._job(self._client._json(call))

    def get(self, job_id: str) -> Job:
        return self._job(self._client._json(_core.Call("GET", f"/v1/jobs/{_core.segment(job_id)}")))

    def list(self, *, page_size: int = 50) -> Iterator[Job]:
        """Every job of this tenant, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            params = _core.page_params(cursor, page_size)
            page = self._client._json(_core.Call("GET", "/v1/jobs", params=params))
            yield from (self._job(item) for item in page["items"])
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def cancel(self, job_id: str) -> Job:
        """Asks the job to stop (best effort). A job that made any release is charged its whole
        reservation, one that made none is refunded; a finished job is returned unchanged."""
        call = _core.Call("POST", f"/v1/jobs/{_core.segment(job_id)}/cancel")
        return self._job(self._client._json(call))

    def events(self, job_id: str, *, after: int = 0, page_size: int = 100) -> Iterator[Event]:
        """The job's events with id above ``after``, oldest first."""
        cursor: int | None = after
        path = f"/v1/jobs/{_core.segment(job_id)}/events"
        while cursor is not None:
            params = _core.page_params(cursor, page_size)
            page = self._client._json(_core.Call("GET", path, params=params))
            yield from (Event.model_validate(item) for item in page["items"])
            cursor = page["next_cursor"]

    def audit(self, job_id: str) -> Audit:
        """A succeeded audit job's report: the lower bound on the epsilon its run leaked,
        next to the epsilon it claims (also ``audit.json`` in its result).

        Raises:
            NotFound: no such job, or the job is not an audit.
            Conflict: the job has not succeeded (yet).
        """
        return Audit.model_validate(self._client._json(_core.audit_call(job_id)))

    def evaluation(self, job_id: str) -> Evaluation:
        """NOT DP, yours only: a succeeded job's scores against its held-out data per
        iteration and the memorisation check of its final synthetic data.

        Raises:
            NotFound: no such job, the job names no held-out data, or the evaluation was
                deleted with one of its datasets.
            Conflict: the job has not succeeded (yet).
        """
        return Evaluation.model_validate(self._client._json(_core.evaluation_call(job_id)))

    def evaluation_report(self, job_id: str, path: str | Path) -> Path:
        """Saves a succeeded job's NOT DP report page (``report-not-dp.html``) to ``path``,
        readable by you only (0600): it shows private records. Raises as :meth:`evaluation`.
        """
        response = self._client._send(_core.evaluation_report_call(job_id))
        return _core.write_private_file(Path(path), response.content)

    def download(self, job_id: str, directory: str | Path) -> Path:
        """Fetches a succeeded job's result zip and extracts it into ``directory``.

        The result holds ``synthetic/``, ``privacy_report.json`` and ``samples/`` (and an
        audit job's ``audit.json``).

        Returns:
            ``directory``.

        Raises:
            Conflict: the job has not succeeded.
            UnsafeArchiveError: the zip has a member that would land outside ``directory``.
        """
        call = _core.Call("GET", f"/v1/jobs/{_core.segment(job_id)}/result")
        directory = Path(directory)
        with tempfile.TemporaryFile() as scratch:
            response = self._client._send(call, stream=True)
            try:
                for chunk in response.iter_bytes():
                    scratch.write(chunk)
            except httpx.TransportError as exc:
                raise PrivevoConnectionError(f"downloading job {job_id}: {exc}") from exc
            finally:
                response.close()
            scratch.seek(0)
            safe_extract(scratch, directory)
        return directory


class Job(BaseJob):
    """A job, bound to the client that fetched it."""

    _client: Client = PrivateAttr()

    def refresh(self) -> Self:
        """Updates this object from the server; returns it."""
        self._update(self._client.jobs.get(self.id))
        return self

    def wait(
        self,
        *,
        progress: bool = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        raise_on_failure: bool = True,
    ) -> Self:
        """Polls until the job is final, showing its progress on stderr; returns it.

        Args:
            progress: show iteration t/T, phase, epsilon spent and an ETA on stderr (the ETA
                comes from the timestamps of the job's iteration events, fetched as it runs).
            poll_interval: seconds between polls.
            timeout: seconds to wait at most; None: no limit.
            raise_on_failure: raise :class:`JobFailed` when it ends failed or canceled.

        Raises:
            JobFailed: it failed or was canceled (unless ``raise_on_failure`` is False).
            TimeoutError: it is not final after ``timeout`` seconds.
        """
        shown = _core.Progress() if progress else None
        eta = _core.Eta()
        deadline = _core.Deadline(timeout)
        try:
            while True:
                self.refresh()
                if shown is not None:
                    if not self.done:
                        events = self._client.jobs.events(self.id, after=eta.cursor)
                        eta.add(events, time.monotonic())
                    shown.show(self, eta.seconds_left(self.iterations, time.monotonic()))
                if self.done:
                    break
                if deadline.left() <= 0:
                    raise deadline.expired_error(self)
                time.sleep(max(0.0, min(poll_interval, deadline.left())))
        finally:
            if shown is not None:
                shown.close()
        if raise_on_failure and self.status != "succeeded":
            raise JobFailed(self)
        return self

    def cancel(self) -> Self:
        """Asks the job to stop (best effort); updates this object."""
        self._update(self._client.jobs.cancel(self.id))
        return self

    def download(self, directory: str | Path) -> Path:
        """Extracts the job's result into ``directory`` (see ``Jobs.download``)."""
        return self._client.jobs.download(self.id, directory)

    def audit(self) -> Audit:
        """The audit job's report (see ``Jobs.audit``)."""
        return self._client.jobs.audit(self.id)

    def evaluation(self) -> Evaluation:
        """NOT DP, yours only: the job's scores against its held-out data (see
        ``Jobs.evaluation``)."""
        return self._client.jobs.evaluation(self.id)

    def evaluation_report(self, path: str | Path) -> Path:
        """Saves the job's NOT DP report page to ``path`` (see ``Jobs.evaluation_report``)."""
        return self._client.jobs.evaluation_report(self.id, path)
