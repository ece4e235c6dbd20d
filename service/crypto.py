"""Encryption at rest: envelope keys and a chunked AES-GCM format for every stored object.

Key hierarchy:

* The **master key** (``PRIVEVO_MASTER_KEY``, 32 random bytes in base64) lives only in the
  settings of the gateway and the workers. It never encrypts data, only data keys.
* Each **scope** (a dataset, or a job's published result) has a random 256-bit **data key**,
  stored in ``data_keys`` wrapped by the master key with AES-GCM, the scope's id as associated
  data (so a wrapped key copied to another scope's row does not unwrap).
* Each object is encrypted with its scope's data key in the format below.

Deleting a scope's row crypto-shreds it: whatever copy of its objects survives (a backup, a
replica, an object a purge missed) cannot be decrypted any more.

Object format (version 1)::

    header  = b"PVEA" | version (1 byte) | chunk size (4 bytes, big-endian) | file id (16)
    chunk i = nonce (12 bytes, fresh and random) | AES-GCM(data key, plaintext chunk i)

Every chunk but the last holds exactly ``chunk size`` plaintext bytes; the last holds 0 to
``chunk size`` (an empty object is one empty last chunk). Each chunk's associated data is
``header | len(storage key) | storage key | i (8 bytes) | last flag (1 byte)``, so the header,
the object's random file id, its storage key, the chunk's position and whether it ends the
object are all authenticated: a flipped byte, a truncation (even at a chunk boundary), an
appended, reordered or repeated chunk, a chunk from another object, and an object renamed to
another key all fail with :class:`DecryptionError`. A reader gets a chunk's bytes only once
that chunk has been authenticated; a truncation shows when the truncated end is reached.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Final, Protocol, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.orm import Session, sessionmaker

from pe_core.errors import PrivevoError
from service import db
from service.db.models import ID_LENGTH
from service.storage import ObjectNotFoundError, Storage, check_key

KEY_BYTES: Final = 32
"""Of the master key and of every data key (AES-256)."""

NONCE_BYTES: Final = 12
"""AES-GCM's 96-bit nonce, drawn fresh from the OS for every chunk and every wrapped key:
random nonces stay far from a collision at up to 2**32 encryptions per key (NIST SP 800-38D
8.3), more chunks than any one dataset's objects hold."""

TAG_BYTES: Final = 16
FILE_ID_BYTES: Final = 16
CHUNK_BYTES: Final = 64 * 1024
"""Plaintext bytes per chunk: small enough to stream, large enough that the 28 bytes each
chunk adds (nonce and tag) cost under 0.05%."""

MAX_CHUNK_BYTES: Final = 16 * 1024 * 1024
"""The largest chunk size a header may declare: a reader allocates one chunk."""

MAGIC: Final = b"PVEA"
VERSION: Final = 1
_HEADER = struct.Struct(">4sBI16s")
_WRAP_VERSION: Final = 1
_WRAP_CONTEXT: Final = b"privevo data key\x00"

MASTER_KEY_HELP: Final = (
    'make one with `openssl rand -base64 32` (or python -c "import base64, os; '
    'print(base64.b64encode(os.urandom(32)).decode())")'
)


class WeakMasterKeyError(PrivevoError, ValueError):
    """The master key is missing, malformed or not random enough to use."""


class KeyUnwrapError(PrivevoError):
    """A wrapped data key does not unwrap: another master key, or another scope's row."""


class NoDataKeyError(PrivevoError, LookupError):
    """No data key for an object: its scope was shredded (purged), never had one (stored
    before encryption at rest was on), or its key lies outside every encrypted prefix."""


class DecryptionError(PrivevoError):
    """An encrypted object fails authentication: altered, truncated, extended, reordered,
    mixed with another object, moved to another key, or not encrypted at all."""


def parse_master_key(value: str) -> bytes:
    """The 32 bytes of a master key given in base64 (standard or URL-safe alphabet).

    Raises:
        WeakMasterKeyError: not base64, not 32 bytes, or bytes that are plainly not random
            (fewer than 16 distinct values; 32 random bytes have about 30, and fewer than 16
            happens with a probability far below 2**-100): a placeholder or a typed phrase.
    """
    text = value.strip()
    try:
        raw = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise WeakMasterKeyError(f"PRIVEVO_MASTER_KEY is not base64; {MASTER_KEY_HELP}") from None
    if len(raw) != KEY_BYTES:
        raise WeakMasterKeyError(
            f"PRIVEVO_MASTER_KEY must be {KEY_BYTES} bytes in base64, got {len(raw)} bytes; "
            f"{MASTER_KEY_HELP}"
        )
    if len(set(raw)) < 16:
        raise WeakMasterKeyError(
            f"PRIVEVO_MASTER_KEY is not random (a repeated or typed value); {MASTER_KEY_HELP}"
        )
    return raw


def new_data_key() -> bytes:
    """A fresh random 256-bit data key."""
    return AESGCM.generate_key(bit_length=8 * KEY_BYTES)


def wrap_key(master_key: bytes, data_key: bytes, scope: str) -> bytes:
    """``data_key`` sealed by ``master_key`` for ``scope``: version | nonce | ciphertext."""
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(master_key).encrypt(nonce, data_key, _wrap_context(scope))
    return bytes([_WRAP_VERSION]) + nonce + sealed


def rotate_master_key(sessions: sessionmaker[Session], old: bytes, new: bytes) -> int:
    """Wraps every data key with the ``new`` master key instead of ``old``, in one transaction;
    the objects are untouched (their data keys stay the same). Returns how many keys it
    rewrapped.

    Raises:
        KeyUnwrapError: a data key does not unwrap with ``old`` (not the master key in use):
            nothing was changed.
        ValueError: ``new`` is ``old``.
    """
    if new == old:
        raise ValueError("the new master key is the one in use; give a new one")
    with sessions() as s:
        return db.rewrap_data_keys(
            s, lambda scope, wrapped: wrap_key(new, unwrap_key(old, wrapped, scope), scope)
        )


def unwrap_key(master_key: bytes, wrapped: bytes, scope: str) -> bytes:
    """The data key of ``scope`` from its wrapped form.

    Raises:
        KeyUnwrapError: another master key sealed it, it belongs to another scope, or the
            stored bytes were altered.
    """
    if len(wrapped) != 1 + NONCE_BYTES + KEY_BYTES + TAG_BYTES or wrapped[0] != _WRAP_VERSION:
        raise KeyUnwrapError(f"the data key of {scope} is not a version-1 wrapped key")
    nonce, sealed = wrapped[1 : 1 + NONCE_BYTES], wrapped[1 + NONCE_BYTES :]
    try:
        return AESGCM(master_key).decrypt(nonce, sealed, _wrap_context(scope))
    except InvalidTag:
        raise KeyUnwrapError(
            f"the data key of {scope} does not unwrap: PRIVEVO_MASTER_KEY is not the key it "
            f"was wrapped with, or the row was altered or copied from another scope"
        ) from None


def _wrap_context(scope: str) -> bytes:
    return _WRAP_CONTEXT + scope.encode()


class _Sealer(io.RawIOBase):
    """A writer that encrypts what it is given into ``target``, chunk by chunk; ``finish``
    seals the last chunk (without it the object is incomplete and will not decrypt)."""

    def __init__(self, target: BinaryIO, data_key: bytes, key: str, chunk_bytes: int) -> None:
        super().__init__()
        self._target = target
        self._aead = AESGCM(data_key)
        self._header = _HEADER.pack(MAGIC, VERSION, chunk_bytes, os.urandom(FILE_ID_BYTES))
        self._key = key
        self._chunk = chunk_bytes
        self._pending = bytearray()
        self._index = 0
        target.write(self._header)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed encrypted writer")
        self._pending += data
        # Strictly more than a chunk: what is left at the end, 0 to a whole chunk, is the last.
        while len(self._pending) > self._chunk:
            self._seal(bytes(self._pending[: self._chunk]), last=False)
            del self._pending[: self._chunk]
        return len(data)

    def finish(self) -> None:
        self._seal(bytes(self._pending), last=True)
        self._pending.clear()
        self.close()

    def _seal(self, plain: bytes, *, last: bool) -> None:
        nonce = os.urandom(NONCE_BYTES)
        aad = _chunk_context(self._header, self._key, self._index, last)
        self._target.write(nonce + self._aead.encrypt(nonce, plain, aad))
        self._index += 1


class _Opener(io.RawIOBase):
    """A reader of an encrypted object that yields each chunk's plaintext once the chunk is
    authenticated (see the module's docstring for what that catches)."""

    def __init__(self, source: BinaryIO, data_key: bytes, key: str) -> None:
        super().__init__()
        self._source = source
        self._key = key
        self._header = _read_exactly(source, _HEADER.size)
        if len(self._header) < _HEADER.size or self._header[:4] != MAGIC:
            raise DecryptionError(
                f"the object under storage key {key!r} is not encrypted by privevo (stored "
                f"before encryption at rest was on, or not privevo's)"
            )
        _, version, chunk_bytes, _ = _HEADER.unpack(self._header)
        if version != VERSION or not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise DecryptionError(
                f"the object under storage key {key!r} has an unknown format (version "
                f"{version}, chunks of {chunk_bytes} bytes)"
            )
        self._aead = AESGCM(data_key)
        self._record = NONCE_BYTES + chunk_bytes + TAG_BYTES
        self._index = 0
        self._done = False
        self._plain = b""
        self._offset = 0
        self._next = _read_exactly(source, self._record)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._offset == len(self._plain) and not self._done:
            self._plain, self._offset = self._open_next(), 0
        count = min(len(buffer), len(self._plain) - self._offset)
        memoryview(buffer)[:count] = self._plain[self._offset : self._offset + count]
        self._offset += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()

    def _open_next(self) -> bytes:
        record = self._next
        if len(record) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError(
                f"the object under storage key {self._key!r} is truncated (it ends before its "
                f"last chunk)"
            )
        if len(record) == self._record:
            self._next = _read_exactly(self._source, self._record)
            last = not self._next
        else:  # a short record ends the object (_read_exactly reached the end)
            self._next, last = b"", True
        nonce, sealed = record[:NONCE_BYTES], record[NONCE_BYTES:]
        aad = _chunk_context(self._header, self._key, self._index, last)
        try:
            plain = self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise DecryptionError(
                f"the object under storage key {self._key!r} fails authentication at chunk "
                f"{self._index}: altered, truncated, reordered, mixed with another object, or "
                f"moved from another key"
            ) from None
        self._index += 1
        self._done = last
        return plain


def _chunk_context(header: bytes, key: str, index: int, last: bool) -> bytes:
    name = key.encode()
    return header + struct.pack(">H", len(name)) + name + struct.pack(">Q?", index, last)


def _read_exactly(source: BinaryIO, size: int) -> bytes:
    """``size`` bytes from ``source``, fewer only at its end (a stream's ``read`` may return
    less than asked before its end: an S3 body does)."""
    parts, left = [], size
    while left:
        part = source.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


class KeyRing(Protocol):
    """Finds the data key of the object under a storage key."""

    def data_key(self, key: str, *, create: bool) -> bytes:
        """The data key of ``key``'s scope; with ``create`` (a write) one is made where the
        scope may have one and has none yet.

        Raises:
            NoDataKeyError: the scope has no key (and may not get one here).
            KeyUnwrapError: its wrapped key does not unwrap.
        """
        ...


class DatabaseKeyRing:
    """Data keys in ``data_keys``, wrapped by the master key; scopes follow the key layout of
    :mod:`service.keys`. Every object the service stores is private or the tenant's own, so
    every prefix is encrypted:

    =========================== ============================= ==================================
    prefix                      holds                         scope of its data key
    =========================== ============================= ==================================
    ``uploads/<token>/``        a dataset's upload            the dataset (found by the upload
                                                              folder; made by the upload route
                                                              before the dataset is committed)
    ``datasets/<dataset>/``     its jobs' files (checkpoints, the dataset (made on first write
                                releases, NOT DP evaluations) while the dataset is not deleted)
                                and its cached embeddings
    ``results/<job>/``          the job's DP result           the job (made on first write)
    anything else               nothing the service writes    refused (NoDataKeyError)
    =========================== ============================= ==================================

    A result is DP output, served to its tenant after its dataset is deleted (as before), so
    it has a key of its own rather than its dataset's: shredding the dataset leaves it
    readable. Keys are looked up for every object opened, not cached, so a shredded scope is
    unreadable at once in every process.
    """

    def __init__(self, sessions: sessionmaker[Session], master_key: bytes) -> None:
        self._sessions = sessions
        self._master = master_key

    def data_key(self, key: str, *, create: bool) -> bytes:
        kind, name = _scope_of(check_key(key))
        with self._sessions() as s:
            if kind == "uploads":
                found = db.upload_key(s, f"uploads/{name}")
                if found is None:
                    raise NoDataKeyError(f"no data key for the upload {name}")
                return unwrap_key(self._master, found[1], found[0])
            wrapped = db.wrapped_key(s, name)
            if wrapped is None:
                live = db.dataset_is_live if kind == "datasets" else db.job_exists
                if not (create and live(s, name)):
                    raise NoDataKeyError(
                        f"no data key for {name}: deleted (its key was shredded), stored before "
                        f"encryption at rest was on, or unknown"
                    )
                wrapped = db.add_data_key(s, name, wrap_key(self._master, new_data_key(), name))
            return unwrap_key(self._master, wrapped, name)

    def create_for_upload(self, dataset_id: str, upload_prefix: str) -> None:
        """Makes the data key of a dataset about to be uploaded under ``upload_prefix``."""
        with self._sessions() as s:
            wrapped = wrap_key(self._master, new_data_key(), dataset_id)
            db.add_data_key(s, dataset_id, wrapped, upload_prefix=upload_prefix)

    def forget_upload(self, upload_prefix: str) -> bool:
        """Deletes the data key made for an upload under ``upload_prefix`` whose dataset was
        never committed (its gateway died mid-upload); whether there was one. The key of a
        committed dataset is left to its purge."""
        with self._sessions() as s:
            return db.delete_orphan_upload_key(s, upload_prefix)

    def shred(self, scope: str) -> bool:
        """Deletes the data key of ``scope``: its objects, wherever copies are, are unreadable
        from then on. Whether it had one."""
        with self._sessions() as s:
            return db.delete_data_key(s, scope)


def _scope_of(key: str) -> tuple[str, str]:
    kind, _, rest = key.partition("/")
    name = rest.split("/", 1)[0]
    if kind not in ("uploads", "datasets", "results") or not name or len(name) > ID_LENGTH:
        raise NoDataKeyError(
            f"storage key {key!r} is outside every encrypted prefix (uploads/, datasets/, results/)"
        )
    return kind, name


class EncryptedStorage:
    """A :class:`service.storage.Storage` that encrypts every object it writes into ``backend``
    (any backend: a folder, a bucket) and authenticates every one it reads.

    Objects keep their keys, so listing and deleting are the backend's; ``path`` is None for
    every object, so code that needs a file gets a decrypted scratch copy from
    :func:`service.storage.local_copy` (0600, deleted after use), never the ciphertext.

    Args:
        backend: where the ciphertext goes.
        keys: finds each object's data key (:class:`DatabaseKeyRing` in the service).
        chunk_bytes: plaintext bytes per chunk of the objects written.
    """

    def __init__(self, backend: Storage, keys: KeyRing, *, chunk_bytes: int = CHUNK_BYTES) -> None:
        if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
            raise ValueError(f"chunk_bytes must be in 1..{MAX_CHUNK_BYTES}, got {chunk_bytes}")
        self.backend = backend
        self.keys = keys
        self.chunk_bytes = chunk_bytes

    def __repr__(self) -> str:
        return f"EncryptedStorage({self.backend!r})"

    @contextmanager
    def open_write(self, key: str) -> Iterator[BinaryIO]:
        data_key = self.keys.data_key(check_key(key), create=True)
        with self.backend.open_write(key) as target:
            sealer = _Sealer(target, data_key, key, self.chunk_bytes)
            yield cast(BinaryIO, sealer)
            sealer.finish()

    def open_read(self, key: str) -> BinaryIO:
        source = self.backend.open_read(key)
        try:
            opener = _Opener(source, self.keys.data_key(key, create=False), key)
        except BaseException:
            source.close()
            raise
        return cast(BinaryIO, io.BufferedReader(opener, buffer_size=CHUNK_BYTES))

    def exists(self, key: str) -> bool:
        return self.backend.exists(key)

    def delete_prefix(self, prefix: str) -> int:
        return self.backend.delete_prefix(prefix)

    def path(self, key: str) -> Path | None:
        if not self.backend.exists(key):
            raise ObjectNotFoundError(f"no object under storage key {key!r}")
        return None

    def list(self, prefix: str = "") -> Sequence[str]:
        return self.backend.list(prefix)
