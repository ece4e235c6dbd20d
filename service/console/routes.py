"""The web console's pages: sign in with an API key, datasets and their budgets, uploads, jobs
with live progress, results.

Every page is rendered on the server by Jinja2 with autoescaping, so a dataset name, an error
message or a synthetic text is shown as text, never markup. Pages carry a Content Security
Policy that allows scripts from this server only (one small static file follows a job's
progress), no inline script, no plugins and no framing. The pages are kept out of the OpenAPI
schema: they are not part of the API.

Every read and write goes through the public /v1 routes with the session's key
(:mod:`service.console.bridge`), so tenant isolation is the API's own: another tenant's id is a
404 here as it is there. Result files the API serves only as a zip (the HTML report, sample
grids, curves) are read from storage after the API has answered the job for this key.
"""

import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from service.console.bridge import ApiBridge
from service.console.forms import FormRefused, first_field
from service.console.sessions import (
    CSRF_FIELD,
    IDLE_S,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    ConsoleSession,
    SessionStore,
    new_token,
    tokens_match,
)
from service.console.web import NosniffStaticFiles, secured
from service.security import DISPLAY_PREFIX_LENGTH
from service.storage import ObjectNotFoundError, Storage

HERE = Path(__file__).parent
PREFIX = "/console"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Pages: this server's scripts and styles only, nothing inline, never framed."""
REPORT_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'self'; sandbox"
)
"""report.html is one self-contained page (inline styles, images as data URIs) and runs no
script: it may load nothing, and only the console may frame it, in a sandbox."""
SAMPLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.(png|md)")
RESOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TEXT_SAMPLE_BYTES = 64 * 1024
JOB_PAGE_EVENTS = 1000
FINAL_STATUSES = ("succeeded", "failed", "canceled")


class _SecureRoute(APIRoute):
    """A console route whose every answer carries the console's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def with_headers(request: Request) -> Response:
            return secured(await handler(request), _SECURITY_HEADERS)

        return with_headers


_SECURITY_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


class _Refused(Exception):
    """A page that cannot be shown: rendered as an error page with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Console:
    """What the console's routes share."""

    api: ApiBridge
    storage: Storage
    sessions: SessionStore
    templates: jinja2.Environment

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any],
        *,
        session: ConsoleSession | None,
        status: int = 200,
    ) -> HTMLResponse:
        html = self.templates.get_template(name).render(
            request_path=request.url.path,
            session=session,
            csrf_token=session.csrf_token if session else None,
            **context,
        )
        return HTMLResponse(html, status_code=status)


def templates() -> jinja2.Environment:
    """Autoescaping everywhere, and an undefined name is an error, not an empty string."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["eps"] = _eps
    env.filters["pct"] = _pct
    return env


def console_router(console: Console, upload_limit: int | None = None) -> APIRouter:
    """The console's routes, under ``/console``; :func:`mount` adds them with the rest."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False, route_class=_SecureRoute)

    def current(request: Request) -> ConsoleSession | None:
        return console.sessions.get(request.cookies.get(SESSION_COOKIE))

    def signed_in(request: Request) -> ConsoleSession:
        session = current(request)
        if session is None:
            raise _Redirect(f"{PREFIX}/sign-in")
        return session

    Signed = Annotated[ConsoleSession, Depends(signed_in)]

    def checked(
        session: Signed, csrf_token: Annotated[str | None, Form()] = None
    ) -> ConsoleSession:
        if not tokens_match(session.csrf_token, csrf_token):
            raise _Refused(403, _CSRF_MESSAGE)
        return session

    Checked = Annotated[ConsoleSession, Depends(checked)]

    async def api_json(
        session: ConsoleSession, method: str, path: str, **options: Any
    ) -> tuple[int, Any]:
        status, body = await console.api.json(method, path, key=session.key, **options)
        if status == 401:  # the key was revoked since sign-in
            console.sessions.drop_key(session.key)
            raise _Redirect(f"{PREFIX}/sign-in")
        return status, body

    async def found(session: ConsoleSession, path: str) -> Any:
        """The API's answer to a GET that must succeed; its 404 is this page's 404."""
        status, body = await api_json(session, "GET", path)
        if status != 200:
            raise _Refused(status, _detail(body))
        return body

    @router.get("")
    def home(request: Request) -> RedirectResponse:
        target = "datasets" if current(request) else "sign-in"
        return RedirectResponse(f"{PREFIX}/{target}", status_code=303)

    @router.get("/sign-in")
    def sign_in_page(request: Request) -> HTMLResponse:
        return _sign_in_form(console, request)

    @router.post("/sign-in")
    async def sign_in(
        request: Request,
        api_key: Annotated[str, Form(max_length=512)],
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        if not tokens_match(request.cookies.get(SIGN_IN_COOKIE), csrf_token):
            raise _Refused(403, _CSRF_MESSAGE)
        key = api_key.strip()
        status, _ = await console.api.json("GET", "/v1/datasets", key=key, query={"limit": 1})
        if status != 200:
            return _sign_in_form(
                console, request, error="That API key is not one this server knows.", status=401
            )
        session_id = console.sessions.create(key, key[:DISPLAY_PREFIX_LENGTH])
        response = RedirectResponse(f"{PREFIX}/datasets", status_code=303)
        _set_cookie(response, request, SESSION_COOKIE, session_id)
        _clear_cookie(response, request, SIGN_IN_COOKIE)
        return response

    @router.post("/sign-out")
    def sign_out(request: Request, session: Checked) -> RedirectResponse:
        console.sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
        _clear_cookie(response, request, SESSION_COOKIE)
        return response

    @router.get("/datasets")
    async def datasets(request: Request, session: Signed) -> HTMLResponse:
        return await _datasets_page(console, request, session, api_json)

    @router.post("/datasets", max_body_size=upload_limit)
    async def upload(request: Request) -> Response:
        session = signed_in(request)  # before a byte of the body is read
        try:
            token, body = await first_field(
                request.stream(), request.headers.get("content-type"), CSRF_FIELD
            )
        except FormRefused as exc:
            raise _Refused(403, f"{_CSRF_MESSAGE} ({exc})") from None
        if not tokens_match(session.csrf_token, token):
            raise _Refused(403, _CSRF_MESSAGE)
        headers = {"content-type": request.headers.get("content-type", "")}
        async with console.api.request(
            "POST", "/v1/datasets", key=session.key, headers=headers, body=body
        ) as answer:
            raw = await answer.read()
        created = json.loads(raw) if raw else None
        if answer.status == 201 and isinstance(created, dict):
            return RedirectResponse(f"{PREFIX}/datasets/{created['id']}", status_code=303)
        return await _datasets_page(
            console, request, session, api_json, error=_detail(created), status=answer.status
        )

    @router.get("/datasets/{dataset_id}")
    async def dataset_page(dataset_id: str, request: Request, session: Signed) -> HTMLResponse:
        return await _dataset_page(console, request, session, api_json, found, dataset_id)

    @router.post("/datasets/{dataset_id}/jobs")
    async def create_job(dataset_id: str, request: Request, session: Checked) -> Response:
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            body = _job_body(dataset_id, fields)
        except ValueError as exc:
            return await _dataset_page(
                console, request, session, api_json, found, dataset_id, error=str(exc), status=422
            )
        headers = {"Idempotency-Key": fields.get("idempotency_key") or new_token()}
        status, answer = await api_json(session, "POST", "/v1/jobs", payload=body, headers=headers)
        if status == 202:
            return RedirectResponse(f"{PREFIX}/jobs/{answer['id']}", status_code=303)
        return await _dataset_page(
            console, request, session, api_json, found, dataset_id, error=_detail(answer),
            status=status,
        )  # fmt: skip

    @router.get("/jobs")
    async def jobs(request: Request, session: Signed) -> HTMLResponse:
        _, listing = await api_json(session, "GET", "/v1/jobs", query={"limit": 200})
        _, sets = await api_json(session, "GET", "/v1/datasets", query={"limit": 200})
        names = {d["id"]: d["name"] for d in sets["items"]}
        return console.page(
            request, "jobs.html", {"jobs": listing["items"], "names": names}, session=session
        )

    @router.get("/jobs/{job_id}")
    async def job_page(job_id: str, request: Request, session: Signed) -> HTMLResponse:
        job = await found(session, f"/v1/jobs/{_id(job_id)}")
        _, dataset = await api_json(session, "GET", f"/v1/datasets/{job['dataset_id']}")
        _, events = await api_json(
            session, "GET", f"/v1/jobs/{job['id']}/events", query={"limit": JOB_PAGE_EVENTS}
        )
        context = {
            "job": job,
            "dataset": dataset if isinstance(dataset, dict) and "name" in dataset else None,
            "iterations": [e for e in events["items"] if e["kind"] == "iteration"],
            "final": job["status"] in FINAL_STATUSES,
            "results": _results(console.storage, job),
            "evaluation": await _evaluation(api_json, session, job),
            "spec": json.dumps(job["spec"], indent=2, sort_keys=True),
        }
        return console.page(request, "job.html", context, session=session)

    @router.get("/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request) -> StreamingResponse:
        session = current(request)
        if session is None:
            raise _Refused(401, "sign in first")
        job_id = _id(job_id)
        await found(session, f"/v1/jobs/{job_id}")
        headers = {"accept": "text/event-stream"}
        last = request.headers.get("last-event-id")
        if last is not None and last.isdigit():
            headers["last-event-id"] = last

        async def relay() -> AsyncIterator[bytes]:
            async with console.api.request(
                "GET", f"/v1/jobs/{job_id}/events", key=session.key, headers=headers
            ) as answer:
                async for chunk in answer.body:
                    yield chunk

        return StreamingResponse(
            relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @router.post("/jobs/{job_id}/cancel")
    async def cancel(job_id: str, session: Checked) -> Response:
        job_id = _id(job_id)
        status, answer = await api_json(session, "POST", f"/v1/jobs/{job_id}/cancel")
        if status not in (202, 409):
            raise _Refused(status, _detail(answer))
        return RedirectResponse(f"{PREFIX}/jobs/{job_id}", status_code=303)

    @router.get("/jobs/{job_id}/result")
    async def result(job_id: str, session: Signed) -> Response:
        job_id = _id(job_id)
        async with console.api.request("GET", f"/v1/jobs/{job_id}/result", key=session.key) as a:
            content = await a.read()
        if a.status != 200:
            raise _Refused(a.status, _detail(json.loads(content) if content else None))
        disposition = {"Content-Disposition": f'attachment; filename="{job_id}.zip"'}
        return Response(content, media_type="application/zip", headers=disposition)

    @router.get("/jobs/{job_id}/evaluation/report")
    async def evaluation_report(job_id: str, session: Signed) -> Response:
        job_id = _id(job_id)
        path = f"/v1/jobs/{job_id}/evaluation/report"
        async with console.api.request("GET", path, key=session.key) as answer:
            content = await answer.read()
        if answer.status != 200:
            raise _Refused(answer.status, _detail(json.loads(content) if content else None))
        headers = {
            "Content-Disposition": f'attachment; filename="{job_id}-report-not-dp.html"',
            "Cache-Control": "no-store",
        }
        return Response(content, media_type="text/html; charset=utf-8", headers=headers)

    @router.get("/jobs/{job_id}/report")
    async def report(job_id: str, session: Signed) -> Response:
        job = await _succeeded(found, session, job_id)
        content = _read(console.storage, f"results/{job['id']}/report.html")
        headers = {"Content-Security-Policy": REPORT_CSP, "X-Frame-Options": "SAMEORIGIN"}
        return Response(content, media_type="text/html; charset=utf-8", headers=headers)

    @router.get("/jobs/{job_id}/samples/{name}")
    async def sample(job_id: str, name: str, session: Signed) -> Response:
        job = await _succeeded(found, session, job_id)
        if SAMPLE_NAME.fullmatch(name) is None:
            raise _Refused(404, "no such file")
        content = _read(console.storage, f"results/{job['id']}/samples/{name}")
        media = "image/png" if name.endswith(".png") else "text/plain; charset=utf-8"
        return Response(content, media_type=media)

    return router


def mount(app: FastAPI, storage: Storage, *, upload_limit: int | None = None) -> None:
    """Adds the console (``/console``), its static files and its error pages to the gateway.

    ``upload_limit`` is the largest body the upload form's route reads (it streams the file on
    to ``/v1/datasets``); every other console route keeps the app's body limit.
    """
    console = Console(ApiBridge(app), storage, SessionStore(), templates())
    app.include_router(console_router(console, upload_limit))
    app.mount(
        f"{PREFIX}/static", NosniffStaticFiles(directory=HERE / "static"), name="console-static"
    )

    @app.exception_handler(_Redirect)
    def redirect(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Redirect)
        return secured(RedirectResponse(exc.location, status_code=303), _SECURITY_HEADERS)

    @app.exception_handler(_Refused)
    def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
        context = {"status": exc.status, "message": exc.message}
        page = console.page(request, "error.html", context, session=session, status=exc.status)
        return secured(page, _SECURITY_HEADERS)


_CSRF_MESSAGE = (
    "This form's security token is missing or stale (forms are only accepted from the page "
    "this server sent). Reload the page and try again."
)


def _sign_in_form(
    console: Console, request: Request, *, error: str | None = None, status: int = 200
) -> HTMLResponse:
    token = new_token()
    response = console.page(
        request, "sign_in.html", {"sign_in_token": token, "error": error}, session=None,
        status=status,
    )  # fmt: skip
    _set_cookie(response, request, SIGN_IN_COOKIE, token)
    return response


def _set_cookie(response: Response, request: Request, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        max_age=IDLE_S if name == SESSION_COOKIE else 3600,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _clear_cookie(response: Response, request: Request, name: str) -> None:
    response.delete_cookie(
        name, path=PREFIX, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )


ApiJson = Callable[..., Awaitable[tuple[int, Any]]]


async def _datasets_page(
    console: Console,
    request: Request,
    session: ConsoleSession,
    api_json: ApiJson,
    *,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    _, listing = await api_json(session, "GET", "/v1/datasets", query={"limit": 200})
    context = {"datasets": listing["items"], "error": error}
    return console.page(request, "datasets.html", context, session=session, status=status)


async def _dataset_page(
    console: Console,
    request: Request,
    session: ConsoleSession,
    api_json: ApiJson,
    found: Callable[[ConsoleSession, str], Awaitable[Any]],
    dataset_id: str,
    *,
    error: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    dataset = await found(session, f"/v1/datasets/{_id(dataset_id)}")
    _, listing = await api_json(session, "GET", "/v1/jobs", query={"limit": 200})
    history = [j for j in listing["items"] if j["dataset_id"] == dataset["id"]]
    _, sets = await api_json(session, "GET", "/v1/datasets", query={"limit": 200})
    heldout = [
        d for d in sets["items"] if d["role"] == "heldout" and d["modality"] == dataset["modality"]
    ]
    context = {
        "dataset": dataset,
        "history": history,
        "heldout": heldout,
        "error": error,
        "idempotency_key": secrets.token_urlsafe(16),
    }
    return console.page(request, "dataset.html", context, session=session, status=status)


_JOB_FIELDS = {
    "eval_dataset_id": str,
    "api": str,
    "embedding": str,
    "epsilon": float,
    "delta": float,
    "iterations": int,
    "num_samples": int,
}


def _job_body(dataset_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """The API body of the start-a-job form: its fields over the JSON of "more options".

    Raises:
        ValueError: a field is not a number, or the options are not a JSON object.
    """
    extra = fields.get("options", "").strip()
    body: dict[str, Any] = {}
    if extra:
        try:
            body = json.loads(extra)
        except json.JSONDecodeError as exc:
            raise ValueError(f"more options: not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise ValueError('more options: give a JSON object, e.g. {"lookahead": 2}')
    for name, kind in _JOB_FIELDS.items():
        value = fields.get(name, "").strip()
        if not value:
            continue
        try:
            body[name] = kind(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a number") from None
    body["dataset_id"] = dataset_id
    return body


@dataclass(frozen=True)
class _Results:
    report: bool
    images: list[str]
    curves: list[str]
    texts: list[tuple[str, str]]


def _results(storage: Storage, job: dict[str, Any]) -> _Results | None:
    """What a succeeded job published, for its page (None before it has)."""
    if job["status"] != "succeeded":
        return None
    prefix = f"results/{job['id']}"
    keys = storage.list(prefix)
    names = sorted(
        key.rsplit("/", 1)[1]
        for key in keys
        if key.startswith(f"{prefix}/samples/") and SAMPLE_NAME.fullmatch(key.rsplit("/", 1)[1])
    )
    texts = []
    for name in names:
        if name.endswith(".md"):
            with storage.open_read(f"{prefix}/samples/{name}") as handle:
                raw = handle.read(MAX_TEXT_SAMPLE_BYTES)
            texts.append((name, raw.decode("utf-8", "replace")))
    return _Results(
        report=f"{prefix}/report.html" in keys,
        images=[n for n in names if n.endswith(".png") and n.startswith("iter_")],
        curves=[n for n in names if n.endswith(".png") and not n.startswith("iter_")],
        texts=texts,
    )


async def _evaluation(
    api_json: ApiJson, session: ConsoleSession, job: dict[str, Any]
) -> dict[str, Any] | None:
    """A succeeded job's NOT DP evaluation, or None (no held-out data, not succeeded, or
    deleted with one of its datasets)."""
    if job["eval_dataset_id"] is None or job["status"] != "succeeded":
        return None
    status, evaluation = await api_json(session, "GET", f"/v1/jobs/{job['id']}/evaluation")
    return evaluation if status == 200 else None


async def _succeeded(
    found: Callable[[ConsoleSession, str], Awaitable[Any]], session: ConsoleSession, job_id: str
) -> dict[str, Any]:
    job: dict[str, Any] = await found(session, f"/v1/jobs/{_id(job_id)}")
    if job["status"] != "succeeded":
        raise _Refused(409, f"job {job['id']} is {job['status']}: it has no result yet")
    return job


def _read(storage: Storage, key: str) -> bytes:
    try:
        with storage.open_read(key) as handle:
            return handle.read()
    except ObjectNotFoundError:
        raise _Refused(404, "no such file in this job's result") from None


def _id(value: str) -> str:
    """An id from a URL, checked to be one before it goes into an API path (anything else
    cannot name a resource: 404)."""
    if RESOURCE_ID.fullmatch(value) is None:
        raise _Refused(404, "not found")
    return value


def _detail(body: Any) -> str:
    """The API's error message: its detail, or each of a validation error's problems."""
    if not isinstance(body, dict):
        return "the request failed"
    detail = body.get("detail")
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', ())[1:]) or 'form'}: {d.get('msg', '')}"
            for d in detail
            if isinstance(d, dict)
        )
    return str(detail)


def _when(value: str | None) -> str:
    if not value:
        return "—"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


def _eps(value: float) -> str:
    return f"{value:.4g}"


def _pct(part: float, whole: float) -> float:
    return 0.0 if whole <= 0 else max(0.0, min(100.0, 100.0 * part / whole))
