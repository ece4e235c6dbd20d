"""Exceptions of the client: HTTP errors carry the server's status and message."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from privevo_client.models import BaseJob


class PrivevoClientError(Exception):
    """Base of every exception this package raises."""


class PrivevoConnectionError(PrivevoClientError):
    """The server could not be reached, or the connection broke, after every retry."""


class PrivevoAPIError(PrivevoClientError):
    """The server answered with an error status.

    Attributes:
        status: the HTTP status code.
        detail: the server's message (``detail`` of its JSON body), fit to show to a user.
        body: the decoded JSON body, or None when the body was not JSON.
    """

    def __init__(self, status: int, detail: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.body = body


class InvalidRequest(PrivevoAPIError):
    """400, 415 or 422: the request or the uploaded file cannot be used as sent."""


class Unauthorized(PrivevoAPIError):
    """401: the API key is missing, unknown or revoked."""


class NotFound(PrivevoAPIError):
    """404: no such dataset or job for this API key's tenant (other tenants' look the same)."""


class Conflict(PrivevoAPIError):
    """409: the request clashes with the current state (a finished job, a budget cap)."""


class BudgetExceeded(Conflict):
    """409 on job creation: the job's (epsilon, delta) does not fit in the dataset's budget.

    Also raised when a caller-chosen ``idempotency_key`` is reused for a different job.
    """


class PayloadTooLarge(PrivevoAPIError):
    """413: the upload, or what its archive expands to, exceeds the server's limit."""


class QuotaExceeded(PrivevoAPIError):
    """429: a quota of your tenant is full (queued jobs, stored upload bytes); the message
    names it. Raised once the retries, which wait as ``Retry-After`` asks, are spent."""


class ServiceUnavailable(PrivevoAPIError):
    """503: the server cannot serve now (its database is down); raised once the retries,
    which wait as ``Retry-After`` asks, are spent."""


class JobFailed(PrivevoClientError):
    """A job ended as failed or canceled.

    Attributes:
        job: the job in its final state.
        status: "failed" or "canceled".
        error: the server's error message, or None.
    """

    def __init__(self, job: BaseJob) -> None:
        super().__init__(f"job {job.id} {job.status}: {job.error or 'no error message'}")
        self.job = job
        self.status = job.status
        self.error = job.error


_BY_STATUS: dict[int, type[PrivevoAPIError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: InvalidRequest,
    422: InvalidRequest,
    429: QuotaExceeded,
    503: ServiceUnavailable,
}


def api_error(
    status: int, content: bytes, *, conflict: type[Conflict] = Conflict
) -> PrivevoAPIError:
    """The exception for an error response.

    Args:
        status: the HTTP status (>= 400).
        content: the response body.
        conflict: the class for a 409, which depends on the route (``BudgetExceeded`` on job
            creation).
    """
    body: Any = None
    try:
        body = json.loads(content)
    except ValueError:
        detail = content.decode("utf-8", "replace").strip()[:500] or f"HTTP {status}"
    else:
        detail = _detail(body, status)
    cls = conflict if status == 409 else _BY_STATUS.get(status, PrivevoAPIError)
    return cls(status, detail, body)


def _detail(body: Any, status: int) -> str:
    """The message of a JSON error body: FastAPI's string, or its list of validation errors."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()))
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return f"HTTP {status}: {body!r}"[:500]


class UnsafeArchiveError(PrivevoClientError):
    """A zip member would land outside the extraction folder (absolute path, ``..``, link)."""
