from __future__ import annotations

import hashlib

import pytest

from service.security import (
    API_KEY_PREFIX,
    DISPLAY_PREFIX_LENGTH,
    generate_api_key,
    hash_api_key,
    is_api_key,
    parse_bearer,
    verify_api_key,
)


def test_generated_keys_have_the_documented_form() -> None:
    keys = [generate_api_key() for _ in range(50)]
    for key, display in keys:
        assert key.startswith(API_KEY_PREFIX)
        assert len(key) == len(API_KEY_PREFIX) + 43  # 32 random bytes in URL-safe base64
        assert is_api_key(key)
        assert display == key[:DISPLAY_PREFIX_LENGTH]
        assert len(key) - len(display) >= 35  # at least 35 * 6 = 210 bits stay secret
    assert len({key for key, _ in keys}) == len(keys)


def test_hash_is_sha256_hex() -> None:
    key, _ = generate_api_key()
    digest = hash_api_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert len(digest) == 64
    assert key not in digest
    assert hash_api_key(key) == digest
    assert hash_api_key(key[:-1] + ("A" if key[-1] != "A" else "B")) != digest


def test_verify() -> None:
    key, _ = generate_api_key()
    other, _ = generate_api_key()
    stored = hash_api_key(key)
    assert verify_api_key(key, stored)
    assert not verify_api_key(other, stored)
    assert not verify_api_key(key, stored[:-1])
    assert not verify_api_key(key, "")


@pytest.mark.parametrize(
    "value",
    ["", "pev_", "pev_" + "a" * 42, "pev_" + "a" * 44, "pev_" + "a" * 42 + "=", "xyz_" + "a" * 43],
)
def test_is_api_key_rejects_other_forms(value: str) -> None:
    assert not is_api_key(value)


def test_parse_bearer_accepts() -> None:
    key, _ = generate_api_key()
    assert parse_bearer(f"Bearer {key}") == key
    assert parse_bearer(f"bearer {key}") == key
    assert parse_bearer(f"BEARER {key}") == key
    assert parse_bearer("Bearer abc.def~ghi+jk/l==") == "abc.def~ghi+jk/l=="


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer  pev_abc",
        " Bearer pev_abc",
        "Bearer pev_abc ",
        "Bearer\tpev_abc",
        "Bearer pev_abc\n",
        "Bearer pev_abc extra",
        "Bearer pev_abc, Basic dXNlcjpwdw==",
        "Basic dXNlcjpwdw==",
        "Token pev_abc",
        "Bearerpev_abc",
        "Bearer =abc",
        "Bearer pev_\u00e4bc",
        "Bearer " + "a" * 257,
    ],
)
def test_parse_bearer_rejects(value: str | None) -> None:
    assert parse_bearer(value) is None
