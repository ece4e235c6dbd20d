"""Console sign-in sessions, held server-side, and their CSRF tokens.

Signing in trades an API key for a session: the browser keeps only a random session id, in an
HttpOnly, SameSite=Strict cookie, so the key never reaches the page (no script can read it, and
a stolen cookie does not reveal a key that works on the API). The key stays in the gateway's
memory, which calls the API with it; a key revoked since is refused on the next page.

Sessions live in this gateway process: a restart signs everyone out, and several gateway
replicas behind one address need sticky sessions for the console. The store is bounded, and a
session ends after ``IDLE_S`` without a request or ``MAX_AGE_S`` in all.

Every form carries the session's CSRF token (the sign-in form, before there is a session, a
token double-submitted in a cookie of its own); a POST without the right one is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

SESSION_COOKIE = "privevo_session"
SIGN_IN_COOKIE = "privevo_sign_in"
"""The double-submitted CSRF token of the sign-in form."""
CSRF_FIELD = "csrf_token"
IDLE_S = 2 * 3600
MAX_AGE_S = 12 * 3600
MAX_SESSIONS = 10_000
_TOKEN_BYTES = 32


@dataclass(frozen=True)
class ConsoleSession:
    """One signed-in browser.

    Attributes:
        key: the API key it signed in with (server-side only).
        key_prefix: the key's display prefix (service.security), to name it on pages.
        csrf_token: what its forms must send back.
        started, seen: monotonic seconds of sign-in and of the last request.
    """

    key: str
    key_prefix: str
    csrf_token: str
    started: float
    seen: float


class SessionStore:
    """Sessions by the digest of their id, oldest first; thread-safe.

    Only digests are kept as dictionary keys, so a lookup's time says nothing useful about
    other sessions' ids (the ids are 256 random bits either way).

    Args:
        clock: monotonic seconds (tests may pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()
        self._lock = threading.Lock()

    def create(self, key: str, key_prefix: str) -> str:
        """Starts a session; returns its id, for the cookie."""
        session_id = secrets.token_urlsafe(_TOKEN_BYTES)
        now = self._clock()
        session = ConsoleSession(key, key_prefix, secrets.token_urlsafe(_TOKEN_BYTES), now, now)
        with self._lock:
            self._sessions[_digest(session_id)] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session_id

    def get(self, session_id: str | None) -> ConsoleSession | None:
        """The live session with this id (its idle clock restarted), or None."""
        if not session_id:
            return None
        digest = _digest(session_id)
        now = self._clock()
        with self._lock:
            session = self._sessions.get(digest)
            if session is None:
                return None
            if now - session.seen > IDLE_S or now - session.started > MAX_AGE_S:
                del self._sessions[digest]
                return None
            session = replace(session, seen=now)
            self._sessions[digest] = session
            return session

    def drop_key(self, key: str) -> None:
        """Ends every session signed in with ``key`` (the API refused it: revoked)."""
        with self._lock:
            for digest in [d for d, s in self._sessions.items() if s.key == key]:
                del self._sessions[digest]

    def drop(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(_digest(session_id), None)


def new_token() -> str:
    return secrets.token_urlsafe(_TOKEN_BYTES)


def tokens_match(expected: str | None, sent: str | None) -> bool:
    """Whether a form's CSRF token is the expected one, compared in constant time."""
    if not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()
