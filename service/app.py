"""The FastAPI gateway: thin routes that authenticate, validate, persist and enqueue.

Every dataset, job and result belongs to the tenant of the API key that made it; any other
tenant gets 404 on every route. PE itself runs in Celery workers; the gateway imports none of
their code and sends each job's task by name to the queue stored on its row
(:mod:`service.broker`), through the outbox: a create commits the job's message with its
reservation, and a courier thread sends it (:mod:`service.outbox`), so a create never waits on
the broker and a committed job is always enqueued.

Three threads run beside the routes while the app lives: that courier, the sweep of upload
folders left by a gateway that died mid-upload (:func:`service.uploads.sweep_orphan_uploads`),
at start and every :data:`UPLOAD_SWEEP_S` seconds, and the sweep purging datasets past their
expiry (:func:`sweep_expired_datasets`), every :data:`EXPIRY_SWEEP_S` seconds.
"""

import hmac
import io
import logging
import secrets
import time
import zipfile
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from pe_core.checks import JobRefused, check_job
from pe_core.errors import PrivevoError
from pe_core.samples import DataShape
from service import db, guards
from service.audits import AuditUnavailable, check_audit, read_audit
from service.broker import (
    MessageFinder,
    make_celery,
    message_finder,
    prepare_broker,
    queue_for,
    send_job,
)
from service.console import mount_console
from service.crypto import DecryptionError, KeyUnwrapError, NoDataKeyError
from service.db.models import new_id
from service.evaluation import (
    EvaluationUnavailable,
    check_eval_dataset,
    read_evaluation,
    read_report,
)
from service.keys import AUDIT_REPORT, evaluation_prefix, result_prefix
from service.outbox import DELIVER_INTERVAL_S, Courier, Periodic, Send, deliver_pending
from service.schemas import (
    AuditPublic,
    BudgetPublic,
    DatasetForm,
    DatasetList,
    DatasetPublic,
    ErrorBody,
    EvaluationPublic,
    EventList,
    EventPublic,
    JobCreate,
    JobList,
    JobPublic,
    ValidationErrorBody,
)
from service.security import parse_bearer
from service.settings import Settings, Stores, open_storage
from service.storage import StorageUnavailableError, copy_object
from service.uploads import (
    ReceivedForm,
    UploadedFile,
    UploadRejected,
    receive_form,
    receiving,
    sweep_orphan_uploads,
    validate_in_child_process,
)

logger = logging.getLogger(__name__)

UPLOAD_SWEEP_S = 600.0
"""Seconds between the gateway's sweeps of orphan upload folders (the first runs at start)."""

EXPIRY_SWEEP_S = 300.0
"""Seconds between the gateway's sweeps of expired datasets (the first runs at start)."""

RESULT_PARTS = ("synthetic/", "privacy_report.json", "report.html", "samples/", AUDIT_REPORT)
"""What a result zip holds (``audit.json`` for an audit job): never ``.state/`` (private) nor
``eval/`` (not DP)."""

REPORT_HEADERS = {
    # The NOT DP page shows private records: saved, never rendered from the API's origin (no
    # scripts, no fetches even if it were), never kept by a cache.
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
    "sandbox",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

# Bytes a form may add to its file (boundaries, part headers, the small fields): a body declaring
# more than the file limit plus this is refused before it is read.
_FORM_OVERHEAD = 1024 * 1024
SSE_POLL_S = 0.5
MAX_EVENT_ID = 2**63 - 1
"""The largest event cursor or Last-Event-ID asked for (a 64-bit integer); above, 422."""
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
"""Methods counted by name in /metrics; any other is counted as "other" (labels stay bounded
whatever clients send)."""
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ValidationErrorBody if code == 422 else ErrorBody}
    for code in (400, 401, 404, 409, 413, 415, 422, 503)
}
_QUOTA_ERRORS: dict[int | str, dict[str, Any]] = {**_ERRORS, 429: {"model": ErrorBody}}
"""The errors of a create that a tenant's quota may refuse (429, with Retry-After)."""


def celery_sender(settings: Settings) -> tuple[Send, MessageFinder]:
    """Sends job tasks by name through a producer on the settings' broker, and finds them
    there (see :class:`service.outbox.Courier`)."""
    celery = make_celery(settings)
    prepare_broker(celery)

    def send(job_id: str, queue: str, task_id: str) -> None:
        send_job(celery, job_id, queue, task_id)

    return send, message_finder(celery)


def create_app(settings: Settings | None = None, *, enqueue: Send | None = None) -> FastAPI:
    """Builds the gateway for ``settings`` (default: from the environment); ``enqueue``
    replaces the broker (its messages are then sent without looking for earlier ones)."""
    settings = settings or Settings()
    engine = db.make_engine(settings.resolved_database_url)
    sessions = db.make_session_factory(engine)
    stores = open_storage(settings, sessions)
    storage = stores.storage
    send, finder = celery_sender(settings) if enqueue is None else (enqueue, None)
    courier = Courier(sessions, send, finder)
    deliverer = Periodic("outbox-courier", lambda: deliver_pending(courier), DELIVER_INTERVAL_S)

    def in_use(keys: Collection[str]) -> set[str]:
        with sessions() as s:
            return db.uploads_in_use(s, keys)

    janitor = Periodic(
        "orphan-upload-sweeper",
        lambda: sweep_orphan_uploads(
            stores.work,
            in_use,
            store=storage if stores.staged else None,
            forget=None if stores.keys is None else stores.keys.forget_upload,
        ),
        UPLOAD_SWEEP_S,
    )
    reaper = Periodic(
        "expired-dataset-sweeper",
        lambda: sweep_expired_datasets(sessions, stores),
        EXPIRY_SWEEP_S,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        deliverer.start()
        janitor.start()
        reaper.start()
        yield
        deliverer.stop()
        janitor.stop()
        reaper.stop()
        engine.dispose()

    app = FastAPI(
        title="privevo",
        version="1",
        summary="Differentially private synthetic data with Private Evolution",
        lifespan=lifespan,
        docs_url=None,  # service.console serves /docs and /redoc from local files
        redoc_url=None,
    )
    app.state.sessions = sessions
    app.state.storage = storage
    app.state.deliverer = deliverer
    # Every body but an upload's (whose route streams it under its own limit) is refused past
    # max_body_bytes before it is parsed: a 50 MB JSON body once took 2 s of a worker thread.
    guards.install(
        app, max_header_bytes=settings.max_header_bytes, max_body_bytes=settings.max_body_bytes
    )
    _install_error_handlers(app, settings)
    _install_metrics(app, sessions, settings)
    _add_routes(app, settings, sessions, stores, deliverer)
    mount_console(app, storage, upload_limit=_upload_backstop(settings))
    return app


def _upload_backstop(settings: Settings) -> int:
    """The framework's body limit on the upload routes: a backstop at twice their own.

    Those routes read the body as a stream and refuse it themselves, with a message naming
    the limit, by its Content-Length and as the file passes ``max_upload_bytes``. Starlette's
    limit replaces any answer to a body declared above it with a bare 413, so it must sit
    above theirs to let their message through.
    """
    return 2 * (settings.max_upload_bytes + _FORM_OVERHEAD)


def _install_metrics(app: FastAPI, sessions: sessionmaker[Session], settings: Settings) -> None:
    """Prometheus metrics on ``GET /metrics``: requests by method, route and status, their
    latency, and jobs by status. One registry per app, so several apps can live in one process.

    They count every tenant's requests and jobs, so they are the operator's alone: served
    only with ``Authorization: Bearer <PRIVEVO_METRICS_TOKEN>``, and not at all (404) when no
    token is set. Labels are bounded whatever clients send: route templates (never raw
    paths), known methods (any other counts as "other") and status codes."""
    registry = CollectorRegistry()
    requests = Counter(
        "privevo_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
    )
    latency = Histogram(
        "privevo_http_request_seconds", "HTTP request latency", ["route"], registry=registry
    )
    jobs = Gauge("privevo_jobs", "Jobs by status", ["status"], registry=registry)

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        template = getattr(route, "path", "unmatched")
        method = request.method if request.method in METHODS else "other"
        requests.labels(method, template, str(response.status_code)).inc()
        latency.labels(template).observe(time.perf_counter() - started)
        return response

    token = settings.metrics_token

    @app.get("/metrics", operation_id="metrics", tags=["health"], include_in_schema=False)
    def metrics(authorization: Annotated[str | None, Header()] = None) -> Response:
        if token is None:
            return JSONResponse(
                {"detail": "metrics are off: the operator sets PRIVEVO_METRICS_TOKEN"}, 404
            )
        given = parse_bearer(authorization) or ""
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            return JSONResponse(
                {"detail": "metrics need the operator's token: Authorization: Bearer <token>"},
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        with sessions() as s, db.read_transaction(s):
            counts = dict(
                s.execute(select(db.Job.status, func.count()).group_by(db.Job.status)).all()
            )
        for status in db.JOB_STATUSES:
            jobs.labels(status).set(counts.get(status, 0))
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _install_error_handlers(app: FastAPI, settings: Settings) -> None:
    statuses: list[tuple[type[Exception], int]] = [
        (db.NotFound, 404),
        (db.BudgetExceeded, 409),
        (db.BudgetCapConflict, 409),
        (db.IdempotencyConflict, 409),
        (db.JobFinished, 409),
        (EvaluationUnavailable, 409),
        (AuditUnavailable, 409),
        (StorageUnavailableError, 503),
        # A stored object that does not decrypt is the operator's to look into (a shredded
        # or lost key, an altered object), never the client's.
        (DecryptionError, 503),
        (KeyUnwrapError, 503),
        (NoDataKeyError, 503),
        (db.WrongRole, 422),
        (db.InvalidCursor, 400),
        (JobRefused, 422),
        (PrivevoError, 400),
    ]
    for error, status in statuses:

        def handler(request: Request, exc: Exception, status: int = status) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)

        app.add_exception_handler(error, handler)

    def rejected(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UploadRejected)
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code)

    app.add_exception_handler(UploadRejected, rejected)

    def over_quota(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=429,
            headers={"Retry-After": str(settings.quota_retry_after_s)},
        )

    app.add_exception_handler(db.QuotaExceeded, over_quota)


def _add_routes(
    app: FastAPI,
    settings: Settings,
    sessions: sessionmaker[Session],
    stores: Stores,
    deliverer: Periodic,
) -> None:
    storage, work, keys = stores.storage, stores.work, stores.keys

    def delete_everywhere(prefix: str) -> None:
        _delete_everywhere(stores, prefix)

    def session() -> Iterator[Session]:
        with sessions() as s:
            yield s

    Db = Annotated[Session, Depends(session)]

    def tenant(s: Db, authorization: Annotated[str | None, Header()] = None) -> str:
        key = parse_bearer(authorization)
        found = None if key is None else db.tenant_for_api_key(s, key)
        if found is None:
            raise _UnauthorizedError
        return found.id

    Tenant = Annotated[str, Depends(tenant)]

    @app.exception_handler(_UnauthorizedError)
    def unauthorized(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "missing or unknown API key: send 'Authorization: Bearer <key>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    @app.get("/healthz", operation_id="healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", operation_id="readyz", tags=["health"])
    def readyz(s: Db) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            s.execute(text("SELECT 1"))
            s.rollback()
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            checks["database"] = f"error: {type(exc).__name__}"
        try:
            # Through the backend itself: the probe holds no data, so no data key.
            probe = f"readyz/{secrets.token_hex(8)}"
            with stores.backend.open_write(probe) as handle:
                handle.write(b"ok")
            stores.backend.delete_prefix(probe)
            checks["storage"] = "ok"
        except Exception as exc:
            checks["storage"] = f"error: {type(exc).__name__}"
        ready = all(value == "ok" for value in checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
            headers={} if ready else {"Retry-After": str(guards.RETRY_AFTER_S)},
        )

    @app.post(
        "/v1/datasets",
        status_code=201,
        operation_id="createDataset",
        tags=["datasets"],
        responses=_QUOTA_ERRORS,
        openapi_extra={"requestBody": DatasetForm.request_body()},
        max_body_size=_upload_backstop(settings),
    )
    async def create_dataset(request: Request, s: Db, owner: Tenant) -> DatasetPublic:
        """Uploads a private dataset with its privacy budget cap, or held-out data.

        With ``role=heldout`` the dataset is real data kept apart from the private data, which
        only evaluates jobs (NOT DP, owner only; a job names it as ``eval_dataset_id``): it has
        no budget and takes no caps, is never a job's private input, and never joins or
        merges budgets.

        With ``user_column`` the dataset is user-level: every record must name its user, and
        its budget and jobs protect all records of one user; without, one record. An upload
        sharing any record (decoded content, not label, however the file was saved) with
        datasets of the tenant of the same unit, deleted ones included, joins their budget and
        cannot raise its cap (409); otherwise it gets a budget of its own. Record-level and
        user-level data never share a budget. Caps above the server's maximum are refused
        (422). An upload that would take the tenant's stored data past its quota is refused
        (429, with Retry-After)."""
        # The body is parsed as it arrives, not spooled first: the file goes straight into
        # storage, refused (413) as soon as it passes the limit, and a wrong API key is refused
        # before any of it is read.
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > settings.max_upload_bytes + _FORM_OVERHEAD
        ):
            raise UploadRejected(
                413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes"
            )
        quota = db.storage_quota(s, owner, settings.max_stored_bytes)
        if quota is not None and declared is not None and declared.isdigit():
            # Refused before a byte is stored when the body alone would pass the quota (a
            # form adds at most its overhead to the file); the quota is checked again, exactly
            # and under the tenant's lock, once the file is stored.
            used, size = db.stored_bytes(s, owner), max(int(declared) - _FORM_OVERHEAD, 0)
            if used + size > quota:
                raise db.QuotaExceeded("max_stored_bytes", db.storage_message(used, size, quota))
        prefix = f"uploads/{secrets.token_hex(16)}"
        # With encryption at rest the dataset's id is chosen now, for the data key that
        # encrypts its upload before the dataset is committed.
        dataset_id = new_id("ds")
        # The upload is received and checked in the local work folder (its lock and the
        # validator need a file system), then copied to a remote storage before the dataset
        # is committed. Held until the dataset is committed or the folder deleted: a gateway
        # that dies before either leaves the folder to the orphan sweep.
        with receiving(work, prefix):
            received = await receive_form(
                request.stream(),
                request.headers.get("content-type"),
                work,
                prefix,
                max_bytes=settings.max_upload_bytes,
            )
            try:
                form, stored = _dataset_form(received)
                epsilon_cap, delta_cap = form.budget_caps
                if form.role == "private":
                    _check_caps(form, db.get_tenant(s, owner), settings)
                path = work.path(stored.key)
                summary = await run_in_threadpool(
                    validate_in_child_process,
                    path,
                    modality=form.modality,
                    text_column=form.text_column,
                    label_column=form.label_column,
                    user_column=form.user_column,
                    display_name=received.filename,
                    digest_key=db.tenant_digest_key(s, owner),
                )
                if keys is not None:
                    await run_in_threadpool(keys.create_for_upload, dataset_id, prefix)
                if stores.staged:
                    # Copied (encrypted, with encryption at rest) before the dataset is
                    # committed, so that a committed dataset's upload is always in the storage
                    # (a refusal below deletes the copy and shreds its key).
                    await run_in_threadpool(copy_object, work, storage, stored.key)
                dataset = db.create_dataset(
                    s,
                    owner,
                    name=form.name,
                    modality=summary.modality,
                    record_count=summary.record_count,
                    labels=list(summary.labels),
                    sha256=stored.sha256,
                    storage_path=stored.key,
                    epsilon_cap=epsilon_cap,
                    delta_cap=delta_cap,
                    text_column=form.text_column,
                    label_column=form.label_column,
                    image_shape=summary.image_shape,
                    digests=summary.record_digests,
                    user_column=form.user_column,
                    role=form.role,
                    size_bytes=stored.size,
                    max_stored_bytes=settings.max_stored_bytes,
                    dataset_id=dataset_id,
                    expires_at=form.expires_at,
                )
            except BaseException:
                if keys is not None:
                    keys.shred(dataset_id)
                delete_everywhere(prefix)  # nothing half-stored
                raise
            if stores.staged:
                work.delete_prefix(prefix)  # the staged copy: the storage holds the upload now
        return DatasetPublic.of(dataset, _budget(s, owner, dataset))

    @app.get("/v1/datasets", operation_id="listDatasets", tags=["datasets"], responses=_ERRORS)
    def list_datasets(
        s: Db,
        owner: Tenant,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> DatasetList:
        page = db.list_datasets(s, owner, cursor=cursor, limit=limit)
        items = [DatasetPublic.of(d, _budget(s, owner, d)) for d in page.items]
        return DatasetList(items=items, next_cursor=page.next_cursor)

    @app.get(
        "/v1/datasets/{dataset_id}", operation_id="getDataset", tags=["datasets"], responses=_ERRORS
    )
    def get_dataset(dataset_id: str, s: Db, owner: Tenant) -> DatasetPublic:
        dataset = db.get_dataset(s, owner, dataset_id)
        return DatasetPublic.of(dataset, _budget(s, owner, dataset))

    @app.get(
        "/v1/datasets/{dataset_id}/budget",
        operation_id="getDatasetBudget",
        tags=["datasets"],
        responses=_ERRORS,
    )
    def get_budget(dataset_id: str, s: Db, owner: Tenant) -> BudgetPublic:
        return BudgetPublic.of(db.remaining(s, owner, dataset_id))

    @app.delete(
        "/v1/datasets/{dataset_id}",
        status_code=204,
        operation_id="deleteDataset",
        tags=["datasets"],
        responses=_ERRORS,
    )
    def delete_dataset(dataset_id: str, s: Db, owner: Tenant) -> Response:
        """Removes the private files and every private-derived cache; the ledger stays.

        With encryption at rest the dataset's data key is deleted first, so any copy of its
        files left anywhere is unreadable. Deleting held-out data also deletes the NOT DP
        evaluations of the jobs it scored. Published results (DP) stay."""
        _purge_dataset(s, stores, owner, dataset_id)
        return Response(status_code=204)

    @app.post(
        "/v1/jobs",
        status_code=202,
        operation_id="createJob",
        tags=["jobs"],
        responses=_QUOTA_ERRORS,
    )
    def create_job(
        body: JobCreate,
        s: Db,
        owner: Tenant,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
    ) -> JobPublic:
        """Reserves the job's (epsilon, delta) against the dataset's budget and queues it.

        A job that does not say ``privacy_unit`` runs at its dataset's unit; one that names
        the other unit is refused (422). A job that makes any release is charged all it
        reserved, however it ends (stopping it early after watching its progress refunds
        nothing); one that ends before its first release is refunded.

        With ``eval_dataset_id`` the job is also scored, NOT DP, against that held-out dataset
        of the tenant (``GET /v1/jobs/{id}/evaluation``); refused (422) before anything is
        reserved when it is unknown, private data, of another shape or label set, or shares
        any record with the job's dataset. Held-out data is never a job's ``dataset_id``
        (422).

        With ``audit`` the job is an empirical privacy audit (``GET /v1/jobs/{id}/audit``),
        refused (422) before anything is reserved for an API without canaries (drawtext
        has them), user-level data, or more guesses than canaries. It is a run on the
        dataset and spends its budget like any job: audit on a public stand-in.

        A tenant with its quota of queued jobs (``PRIVEVO_MAX_QUEUED_JOBS`` or its own) is
        refused with 429 and Retry-After until some have started."""
        if body.no_privacy:
            raise PrivevoError("the service runs private jobs only; no_privacy is for the CLI")
        repeated = idempotency_key is not None and _job_with_key(s, owner, idempotency_key)
        # A retry finds its job's dataset even if it was deleted since, so that its spec reads
        # as the first one's did; reserve() then returns that job.
        dataset = db.get_dataset(s, owner, body.dataset_id, include_deleted=repeated)
        body = _at_dataset_unit(body, dataset)
        spec = body.model_dump(mode="json")
        if not repeated:
            # Refused (422) on the job, the operator's policy (largest delta, declared labels,
            # test noise) and the dataset's public schema (its unit included) alone, before any
            # of its budget is reserved; a retry of a created job gets that job back instead.
            if dataset.role != "private":
                raise db.WrongRole(db.budget.held_out_input(dataset.id))
            shape = _data_shape(dataset, body.labels)
            check_job(body, shape, policy=settings.policy)
            check_audit(body)
            if body.eval_dataset_id is not None:
                check_eval_dataset(s, owner, body.eval_dataset_id, dataset, shape, body.num_samples)
        job = db.reserve(
            s,
            owner,
            body.dataset_id,
            body.epsilon,
            body.delta,
            idempotency_key,
            spec,
            iterations=body.iterations,
            queue=queue_for(body),
            eval_dataset_id=body.eval_dataset_id,
            max_queued_jobs=settings.max_queued_jobs,
        )
        # Its message was committed with it; the courier sends it now, and again until the
        # broker takes it. A retry (repeated) wakes it too: its first send may have failed.
        deliverer.wake()
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobPublic.of(job)

    @app.get("/v1/jobs", operation_id="listJobs", tags=["jobs"], responses=_ERRORS)
    def list_jobs(
        s: Db,
        owner: Tenant,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> JobList:
        page = db.list_jobs(s, owner, cursor=cursor, limit=limit)
        return JobList(items=[JobPublic.of(j) for j in page.items], next_cursor=page.next_cursor)

    @app.get("/v1/jobs/{job_id}", operation_id="getJob", tags=["jobs"], responses=_ERRORS)
    def get_job(job_id: str, s: Db, owner: Tenant) -> JobPublic:
        return JobPublic.of(db.get_job(s, owner, job_id))

    @app.get(
        "/v1/jobs/{job_id}/events",
        operation_id="listJobEvents",
        tags=["jobs"],
        responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
    )
    def job_events(
        job_id: str,
        s: Db,
        owner: Tenant,
        cursor: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        accept: Annotated[str | None, Header()] = None,
        last_event_id: Annotated[int | None, Header(ge=0, le=MAX_EVENT_ID)] = None,
    ) -> Any:
        """A page of the job's events; with ``Accept: text/event-stream``, server-sent events
        from ``cursor`` (or ``Last-Event-ID``) on, until the job has ended.

        Event ids number the job's own events (1, 2, 3...), so they tell nothing of other
        jobs or tenants; an id is the cursor (and ``Last-Event-ID``) to resume after it."""
        page = db.list_events(s, owner, job_id, after=cursor, limit=limit)
        if accept is not None and "text/event-stream" in accept:
            start = last_event_id if last_event_id is not None else cursor
            return StreamingResponse(
                _event_stream(sessions, owner, job_id, start),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return EventList(
            items=[EventPublic.of(e) for e in page.events], next_cursor=page.next_after
        )

    @app.post(
        "/v1/jobs/{job_id}/cancel",
        status_code=202,
        operation_id="cancelJob",
        tags=["jobs"],
        responses=_ERRORS,
    )
    def cancel_job(job_id: str, s: Db, owner: Tenant) -> JobPublic:
        """Best effort. A job that made any release is charged its whole reservation, since
        when to stop was chosen after watching its results; one that made none is refunded."""
        return JobPublic.of(db.cancel(s, owner, job_id))

    @app.get(
        "/v1/jobs/{job_id}/result",
        operation_id="getJobResult",
        tags=["jobs"],
        responses={**_ERRORS, 200: {"content": {"application/zip": {}}}},
        response_class=StreamingResponse,
    )
    def job_result(job_id: str, s: Db, owner: Tenant) -> StreamingResponse:
        """A zip of synthetic/, privacy_report.json and samples/ (never private state)."""
        job = db.get_job(s, owner, job_id)
        if job.status != "succeeded":
            raise db.JobFinished(
                f"job {job_id} is {job.status}; its result exists once it has succeeded"
            )
        prefix = result_prefix(job_id)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for key in storage.list(prefix):
                relative = key[len(prefix) + 1 :]
                if relative.startswith(RESULT_PARTS):
                    with storage.open_read(key) as handle:
                        archive.writestr(relative, handle.read())
        buffer.seek(0)
        return StreamingResponse(
            buffer,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
        )

    @app.get(
        "/v1/jobs/{job_id}/audit", operation_id="getJobAudit", tags=["jobs"], responses=_ERRORS
    )
    def job_audit(job_id: str, s: Db, owner: Tenant) -> AuditPublic:
        """An audit job's report (``audit.json``, also in its result zip): the lower bound
        on the epsilon its run leaked, with its confidence, m, r and the canaries' design,
        next to the claimed epsilon. 404 for a job that is not an audit; 409 until the job
        has succeeded."""
        job = db.get_job(s, owner, job_id)
        return AuditPublic.model_validate(read_audit(storage, job))

    @app.get(
        "/v1/jobs/{job_id}/evaluation",
        operation_id="getJobEvaluation",
        tags=["jobs"],
        responses=_ERRORS,
    )
    def job_evaluation(job_id: str, s: Db, owner: Tenant, response: Response) -> EvaluationPublic:
        """NOT DP, owner only: the job's scores against its held-out dataset per iteration and
        the memorisation check of its final synthetic data, computed in the clear from
        held-out and private records. Never publish them with the synthetic data.

        404 when the job has no ``eval_dataset_id`` or its evaluation was deleted with one of
        its datasets; 409 until the job has succeeded."""
        job = db.get_job(s, owner, job_id)
        response.headers["Cache-Control"] = "no-store"
        return EvaluationPublic.model_validate(read_evaluation(s, storage, owner, job))

    @app.get(
        "/v1/jobs/{job_id}/evaluation/report",
        operation_id="getJobEvaluationReport",
        tags=["jobs"],
        responses={**_ERRORS, 200: {"content": {"text/html": {}}}},
        response_class=Response,
    )
    def job_evaluation_report(job_id: str, s: Db, owner: Tenant) -> Response:
        """NOT DP, owner only: ``report-not-dp.html``, the evaluation's curves and the
        memorisation check with the closest (synthetic, PRIVATE record) pairs side by side.
        It shows private records: a download (attachment), never cached, never shared.

        404 and 409 as for ``GET /v1/jobs/{id}/evaluation``."""
        job = db.get_job(s, owner, job_id)
        page = read_report(s, storage, owner, job)
        return Response(
            page,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="{job_id}-report-not-dp.html"',
                **REPORT_HEADERS,
            },
        )


def _delete_everywhere(stores: Stores, prefix: str) -> None:
    """Deletes ``prefix`` in the gateway's local work folder (an upload's staged copy) and in
    a separate storage (everything else, jobs' files included); the local copy first, since it
    goes even when a remote store is down."""
    if stores.staged:
        stores.work.delete_prefix(prefix)
    stores.storage.delete_prefix(prefix)


def _purge_dataset(s: Session, stores: Stores, owner: str, dataset_id: str) -> None:
    """Deletes a dataset as ``DELETE /v1/datasets/{id}`` and the expiry sweep do: marked
    deleted (no job may start on it, no write may make it a key), its data key shredded, then
    its upload, its jobs' state and evaluations, and those of the jobs it evaluated.

    Raises:
        NotFound: no such undeleted dataset of ``owner``.
    """
    _purge_files(s, stores, db.delete_dataset(s, owner, dataset_id))


def _purge_files(s: Session, stores: Stores, dataset: db.Dataset) -> None:
    """Shreds a deleted dataset's data key and deletes its files (see :func:`_purge_dataset`),
    then records the purge as finished; run again by the expiry sweep when a store failure
    cut it short (every step may be repeated)."""
    if stores.keys is not None:
        # Before the files: a purge cut short still leaves nothing readable.
        stores.keys.shred(dataset.id)
    _delete_everywhere(stores, dataset.storage_path.rsplit("/", 1)[0])
    _delete_everywhere(stores, f"datasets/{dataset.id}")
    for job in db.jobs_evaluated_on(s, dataset.tenant_id, dataset.id):
        _delete_everywhere(stores, evaluation_prefix(job.dataset_id, job.id))
    db.mark_purged(s, dataset.id)


def sweep_expired_datasets(sessions: sessionmaker[Session], stores: Stores) -> list[str]:
    """Purges every dataset past its ``expires_at``, as a delete would, and finishes the purges
    a store failure cut short (a delete's or an expiry's); returns the ids of the datasets it
    purged, either way.

    One dataset failing does not stop the others: it is tried again at the next sweep. One
    whose store failed after its key was shredded is unreadable already; its files go when the
    store answers again.
    """
    purged = []
    with sessions() as s:
        unfinished = db.unfinished_purges(s)
    for dataset in unfinished:
        with sessions() as s:
            try:
                _purge_files(s, stores, dataset)
            except (PrivevoError, OSError) as exc:
                logger.warning(
                    "could not finish purging dataset %s (%s); retrying at the next sweep",
                    dataset.id,
                    type(exc).__name__,
                )
                continue
        purged.append(dataset.id)
    with sessions() as s:
        expired = db.expired_datasets(s)
    for owner, dataset_id in expired:
        with sessions() as s:
            try:
                _purge_dataset(s, stores, owner, dataset_id)
            except db.NotFound:
                continue  # deleted meanwhile
            except (PrivevoError, OSError) as exc:
                logger.warning(
                    "could not purge expired dataset %s (%s); retrying at the next sweep",
                    dataset_id,
                    type(exc).__name__,
                )
                continue
        purged.append(dataset_id)
    if purged:
        logger.info("purged %d expired datasets", len(purged))
    return purged


def _event_stream(
    sessions: sessionmaker[Session], tenant_id: str, job_id: str, after: int
) -> Iterator[str]:
    """Server-sent events of one job, polled from the database, ending once the job has.

    A database outage ends the stream (its status is sent already, so no 503 can be): the
    client reconnects with ``Last-Event-ID`` and resumes after the last event it got.
    """
    while True:
        try:
            with sessions() as s:
                final = db.get_job(s, tenant_id, job_id).status in db.FINAL_STATUSES
                page = db.list_events(s, tenant_id, job_id, after=after, limit=100)
        except Exception as exc:
            if guards.is_outage(exc):
                return
            raise
        for event in page.events:
            body = EventPublic.of(event).model_dump_json()
            yield f"id: {event.seq}\nevent: {event.kind}\ndata: {body}\n\n"
            after = event.seq
        if page.next_after is None and final:
            return
        if page.next_after is None:
            time.sleep(SSE_POLL_S)


def _dataset_form(received: ReceivedForm) -> tuple[DatasetForm, UploadedFile]:
    """The upload's checked fields and file; errors are answered as FastAPI answers invalid
    form parameters (422, one entry per problem, located in the body)."""
    errors: list[dict[str, Any]] = []
    if received.file is None:
        errors.append(
            {"type": "missing", "loc": ("body", "file"), "msg": "Field required", "input": None}
        )
    # As FastAPI does for forms, a field sent empty counts as not sent.
    values = {name: value for name, value in received.fields.items() if value != ""}
    try:
        form = DatasetForm.model_validate(values)
    except ValidationError as exc:
        errors += [
            {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
        ]
    else:
        errors += [{**error, "loc": ("body", *error["loc"])} for error in form.role_problems()]
        if received.file is not None and not errors:
            return form, received.file
    raise RequestValidationError(errors)


def _check_caps(form: DatasetForm, tenant: db.Tenant, settings: Settings) -> None:
    """Refuses (422) budget caps above the tenant's own limits, or else the installation's
    (``PRIVEVO_MAX_EPSILON_CAP``, ``PRIVEVO_MAX_DELTA_CAP``)."""
    epsilon_cap, delta_cap = form.budget_caps
    limits = [
        ("epsilon_cap", epsilon_cap, tenant.max_epsilon_cap, settings.max_epsilon_cap),
        ("delta_cap", delta_cap, tenant.max_delta_cap, settings.max_delta_cap),
    ]
    problems = []
    for name, value, own, installation in limits:
        if value is None:
            continue
        limit, whose = (installation, "this installation's") if own is None else (own, "your")
        if value > limit:
            problems.append(
                f"{name}: {value:g} is above {whose} maximum of {limit:g}; upload with "
                f"{name} <= {limit:g}, or ask the operator for more"
            )
    if problems:
        raise UploadRejected(422, "; ".join(problems))


def _budget(s: Session, owner: str, dataset: db.Dataset) -> db.BudgetStatus | None:
    """Where a dataset's budget stands; None for held-out data, which has none."""
    return None if dataset.role == "heldout" else db.remaining(s, owner, dataset.id)


def _data_shape(dataset: db.Dataset, labels: list[str] | None) -> DataShape:
    """A dataset's public schema, with the job's declared label set where it has one."""
    return DataShape(
        modality=dataset.modality,  # type: ignore[arg-type]
        labels=tuple(labels if labels is not None else dataset.labels),
        image_shape=None if dataset.image_shape is None else tuple(dataset.image_shape),  # type: ignore[arg-type]
        has_users=dataset.user_column is not None,
    )


def _at_dataset_unit(body: JobCreate, dataset: db.Dataset) -> JobCreate:
    """The job with its dataset's unit of privacy where the job does not name one.

    The unit is fixed at upload, so a job on user-level data is user-level unless it says
    otherwise (and is then refused by ``check_job``); the spec stored with the job, which the
    worker runs, names the unit either way.
    """
    if "privacy_unit" in body.model_fields_set:
        return body
    return JobCreate.model_validate(
        {**body.model_dump(exclude_unset=True), "privacy_unit": dataset.privacy_unit}
    )


def _job_with_key(s: Session, tenant_id: str, key: str) -> bool:
    """Whether the tenant already created a job with this Idempotency-Key (a retry)."""
    with db.read_transaction(s):
        statement = select(db.Job.id).where(
            db.Job.tenant_id == tenant_id, db.Job.idempotency_key == key
        )
        return s.scalars(statement).first() is not None


class _UnauthorizedError(Exception):
    """No valid API key: answered with 401 and a hint."""
