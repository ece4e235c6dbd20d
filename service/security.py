"""API keys: generation, hashing for storage, constant-time checks and bearer-header parsing.

A key is ``pev_`` followed by 43 URL-safe base64 characters (256 random bits). The service
stores only ``hash_api_key(key)`` and the key's display prefix; the key itself is shown once,
when it is created.

A fast hash is the right tool here, unlike for passwords. Slow, salted hashes (bcrypt, scrypt,
Argon2) exist to make guessing low-entropy passwords from a stolen hash expensive; a key of 256
random bits cannot be guessed at any hash speed, so slowness would only add latency to every
request. An unsalted digest is also deterministic, so it can be the database's unique, indexed
lookup column: authentication is one indexed query on the digest, not a scan over salted rows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

API_KEY_PREFIX = "pev_"
"""Marks privevo keys, so that secret scanners and people recognise a leaked one."""

DISPLAY_PREFIX_LENGTH = len(API_KEY_PREFIX) + 8
"""Characters of a key kept in clear to name it in listings: 48 of its 256 random bits, which
leaves 208 secret."""

_KEY_BYTES = 32
_API_KEY = re.compile(re.escape(API_KEY_PREFIX) + r"[A-Za-z0-9_-]{43}")
# RFC 6750 section 2.1: credentials = "Bearer" 1*SP b64token. One space is required here, and
# the token length is capped so that no oversized header is ever hashed.
_BEARER = re.compile(r"(?i:bearer) ([A-Za-z0-9._~+/-]{1,256}=*)")


def generate_api_key() -> tuple[str, str]:
    """Makes a new API key from the operating system's CSPRNG.

    Returns:
        ``(key, display_prefix)``: the key to hand to the user once, and its first
        ``DISPLAY_PREFIX_LENGTH`` characters, safe to store and show to name the key.
    """
    key = API_KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
    return key, key[:DISPLAY_PREFIX_LENGTH]


def is_api_key(value: str) -> bool:
    """Whether ``value`` has the form of a privevo API key (says nothing about validity)."""
    return _API_KEY.fullmatch(value) is not None


def hash_api_key(key: str) -> str:
    """The hex SHA-256 of a key: what the service stores and looks keys up by."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def verify_api_key(key: str, stored_hash: str) -> bool:
    """Whether ``key`` hashes to ``stored_hash``, compared in constant time.

    The comparison time does not depend on how many leading characters match, so response
    times tell an attacker nothing about a stored digest.
    """
    return hmac.compare_digest(hash_api_key(key), stored_hash)


def parse_bearer(header_value: str | None) -> str | None:
    """Extracts the token from an ``Authorization: Bearer <token>`` header value.

    Strict: the scheme (case-insensitive, RFC 7235), exactly one space and one RFC 6750
    token of at most 256 characters, with nothing before or after. Anything else, including a
    missing header, gives None, which the caller answers with 401.
    """
    if header_value is None:
        return None
    match = _BEARER.fullmatch(header_value)
    return match.group(1) if match else None
