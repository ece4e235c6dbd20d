"""What the sync and async clients share: requests as data, the retry policy, progress lines.

Each API operation is described once as a :class:`Call`; ``Client`` and ``AsyncClient`` only
differ in how they send it and sleep between attempts.
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal, TextIO
from urllib.parse import quote

import httpx

from privevo_client.errors import BudgetExceeded, Conflict
from privevo_client.models import BaseJob, Event

VERSION: Final = "0.1.0"
USER_AGENT: Final = f"privevo-client/{VERSION}"
DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)

RETRY_STATUSES: Final = frozenset({429, 502, 503, 504})
# A request that is not idempotent (an upload) is retried only when the server cannot have
# acted on it: it was refused before processing (429, 503) or never sent (connect errors). A 502
# or 504 from a proxy, or a broken connection, may follow a request that was processed.
UNPROCESSED_STATUSES: Final = frozenset({429, 503})
TRANSIENT_ERRORS: Final = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
UNSENT_ERRORS: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
MAX_RETRY_AFTER_S: Final = 60.0
"""A longer Retry-After is cut to this, so a misconfigured proxy cannot stall a call for hours."""


@dataclass(frozen=True)
class Upload:
    """A file sent as the ``file`` part of a multipart form, streamed from disk."""

    path: Path
    filename: str
    form: Mapping[str, str]


@dataclass(frozen=True)
class Call:
    """One API request, rebuilt for every attempt.

    Attributes:
        method, path, params, json, headers: the request.
        upload: a file to stream; reopened on every attempt so a retry sends it whole.
        idempotent: whether repeating the request is harmless (GET, DELETE, a create with an
            Idempotency-Key); decides which failures are retried.
        conflict: the exception class of a 409 on this route.
    """

    method: str
    path: str
    params: Mapping[str, str | int] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    upload: Upload | None = None
    idempotent: bool = True
    conflict: type[Conflict] = Conflict

    @contextmanager
    def request(self, http: httpx.Client | httpx.AsyncClient) -> Iterator[httpx.Request]:
        """Builds the request; send it inside the ``with`` block (the upload is open there)."""
        common: dict[str, Any] = {"params": self.params, "headers": dict(self.headers)}
        if self.upload is None:
            yield http.build_request(self.method, self.path, json=self.json, **common)
            return
        with self.upload.path.open("rb") as handle:
            files = {"file": (self.upload.filename, handle, "application/octet-stream")}
            yield http.build_request(
                self.method, self.path, files=files, data=dict(self.upload.form), **common
            )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: retry n (from 0) waits a uniform draw in [b/2, b],
    b = min(max_backoff_s, backoff_s * 2**n), or the server's Retry-After if that is longer.

    Attributes:
        max_retries: retries after the first attempt (0: never retry).
        backoff_s: the base wait in seconds.
        max_backoff_s: the cap on the exponential part, in seconds.
    """

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("max_retries and the backoff times must not be negative")

    def retries_status(self, call: Call, status: int, attempt: int) -> bool:
        """Whether attempt ``attempt`` (from 0), answered with ``status``, is retried."""
        statuses = RETRY_STATUSES if call.idempotent else UNPROCESSED_STATUSES
        return attempt < self.max_retries and status in statuses

    def retries_error(self, call: Call, error: httpx.TransportError, attempt: int) -> bool:
        """Whether attempt ``attempt`` (from 0), failed with ``error``, is retried."""
        errors = TRANSIENT_ERRORS if call.idempotent else UNSENT_ERRORS
        return attempt < self.max_retries and isinstance(error, errors)

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retrying attempt ``attempt`` (from 0)."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0**attempt)
        backoff = ceiling / 2 + rng.uniform(0, ceiling / 2)
        return max(backoff, min(retry_after or 0.0, MAX_RETRY_AFTER_S))


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (delay-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def segment(value: str) -> str:
    """An id as one URL path segment (so an id can never change the route)."""
    return quote(value, safe="")


Role = Literal["private", "heldout"]


def upload_form(
    path: Path,
    *,
    name: str | None,
    modality: Literal["image", "text"] | None,
    epsilon_cap: float | None,
    delta_cap: float | None,
    text_column: str,
    label_column: str,
    user_column: str | None,
    role: Role = "private",
    expires_at: datetime | None = None,
) -> dict[str, str]:
    """The form fields of an upload of ``path``: name and modality default from the path.

    Raises:
        ValueError: private data without ``epsilon_cap``, held-out data with a cap or a user
            column (held-out data has no budget), or an ``expires_at`` without a time zone;
            said before anything is sent.
    """
    if role == "private" and epsilon_cap is None:
        raise ValueError("private data needs its budget cap: pass epsilon_cap")
    if role == "heldout" and (epsilon_cap, delta_cap, user_column) != (None, None, None):
        raise ValueError(
            "held-out data has no privacy budget and names no users: leave out epsilon_cap, "
            "delta_cap and user_column"
        )
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError("expires_at needs a time zone, e.g. datetime(2030, 1, 31, tzinfo=UTC)")
    caps = {"epsilon_cap": epsilon_cap, "delta_cap": delta_cap}
    return {
        "name": name or (path.resolve().name if path.is_dir() else path.stem),
        "modality": modality or infer_modality(path),
        "role": role,
        **{field: repr(float(value)) for field, value in caps.items() if value is not None},
        "text_column": text_column,
        "label_column": label_column,
        **({} if user_column is None else {"user_column": user_column}),
        **({} if expires_at is None else {"expires_at": expires_at.isoformat()}),
    }


def upload_call(file: Path, form: Mapping[str, str]) -> Call:
    """Creating a dataset from ``file``: retried only when the server cannot have stored it."""
    return Call("POST", "/v1/datasets", upload=Upload(file, file.name, form), idempotent=False)


TEXT_SUFFIXES: Final = frozenset({".jsonl", ".csv"})
IMAGE_SUFFIXES: Final = frozenset({".zip", ".npz"})


def infer_modality(path: Path) -> Literal["image", "text"]:
    """The modality of an upload from its form: a folder, .zip or .npz holds images, .jsonl and
    .csv hold texts; anything else (.parquet holds either) must be told."""
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    raise ValueError(f"{path}: cannot tell image from text data; pass modality='image' or 'text'")


def create_job_call(
    dataset_id: str,
    *,
    eval_dataset_id: str | None = None,
    audit: bool | Mapping[str, Any] = False,
    epsilon: float,
    delta: float,
    iterations: int,
    num_samples: int | None,
    api: str | None,
    idempotency_key: str | None,
    engine_fields: Mapping[str, Any],
) -> Call:
    body: dict[str, Any] = {
        "dataset_id": dataset_id,
        **({} if eval_dataset_id is None else {"eval_dataset_id": eval_dataset_id}),
        "epsilon": epsilon,
        "delta": delta,
        "iterations": iterations,
        **({} if num_samples is None else {"num_samples": num_samples}),
        **({} if api is None else {"api": api}),
        **engine_fields,
    }
    if audit is not False:  # True: the server's defaults (2,000 canaries, 200 guesses)
        body["audit"] = {} if audit is True else dict(audit)
    # One key per create call, reused by all of its retries: the server then reserves budget
    # once however many attempts reach it.
    key = idempotency_key or str(uuid.uuid4())
    return Call(
        "POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key}, conflict=BudgetExceeded
    )


def page_params(cursor: str | int | None, limit: int) -> dict[str, str | int]:
    return {"limit": limit} if cursor is None else {"limit": limit, "cursor": cursor}


def audit_call(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{segment(job_id)}/audit")


def evaluation_call(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{segment(job_id)}/evaluation")


def evaluation_report_call(job_id: str) -> Call:
    return Call("GET", f"/v1/jobs/{segment(job_id)}/evaluation/report")


def write_private_file(path: Path, content: bytes) -> Path:
    """Writes ``content`` to a new file readable by its owner only (0600): the NOT DP report
    shows private records. An existing file is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(content)
    return path


class Eta:
    """A job's time left, from the server's timestamps of its iteration events.

    The pace is the mean time between the iteration events of the current delivery of the job
    (a "started" event begins a new one: a job resumed from its checkpoint after its worker
    died is timed afresh), measured on the server's clock alone, so the client's clock does
    not skew it. The time since the last iteration event is then taken off, as measured by
    the client from when it first saw that event (a lower bound, so the ETA never runs
    ahead).
    """

    def __init__(self) -> None:
        self.cursor = 0
        self.points: list[tuple[int, datetime]] = []
        self.seen_at: float | None = None

    def add(self, events: Iterable[Event], now: float) -> None:
        """Takes in the job's events newer than :attr:`cursor`, seen at ``now``
        (``time.monotonic()``)."""
        for event in events:
            self.cursor = max(self.cursor, event.id)
            if event.kind == "started":
                self.points = []
            elif event.kind == "iteration" and isinstance(event.payload.get("iteration"), int):
                self.points.append((event.payload["iteration"], event.created_at))
                self.seen_at = now

    def seconds_left(self, iterations: int, now: float) -> float | None:
        """Seconds until the last iteration ends, or None before two iterations are timed."""
        if len(self.points) < 2 or self.seen_at is None:
            return None
        (first, start), (last, end) = self.points[0], self.points[-1]
        if last <= first:
            return None
        per_iteration = (end - start).total_seconds() / (last - first)
        return max(0.0, per_iteration * (iterations - last) - (now - self.seen_at))


class Progress:
    """Shows a job's progress on a text stream: one ``\\r``-rewritten line on a terminal, a new
    line per change elsewhere (log files, CI; an ETA that only counts down prints none)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.last = ""
        self.last_state = ""

    def show(self, job: BaseJob, eta_s: float | None = None) -> None:
        line, state = progress_line(job, eta_s=eta_s), progress_line(job)
        if line == self.last or (not self.live and state == self.last_state):
            return
        if self.live:
            self.stream.write("\r" + line.ljust(len(self.last)))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last, self.last_state = line, state

    def close(self) -> None:
        if self.live and self.last:
            self.stream.write("\n")
            self.stream.flush()


def progress_line(job: BaseJob, width: int = 20, *, eta_s: float | None = None) -> str:
    """E.g. ``job j_1 [##########----------] 1/2 vote eps 0.5/1 eta 12 s running``
    (``eta unknown`` without ``eta_s``); a final job shows no ETA."""
    total = max(job.iterations, 1)
    done = total if job.status == "succeeded" else min(job.iteration, total)
    filled = round(width * done / total)
    bar = "#" * filled + "-" * (width - filled)
    eta = "" if job.done else f"eta {format_seconds(eta_s)} "
    return (
        f"job {job.id} [{bar}] {job.iteration}/{job.iterations} {job.phase or '-'} "
        f"eps {job.epsilon_spent:.4g}/{job.epsilon_reserved:.4g} {eta}{job.status}"
    )


def format_seconds(seconds: float | None) -> str:
    """``unknown``, ``42 s``, ``7 min`` or ``2.5 h``."""
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Deadline:
    """When ``wait`` gives up: ``timeout`` seconds from now, or never."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.end = math.inf if timeout is None else time.monotonic() + timeout

    def left(self) -> float:
        return self.end - time.monotonic()

    def expired_error(self, job: BaseJob) -> TimeoutError:
        return TimeoutError(f"job {job.id} is still {job.status} after {self.timeout} s")
