"""The ``openai`` text generator: any OpenAI-compatible ``/v1/chat/completions`` server.

That covers hosted APIs and ``vllm serve``: the ``llm`` API takes ``backend: openai`` with
``backend_config: {base_url, model, ...}``. It is the one part of ``pe_core`` that talks to a
server (and so keeps a clock, for timeouts and backoff); like the rest, it reads no settings.

The API key never travels in a job's configuration (which is persisted). Each edge passes the
key and the one base URL it may be sent to from its own settings (``PRIVEVO_OPENAI_API_KEY``,
``PRIVEVO_OPENAI_BASE_URL``) to :func:`register_openai_backend`, so a job cannot point the key
at a server of its choosing. It is never logged, and server messages quoted in errors have it
blanked out. Without a key the backend sends none, to the server the job names.
"""

from __future__ import annotations

import email.utils
import inspect
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pe_core.apis.llm_backends.base import (
    GENERATOR_REGISTRY,
    Chat,
    Completion,
    GenerationError,
    check_generate_args,
)
from pe_core.errors import PrivevoError, import_optional

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

API_KEY_SETTING = "PRIVEVO_OPENAI_API_KEY"
BASE_URL_SETTING = "PRIVEVO_OPENAI_BASE_URL"
"""The settings each edge reads the key and its allowed server from (named in messages)."""
RETRY_STATUSES = frozenset({408, 409, 429}) | frozenset(range(500, 600))
"""Answers worth another try: timeouts, conflicts, rate limits and server errors."""
_QUOTED_CHARS = 300


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server, with retries and a concurrency limit.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``; requests go to
            ``{base_url}/chat/completions``.
        model: the model name the server knows.
        api_key: sent as ``Authorization: Bearer``; None sends no key.
        concurrency: requests in flight at once.
        max_retries: further tries of a request after a 408/409/429/5xx answer, a timeout or a
            connection error.
        request_timeout_s: limit of one try.
        total_timeout_s: limit of one request with all its tries and waits.
        backoff_s: the first retry waits up to this long; each next one up to twice as long
            (full jitter), at most ``max_backoff_s``. A ``Retry-After`` header overrides it.
        max_backoff_s: the longest wait the backoff picks by itself.
        sleep: how to wait (tests pass a recorder).

    Seeds go to the server as each request's ``seed``; vLLM honours them, hosted APIs may only
    try to.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        request_timeout_s: float = 120.0,
        total_timeout_s: float = 600.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise PrivevoError(f"base_url must be an http(s) URL, got {base_url!r}")
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be positive and max_retries non-negative")
        if not (request_timeout_s > 0 and total_timeout_s > 0 and backoff_s >= 0):
            raise ValueError("timeouts must be positive and backoff_s non-negative")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self._api_key = api_key
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.request_timeout_s = request_timeout_s
        self.total_timeout_s = total_timeout_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._jitter = random.Random()  # jitter only spreads retries; it needs no seed
        self._jitter_lock = threading.Lock()
        self._httpx = import_optional("httpx", "text")

    def __repr__(self) -> str:
        return f"OpenAIGenerator(url={self.url!r}, model={self.model!r})"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def generate(
        self,
        chats: Sequence[Chat],
        *,
        max_new_tokens: Sequence[int],
        temperature: float,
        top_p: float,
        seeds: Sequence[int],
    ) -> list[Completion]:
        """Sends one request per chat, ``concurrency`` at a time.

        Raises:
            GenerationError: a request failed for good (after its retries, or at once for
                other 4xx answers and bodies that are not chat completions).
        """
        check_generate_args(chats, max_new_tokens, seeds)
        if not chats:
            return []
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = self._httpx.Limits(max_connections=self.concurrency)
        with (
            self._httpx.Client(
                headers=headers, timeout=self.request_timeout_s, limits=limits
            ) as client,
            ThreadPoolExecutor(self.concurrency, thread_name_prefix="privevo-openai") as pool,
        ):
            futures = [
                pool.submit(
                    self._request,
                    client,
                    {
                        "model": self.model,
                        "messages": [m.as_dict() for m in chat],
                        "max_tokens": int(limit),
                        "temperature": temperature,
                        "top_p": top_p,
                        "seed": int(seed),
                        "n": 1,
                    },
                )
                for chat, limit, seed in zip(chats, max_new_tokens, seeds, strict=True)
            ]
            try:
                return [future.result() for future in futures]
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise

    def _request(self, client: httpx.Client, body: dict[str, Any]) -> Completion:
        deadline = time.monotonic() + self.total_timeout_s
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            try:
                response = client.post(self.url, json=body)
            except self._httpx.TimeoutException:
                problem = f"no answer within request_timeout_s={self.request_timeout_s}"
            except self._httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__})"
            else:
                if response.status_code == 200:
                    return self._parse(response, body["max_tokens"])
                problem = f"HTTP {response.status_code}: {self._server_message(response)}"
                if response.status_code not in RETRY_STATUSES:
                    raise GenerationError(
                        f"chat completion at {self.url} failed with {problem}"
                        + (
                            f"; check {API_KEY_SETTING}"
                            if response.status_code in (401, 403)
                            else "; check base_url and model in backend_config"
                        )
                    )
                retry_after = _retry_after(response.headers.get("Retry-After"))
            if attempt == self.max_retries:
                break
            wait = retry_after if retry_after is not None else self._backoff(attempt)
            if time.monotonic() + wait > deadline:
                raise GenerationError(
                    f"chat completion at {self.url} gave up after {attempt + 1} tries: waiting "
                    f"{wait:.1f} s more would pass total_timeout_s={self.total_timeout_s}; last "
                    f"error: {problem}"
                )
            logger.warning(
                "chat completion at %s: %s; retry %d of %d in %.1f s",
                self.url,
                problem,
                attempt + 1,
                self.max_retries,
                wait,
            )
            self._sleep(wait)
        raise GenerationError(
            f"chat completion at {self.url} failed after {self.max_retries + 1} tries "
            f"(max_retries={self.max_retries}); last error: {problem}"
        )

    def _backoff(self, attempt: int) -> float:
        with self._jitter_lock:
            return self._jitter.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    def _server_message(self, response: httpx.Response) -> str:
        try:
            error = response.json().get("error")
            text = error.get("message") if isinstance(error, dict) else error
        except (ValueError, AttributeError):
            text = None
        return self._redact(str(text if text else response.text)[:_QUOTED_CHARS])

    def _parse(self, response: httpx.Response, max_tokens: int) -> Completion:
        try:
            data = response.json()
            text = data["choices"][0]["message"]["content"]
            if not isinstance(text, str | None):
                raise TypeError("content is not a string")
            usage = data.get("usage") or {}
            return Completion(
                text or "",
                int(usage.get("prompt_tokens", 0)),
                # Without a count, assume the whole allowance was used: caps stay safe.
                int(usage.get("completion_tokens", max_tokens)),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise GenerationError(
                f"{self.url} answered 200 with a body that is not a chat completion "
                f"({type(exc).__name__}): {self._redact(response.text[:_QUOTED_CHARS])!r}; "
                "check that base_url points at an OpenAI-compatible /v1 root"
            ) from None


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class OpenAIBackend:
    """The registered factory: an :class:`OpenAIGenerator` with the key the edge passed in.

    Args:
        api_key: the key to send, or None to send none.
        allowed_base_url: the one server the key may be sent to (required with a key).
    """

    # The registry checks a job's backend_config against this signature.
    __signature__ = inspect.signature(OpenAIGenerator)

    def __init__(self, api_key: str | None = None, allowed_base_url: str | None = None) -> None:
        self._api_key = api_key or None
        self._allowed = (allowed_base_url or "").rstrip("/")

    def __repr__(self) -> str:
        return f"OpenAIBackend(key={'set' if self._api_key else 'none'}, allowed={self._allowed!r})"

    def __call__(self, **config: Any) -> OpenAIGenerator:
        if "api_key" in config:
            raise PrivevoError(
                "backend_config must not hold api_key: job configurations are stored; set "
                f"{API_KEY_SETTING} (and {BASE_URL_SETTING}) where the CLI or worker runs"
            )
        if "sleep" in config:
            raise PrivevoError("backend_config.sleep is for tests, not for jobs")
        base_url = str(config.get("base_url", "")).rstrip("/")
        if self._api_key is not None and base_url != self._allowed:
            raise PrivevoError(
                f"{API_KEY_SETTING} is only sent to the server that {BASE_URL_SETTING} names "
                f"({self._allowed or 'unset'}), but the job asks for {base_url}; set "
                f"{BASE_URL_SETTING}={base_url} where the CLI or worker runs to allow it"
            )
        return OpenAIGenerator(**config, api_key=self._api_key)


def register_openai_backend(
    api_key: str | None = None, allowed_base_url: str | None = None
) -> None:
    """(Re-)registers the ``openai`` text generator with the key and server an edge allows.

    ``pe_core`` registers it without a key; the CLI and the workers register it again with the
    values of their own settings before running jobs.
    """
    GENERATOR_REGISTRY.register("openai", OpenAIBackend(api_key, allowed_base_url), replace=True)
