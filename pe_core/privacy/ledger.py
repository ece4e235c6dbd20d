"""Privacy spending as data: an append-only ledger of noisy releases, and exactly-once releases.

Every release that depends on private data is recorded as a :class:`LedgerEntry` (its
:class:`~pe_core.privacy.accounting.DpEvent` and the sha256 of the noisy vector) BEFORE its
result is used, so the ledger always covers everything that could have leaked, and a job's
guarantee is ``epsilon_for([e.event for e in ledger.entries()], delta)``.
:class:`ReleaseStore` makes each release happen exactly once per key: a resumed or retried
iteration gets the recorded noisy vector back instead of fresh noise (fresh noise would be a
second, uncounted release of the same counts).

Only noisy releases are ever stored or hashed here; clean counts never reach this module.

A ledger has one writer at a time (the job runner guarantees one live worker per job); a second
writer racing on the same key gets :class:`DuplicateReleaseError` rather than a silent double
release.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from pe_core.errors import PrivevoError
from pe_core.fileio import atomic_write_bytes, fsync_directory, private_directory
from pe_core.privacy.accounting import DpEvent

LEDGER_VERSION = 1

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_EVENT_FIELDS = ("mechanism", "sigma", "sensitivity", "count", "description")
_ENTRY_FIELDS = ("version", "key", "iteration", "event", "release_sha256", "release_path")


class LedgerError(PrivevoError):
    """The ledger or a recorded release cannot be trusted or would be violated."""


class DuplicateReleaseError(LedgerError):
    """A release with this key is already recorded: each key is released exactly once."""


class CorruptLedgerError(LedgerError):
    """A complete ledger line does not parse; the message names the file and line."""


class ReleaseIntegrityError(LedgerError):
    """A recorded release is missing, altered, or asked for with a different event."""


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded noisy release.

    Attributes:
        key: unique name of the release ("iter-3/votes"); at most one entry per key.
        iteration: the PE iteration that made it (0 for releases before the first iteration).
        event: what was released, for the accountant.
        release_sha256: sha256 of the noisy vector (see :func:`release_digest`).
        release_path: file of the stored vector, relative to the :class:`ReleaseStore`
            directory, or None when the vector is not stored.
    """

    key: str
    iteration: int
    event: DpEvent
    release_sha256: str
    release_path: str | None

    def __post_init__(self) -> None:
        _check_release_request(self.key, self.iteration, self.event)
        if not isinstance(self.release_sha256, str) or not _SHA256_HEX.fullmatch(
            self.release_sha256
        ):
            raise ValueError(f"release_sha256 must be 64 lowercase hex digits: {self.key!r}")
        if self.release_path is not None and not isinstance(self.release_path, str):
            raise ValueError(f"release_path must be a string or None, got {self.release_path!r}")


@runtime_checkable
class Ledger(Protocol):
    """Append-only record of releases, keyed for exactly-once semantics."""

    def entries(self) -> list[LedgerEntry]:
        """All entries, in the order they were appended."""
        ...

    def get(self, key: str) -> LedgerEntry | None:
        """The entry recorded under ``key``, if any."""
        ...

    def append(self, entry: LedgerEntry) -> None:
        """Durably records ``entry``; raises DuplicateReleaseError if its key is taken."""
        ...


def release_digest(values: NDArray[np.int64]) -> str:
    """sha256 hex digest of an int64 vector: its shape, then its little-endian bytes."""
    array = np.ascontiguousarray(values, dtype="<i8")
    digest = hashlib.sha256(json.dumps(list(array.shape)).encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


class JsonlLedger:
    """A ledger in a JSON-lines file, one versioned entry per line, fsynced on every append.

    A crash during an append can leave a torn last line without its newline; that entry was
    never acknowledged (its release never used), so readers ignore it and the next append
    truncates it. Any complete line that does not parse is corruption and raises
    :class:`CorruptLedgerError`.

    Args:
        path: the ledger file; created by the first append.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def entries(self) -> list[LedgerEntry]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return self._parse(data)[0]

    def get(self, key: str) -> LedgerEntry | None:
        return next((entry for entry in self.entries() if entry.key == key), None)

    def append(self, entry: LedgerEntry) -> None:
        if not isinstance(entry, LedgerEntry):
            raise TypeError(f"expected LedgerEntry, got {type(entry).__name__}")
        line = (_entry_to_json(entry) + "\n").encode()
        created = not self.path.exists()
        # "a+b": reads see the whole file, writes always go to its end; owner-only, like every
        # file of a run's private state.
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        with open(descriptor, "a+b") as file:
            file.seek(0)
            data = file.read()
            entries, complete_bytes = self._parse(data)
            if any(existing.key == entry.key for existing in entries):
                raise DuplicateReleaseError(
                    f"release {entry.key!r} is already recorded in {self.path}"
                )
            if complete_bytes < len(data):
                file.truncate(complete_bytes)
            file.write(line)
            file.flush()
            os.fsync(file.fileno())
        if created:
            fsync_directory(self.path.parent)

    def _parse(self, data: bytes) -> tuple[list[LedgerEntry], int]:
        """Entries of the complete lines and the byte length they span (torn tail excluded)."""
        complete_bytes = data.rfind(b"\n") + 1
        entries: list[LedgerEntry] = []
        seen: set[str] = set()
        for number, raw in enumerate(data[:complete_bytes].split(b"\n")[:-1], start=1):
            try:
                entry = entry_from_record(json.loads(raw))
            except (ValueError, TypeError, KeyError) as exc:
                raise CorruptLedgerError(
                    f"{self.path}:{number}: corrupt ledger line: {exc}"
                ) from exc
            if entry.key in seen:
                raise CorruptLedgerError(f"{self.path}:{number}: duplicate key {entry.key!r}")
            seen.add(entry.key)
            entries.append(entry)
        return entries, complete_bytes


class ReleaseStore:
    """Exactly-once noisy releases: record first, reuse forever after.

    Vectors are stored as npz files (``values`` plus a JSON ``meta`` naming the key, iteration
    and event) written atomically: temporary file, fsync, ``os.replace``, directory fsync. Only
    noisy releases are ever stored: ``draw`` must return counts that already carry their noise.

    Args:
        ledger: where releases are recorded.
        directory: where vectors are stored; created if missing.
    """

    def __init__(self, ledger: Ledger, directory: str | os.PathLike[str]) -> None:
        self.ledger = ledger
        self.directory = private_directory(Path(directory))

    def release(
        self,
        key: str,
        iteration: int,
        event: DpEvent,
        draw: Callable[[], NDArray[np.int64]],
    ) -> NDArray[np.int64]:
        """Returns the noisy vector released under ``key``, drawing it only the first time.

        If the ledger holds ``key``, the recorded vector is loaded, checked against its sha256
        and returned; ``draw`` is not called. Otherwise ``draw()`` is called once, its result
        stored and recorded in the ledger, and only then returned. A vector stored by a run
        that crashed before recording it (never returned, so never used) is recorded and
        reused rather than drawn again, so at most one noisy vector per key ever exists.

        Args:
            key: unique name of the release.
            iteration: the PE iteration it belongs to.
            event: the DP event it spends (checked against the record on reuse).
            draw: returns the NOISY integer vector; called at most once.

        Returns:
            The read-only int64 noisy vector.

        Raises:
            ReleaseIntegrityError: the recorded vector is missing or altered, or the key was
                recorded with a different iteration or event.
            DuplicateReleaseError: another writer recorded ``key`` meanwhile.
        """
        _check_release_request(key, iteration, event)
        entry = self.ledger.get(key)
        if entry is not None:
            _check_same_request(entry.key, entry.iteration, entry.event, iteration, event)
            return self._load_recorded(entry)
        name = _file_name(key)
        path = self.directory / name
        if path.exists():
            values = self._load_orphan(path, key, iteration, event)
        else:
            values = _as_int64(draw())
            _write_atomically(path, values, _meta(key, iteration, event))
        self.ledger.append(LedgerEntry(key, iteration, event, release_digest(values), name))
        return values

    def _load_recorded(self, entry: LedgerEntry) -> NDArray[np.int64]:
        if entry.release_path is None:
            raise ReleaseIntegrityError(f"release {entry.key!r} is recorded without a vector")
        path = self.directory / entry.release_path
        try:
            values, _ = _read(path)
        except FileNotFoundError:
            raise ReleaseIntegrityError(
                f"release {entry.key!r} is recorded but its file {path} is missing"
            ) from None
        if release_digest(values) != entry.release_sha256:
            raise ReleaseIntegrityError(
                f"release {entry.key!r}: {path} does not match the sha256 in the ledger "
                "(file altered or replaced); refusing to use it or to draw new noise"
            )
        return values

    def _load_orphan(
        self, path: Path, key: str, iteration: int, event: DpEvent
    ) -> NDArray[np.int64]:
        values, meta = _read(path)
        try:
            recorded_key, recorded_iteration = meta["key"], meta["iteration"]
            recorded_event = DpEvent(**meta["event"])
        except (TypeError, KeyError, ValueError) as exc:
            raise ReleaseIntegrityError(f"{path}: unreadable release metadata: {exc}") from exc
        if recorded_key != key:
            raise ReleaseIntegrityError(f"{path} holds release {recorded_key!r}, not {key!r}")
        _check_same_request(key, recorded_iteration, recorded_event, iteration, event)
        return values


def _check_release_request(key: str, iteration: int, event: DpEvent) -> None:
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty string, got {key!r}")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise ValueError(f"iteration must be an integer >= 0, got {iteration!r}")
    if not isinstance(event, DpEvent):
        raise ValueError(f"event must be a DpEvent, got {type(event).__name__}")


def _check_same_request(
    key: str, recorded_iteration: int, recorded: DpEvent, iteration: int, event: DpEvent
) -> None:
    # The description is free text for humans; everything the accountant reads must match.
    if recorded_iteration != iteration or _accounted(recorded) != _accounted(event):
        raise ReleaseIntegrityError(
            f"release {key!r} was recorded for iteration {recorded_iteration} with {recorded}, "
            f"but is now requested for iteration {iteration} with {event}"
        )


def entry_to_record(entry: LedgerEntry) -> dict[str, Any]:
    """The versioned JSON object of an entry, as a ledger line (and a checkpoint) holds it."""
    return {
        "version": LEDGER_VERSION,
        "key": entry.key,
        "iteration": entry.iteration,
        "event": asdict(entry.event),
        "release_sha256": entry.release_sha256,
        "release_path": entry.release_path,
    }


def same_release(a: LedgerEntry, b: LedgerEntry) -> bool:
    """Whether two entries record the same release: key, iteration, what the accountant reads
    of the event, and the noisy vector's digest (where it is stored and the free-text
    description may differ between ledgers)."""
    return (a.key, a.iteration, a.release_sha256, _accounted(a.event)) == (
        b.key,
        b.iteration,
        b.release_sha256,
        _accounted(b.event),
    )


def _accounted(event: DpEvent) -> tuple[str, float, int, int]:
    return (event.mechanism, event.sigma, event.sensitivity, event.count)


def _entry_to_json(entry: LedgerEntry) -> str:
    return json.dumps(entry_to_record(entry), allow_nan=False, separators=(",", ":"))


def entry_from_record(record: Any) -> LedgerEntry:
    """Parses :func:`entry_to_record`'s object.

    Raises:
        ValueError, TypeError: the object is not a ledger entry of this version.
    """
    if not isinstance(record, dict):
        raise ValueError("a ledger line must be a JSON object")
    if record.get("version") != LEDGER_VERSION:
        raise ValueError(f"unsupported ledger version {record.get('version')!r}")
    if sorted(record) != sorted(_ENTRY_FIELDS):
        raise ValueError(f"expected fields {list(_ENTRY_FIELDS)}, got {sorted(record)}")
    event = record["event"]
    if not isinstance(event, dict) or sorted(event) != sorted(_EVENT_FIELDS):
        raise ValueError(f"event must have fields {list(_EVENT_FIELDS)}")
    return LedgerEntry(
        key=record["key"],
        iteration=record["iteration"],
        event=DpEvent(**event),
        release_sha256=record["release_sha256"],
        release_path=record["release_path"],
    )


def _meta(key: str, iteration: int, event: DpEvent) -> str:
    record = {"version": LEDGER_VERSION, "key": key, "iteration": iteration, "event": asdict(event)}
    return json.dumps(record, allow_nan=False)


def _file_name(key: str) -> str:
    """A safe, readable file name unique to ``key`` (slug plus a hash of the exact key)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", key)[:64].strip("_") or "release"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def _as_int64(values: Any) -> NDArray[np.int64]:
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"a release must be an integer array, got dtype {array.dtype}")
    array = np.ascontiguousarray(array.astype(np.int64, casting="safe"))
    array.flags.writeable = False
    return array


def _read(path: Path) -> tuple[NDArray[np.int64], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            values = _as_int64(npz["values"])
            meta = json.loads(str(npz["meta"]))
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise ReleaseIntegrityError(f"{path}: unreadable release file: {exc}") from exc
    if not isinstance(meta, dict):
        raise ReleaseIntegrityError(f"{path}: release metadata is not a JSON object")
    return values, meta


def _write_atomically(path: Path, values: NDArray[np.int64], meta: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, values=values, meta=np.array(meta))
    atomic_write_bytes(path, buffer.getvalue())
