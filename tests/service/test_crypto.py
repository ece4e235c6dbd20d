"""Encryption at rest: the object format, key wrapping, the master key's checks, the database
key ring's scopes and shredding, and the expiry sweep that purges a dataset as a delete does."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service import db
from service.app import sweep_expired_datasets
from service.crypto import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    DatabaseKeyRing,
    DecryptionError,
    EncryptedStorage,
    KeyUnwrapError,
    NoDataKeyError,
    WeakMasterKeyError,
    new_data_key,
    parse_master_key,
    rotate_master_key,
    unwrap_key,
    wrap_key,
)
from service.db.models import new_id
from service.settings import Settings, open_storage
from service.storage import LocalStorage, ObjectNotFoundError, local_copy
from service.uploads import sweep_orphan_uploads
from tests.servers import S3Server
from tests.service.db.support import new_tenant

CHUNK = 64
HEADER = 25
RECORD = NONCE_BYTES + CHUNK + TAG_BYTES
SECRET = b"zebra-quokka-7f3a-private-record"


class OneKey:
    """A key ring with one data key for every object (the format's tests need no scopes)."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or new_data_key()

    def data_key(self, key: str, *, create: bool) -> bytes:
        return self.key


@pytest.fixture
def folder(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


@pytest.fixture
def sealed(folder: LocalStorage) -> EncryptedStorage:
    return EncryptedStorage(folder, OneKey(), chunk_bytes=CHUNK)


def put(storage: EncryptedStorage, key: str, data: bytes) -> None:
    with storage.open_write(key) as writer:
        writer.write(data)


def read(storage: EncryptedStorage, key: str) -> bytes:
    with storage.open_read(key) as reader:
        return reader.read()


def raw(folder: LocalStorage, key: str) -> bytes:
    return (folder.root / key).read_bytes()


def rewrite(folder: LocalStorage, key: str, data: bytes) -> None:
    (folder.root / key).write_bytes(data)


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 7, 6 * CHUNK])
def test_round_trip_at_chunk_edges(
    sealed: EncryptedStorage, folder: LocalStorage, size: int
) -> None:
    data = os.urandom(size)
    put(sealed, "datasets/d/data.bin", data)
    assert read(sealed, "datasets/d/data.bin") == data
    stored = raw(folder, "datasets/d/data.bin")
    chunks = max(1, -(-size // CHUNK))
    assert len(stored) == HEADER + chunks * (NONCE_BYTES + TAG_BYTES) + size
    with local_copy(sealed, "datasets/d/data.bin") as path:
        assert path.read_bytes() == data


def test_written_in_pieces_read_in_pieces(sealed: EncryptedStorage) -> None:
    data = os.urandom(10 * CHUNK + 3)
    with sealed.open_write("a/b") as writer:
        for start in range(0, len(data), 37):
            writer.write(data[start : start + 37])
    with sealed.open_read("a/b") as reader:
        parts = iter(lambda: reader.read(11), b"")
        assert b"".join(parts) == data


def test_plaintext_never_reaches_the_backend(sealed: EncryptedStorage, folder: LocalStorage):
    put(sealed, "uploads/u/data.csv", SECRET * 20)
    assert SECRET not in raw(folder, "uploads/u/data.csv")
    assert sealed.path("uploads/u/data.csv") is None  # callers get a decrypted copy instead
    with pytest.raises(ObjectNotFoundError):
        sealed.path("uploads/u/other.csv")


def tampered(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


def test_every_altered_byte_is_caught(sealed: EncryptedStorage, folder: LocalStorage) -> None:
    put(sealed, "k/x", os.urandom(2 * CHUNK + 5))
    original = raw(folder, "k/x")
    for index in range(len(original)):
        rewrite(folder, "k/x", tampered(original, index))
        with pytest.raises(DecryptionError):
            read(sealed, "k/x")
    rewrite(folder, "k/x", original)
    assert len(read(sealed, "k/x")) == 2 * CHUNK + 5


@pytest.mark.parametrize("chunks_kept", [0, 1, 2])
def test_truncation_at_a_chunk_boundary_is_caught(
    sealed: EncryptedStorage, folder: LocalStorage, chunks_kept: int
) -> None:
    put(sealed, "k/x", os.urandom(3 * CHUNK))
    rewrite(folder, "k/x", raw(folder, "k/x")[: HEADER + chunks_kept * RECORD])
    with pytest.raises(DecryptionError, match=r"truncated|authentication"):
        read(sealed, "k/x")


def test_appended_chunk_is_caught(sealed: EncryptedStorage, folder: LocalStorage) -> None:
    put(sealed, "k/x", os.urandom(2 * CHUNK))
    stored = raw(folder, "k/x")
    rewrite(folder, "k/x", stored + stored[HEADER : HEADER + RECORD])
    with pytest.raises(DecryptionError):
        read(sealed, "k/x")


def test_swapped_chunks_are_caught(sealed: EncryptedStorage, folder: LocalStorage) -> None:
    put(sealed, "k/x", os.urandom(3 * CHUNK))
    stored = raw(folder, "k/x")
    first, second = HEADER, HEADER + RECORD
    swapped = (
        stored[:first]
        + stored[second : second + RECORD]
        + stored[first:second]
        + stored[second + RECORD :]
    )
    rewrite(folder, "k/x", swapped)
    with pytest.raises(DecryptionError, match="chunk 0"):
        read(sealed, "k/x")


def test_chunks_of_another_object_are_caught(
    sealed: EncryptedStorage, folder: LocalStorage
) -> None:
    # Same key, same data key, same sizes: only the file id tells the two apart.
    put(sealed, "k/x", os.urandom(3 * CHUNK))
    put(sealed, "k/y", os.urandom(3 * CHUNK))
    x, y = raw(folder, "k/x"), raw(folder, "k/y")
    rewrite(
        folder, "k/x", x[: HEADER + RECORD] + y[HEADER + RECORD : HEADER + 2 * RECORD] + x[-RECORD:]
    )
    with pytest.raises(DecryptionError, match="chunk 1"):
        read(sealed, "k/x")


def test_object_moved_to_another_key_is_caught(
    sealed: EncryptedStorage, folder: LocalStorage
) -> None:
    put(sealed, "datasets/a/data.csv", SECRET)
    (folder.root / "datasets" / "b").mkdir(parents=True)
    rewrite(folder, "datasets/b/data.csv", raw(folder, "datasets/a/data.csv"))
    with pytest.raises(DecryptionError, match="moved from another key"):
        read(sealed, "datasets/b/data.csv")


def test_plaintext_object_and_wrong_data_key_are_refused(folder: LocalStorage) -> None:
    with folder.open_write("k/plain") as writer:
        writer.write(b"text,label\nhi,a\n")
    with pytest.raises(DecryptionError, match="not encrypted by privevo"):
        read(EncryptedStorage(folder, OneKey()), "k/plain")
    put(EncryptedStorage(folder, OneKey()), "k/x", SECRET)
    with pytest.raises(DecryptionError):
        read(EncryptedStorage(folder, OneKey()), "k/x")


def test_wrapped_key_needs_its_master_key_and_its_scope() -> None:
    master, data_key = new_data_key(), new_data_key()
    wrapped = wrap_key(master, data_key, "ds_1")
    assert data_key not in wrapped
    assert unwrap_key(master, wrapped, "ds_1") == data_key
    with pytest.raises(KeyUnwrapError, match="PRIVEVO_MASTER_KEY"):
        unwrap_key(new_data_key(), wrapped, "ds_1")
    with pytest.raises(KeyUnwrapError):
        unwrap_key(master, wrapped, "ds_2")
    with pytest.raises(KeyUnwrapError):
        unwrap_key(master, tampered(wrapped, 20), "ds_1")


def test_master_key_checks() -> None:
    key = os.urandom(KEY_BYTES)
    assert parse_master_key(base64.b64encode(key).decode()) == key
    assert parse_master_key(base64.urlsafe_b64encode(key).decode() + "\n") == key
    for weak, reason in [
        ("not base64!", "not base64"),
        (base64.b64encode(os.urandom(16)).decode(), "got 16 bytes"),
        (base64.b64encode(b"changeme" * 4).decode(), "not random"),
        (base64.b64encode(bytes(32)).decode(), "not random"),
    ]:
        with pytest.raises(WeakMasterKeyError, match=reason):
            parse_master_key(weak)


def master_key() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def test_settings_turn_encryption_on_with_a_key(tmp_path: Path) -> None:
    assert not Settings(home=tmp_path).encrypts_at_rest  # the embedded default needs no key
    assert Settings(home=tmp_path, master_key=master_key()).encrypts_at_rest
    assert not Settings(
        home=tmp_path, master_key=master_key(), encrypt_at_rest=False
    ).encrypts_at_rest
    with pytest.raises(ValidationError, match="needs PRIVEVO_MASTER_KEY"):
        Settings(home=tmp_path, encrypt_at_rest=True)
    with pytest.raises(ValidationError, match="not random"):
        Settings(home=tmp_path, master_key=base64.b64encode(b"x" * 32).decode())
    shown = repr(Settings(home=tmp_path, master_key=master_key()))
    assert "master_key=SecretStr('**********')" in shown


@pytest.fixture
def encrypted_stores(tmp_path: Path, db_factory: sessionmaker[Session]):
    settings = Settings(home=tmp_path, master_key=master_key())
    stores = open_storage(settings, db_factory)
    assert stores.keys is not None and stores.staged
    return stores


def new_dataset(session: Session, tenant: str, upload: str, dataset_id: str) -> db.Dataset:
    return db.create_dataset(
        session,
        tenant,
        name="n",
        modality="text",
        record_count=1,
        labels=["a"],
        sha256=os.urandom(32).hex(),
        storage_path=f"{upload}/data.csv",
        epsilon_cap=1.0,
        delta_cap=1e-5,
        dataset_id=dataset_id,
    )


def test_database_key_ring_scopes_and_shredding(encrypted_stores, db_session: Session) -> None:
    storage, keys = encrypted_stores.storage, encrypted_stores.keys
    tenant = new_tenant(db_session, new_id("t"))
    dataset_id, upload = new_id("ds"), f"uploads/{os.urandom(16).hex()}"
    with pytest.raises(NoDataKeyError):  # an upload's key is made by the upload route only
        put(storage, f"{upload}/data.csv", SECRET)
    keys.create_for_upload(dataset_id, upload)
    put(storage, f"{upload}/data.csv", SECRET)
    with pytest.raises(NoDataKeyError):  # no dataset yet: no key may be made under its id
        put(storage, f"datasets/{new_id('ds')}/x", SECRET)
    new_dataset(db_session, tenant, upload, dataset_id)
    put(storage, f"datasets/{dataset_id}/jobs/j/out/eval/metrics.json", SECRET)
    with pytest.raises(NoDataKeyError, match="outside every encrypted prefix"):
        put(storage, "elsewhere/x", SECRET)
    assert read(storage, f"{upload}/data.csv") == SECRET
    # Every object lies encrypted under <storage root>/encrypted, apart from the work folder.
    root = encrypted_stores.work.root
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files and all(p.is_relative_to(root / "encrypted") for p in files)
    assert not [p for p in files if SECRET in p.read_bytes()]

    # A gateway that died mid-upload left its staging copy and the stored one: the sweep of
    # its folder deletes the key made for the dataset it never committed.
    orphan, orphan_upload = new_id("ds"), f"uploads/{os.urandom(16).hex()}"
    keys.create_for_upload(orphan, orphan_upload)
    with encrypted_stores.work.open_write(f"{orphan_upload}/data.csv") as handle:
        handle.write(SECRET)
    put(storage, f"{orphan_upload}/data.csv", SECRET)
    swept = sweep_orphan_uploads(
        encrypted_stores.work,
        lambda names: set(),
        store=storage,
        forget=keys.forget_upload,
        grace_s=0.0,
    )
    assert swept == [orphan_upload]
    assert db.wrapped_key(db_session, orphan) is None
    assert storage.list(orphan_upload) == []
    # A committed dataset's key is left to its purge.
    assert not keys.forget_upload(upload)
    assert db.wrapped_key(db_session, dataset_id) is not None

    assert keys.shred(dataset_id)
    assert db.wrapped_key(db_session, dataset_id) is None
    with pytest.raises(NoDataKeyError):
        read(storage, f"{upload}/data.csv")
    with pytest.raises(NoDataKeyError):
        read(storage, f"datasets/{dataset_id}/jobs/j/out/eval/metrics.json")


def test_expired_dataset_is_purged_by_one_sweep(
    encrypted_stores, db_factory: sessionmaker[Session], db_session: Session
) -> None:
    storage, keys = encrypted_stores.storage, encrypted_stores.keys
    tenant = new_tenant(db_session, new_id("t"))
    made = []
    for _ in range(2):
        dataset_id, upload = new_id("ds"), f"uploads/{os.urandom(16).hex()}"
        keys.create_for_upload(dataset_id, upload)
        put(storage, f"{upload}/data.csv", SECRET)
        new_dataset(db_session, tenant, upload, dataset_id)
        made.append((dataset_id, upload))
    (expired, expired_upload), (kept, kept_upload) = made
    with db.write_transaction(db_session):
        db_session.execute(
            update(db.Dataset)
            .where(db.Dataset.id == expired)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    # A copy of the ciphertext taken before the purge (a backup) must be useless after it.
    backup = (encrypted_stores.work.root / "encrypted" / expired_upload / "data.csv").read_bytes()

    assert expired in sweep_expired_datasets(db_factory, encrypted_stores)
    assert storage.list(expired_upload) == []
    assert db.wrapped_key(db_session, expired) is None
    with db.read_transaction(db_session):
        row = db_session.scalars(select(db.Dataset).where(db.Dataset.id == expired)).one()
    assert row.deleted_at is not None  # the row, its budget and digests stay
    assert read(storage, f"{kept_upload}/data.csv") == SECRET
    assert db.wrapped_key(db_session, kept) is not None
    with encrypted_stores.storage.backend.open_write(f"{expired_upload}/data.csv") as writer:
        writer.write(backup)
    with pytest.raises(NoDataKeyError):
        read(storage, f"{expired_upload}/data.csv")
    assert expired not in sweep_expired_datasets(db_factory, encrypted_stores)


class StoreOutage(ThreadingHTTPServer):
    """An S3 endpoint on loopback that is down: it finds the bucket (HEAD), so a storage can be
    made on it, and answers every other request 503 ServiceUnavailable, as a store in an outage
    does."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OutageHandler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _OutageHandler(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _down(self) -> None:
        body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _down

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.usefixtures("s3_credentials")
def test_a_purge_a_store_outage_cut_short_is_finished_by_the_sweep(
    s3_server: S3Server, tmp_path: Path, db_factory: sessionmaker[Session], db_session: Session
) -> None:
    bucket = s3_server.new_bucket()
    settings = Settings(
        home=tmp_path,
        master_key=master_key(),
        storage_backend="s3",
        s3_bucket=bucket,
        s3_endpoint_url=s3_server.url,
    )
    live = open_storage(settings, db_factory)
    assert live.keys is not None
    tenant = new_tenant(db_session, new_id("t"))
    dataset_id, upload = new_id("ds"), f"uploads/{os.urandom(16).hex()}"
    live.keys.create_for_upload(dataset_id, upload)
    put(live.storage, f"{upload}/data.csv", SECRET)
    new_dataset(db_session, tenant, upload, dataset_id)
    put(live.storage, f"datasets/{dataset_id}/embeddings/plan/0.npz", SECRET)
    with db.write_transaction(db_session):
        db_session.execute(
            update(db.Dataset)
            .where(db.Dataset.id == dataset_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )

    outage = StoreOutage()
    try:
        down = open_storage(settings.model_copy(update={"s3_endpoint_url": outage.url}), db_factory)
        assert sweep_expired_datasets(db_factory, down) == []  # the store failed mid-purge
    finally:
        outage.close()
    with db.read_transaction(db_session):
        row = db_session.get_one(db.Dataset, dataset_id)
    assert row.deleted_at is not None and row.purged_at is None
    assert db.wrapped_key(db_session, dataset_id) is None  # shredded first: unreadable already
    assert len(s3_server.objects(bucket)) == 2  # but still there

    assert sweep_expired_datasets(db_factory, live) == [dataset_id]  # the store is back
    assert s3_server.objects(bucket) == []
    with db.read_transaction(db_session):
        assert db_session.get_one(db.Dataset, dataset_id).purged_at is not None
    assert sweep_expired_datasets(db_factory, live) == []


def rotation_sessions(home: Path) -> sessionmaker[Session]:
    """Sessions on an installation's own database (it holds only that installation's keys)."""
    url = f"sqlite:///{home / 'privevo.sqlite3'}"
    db.upgrade(url)
    return db.make_session_factory(db.make_engine(url))


def sealed_under(home: Path, key: str) -> EncryptedStorage:
    """The installation's storage, encrypted under the master key ``key``."""
    url = f"sqlite:///{home / 'privevo.sqlite3'}"
    settings = Settings(home=home, database_url=url, master_key=key)
    storage = open_storage(settings, rotation_sessions(home)).storage
    assert isinstance(storage, EncryptedStorage)
    return storage


def stored_upload(home: Path, key: str) -> str:
    """Stores one upload under the master key ``key``; returns its object's key."""
    upload = f"uploads/{os.urandom(16).hex()}"
    DatabaseKeyRing(rotation_sessions(home), parse_master_key(key)).create_for_upload(
        new_id("ds"), upload
    )
    put(sealed_under(home, key), f"{upload}/data.csv", SECRET)
    return f"{upload}/data.csv"


def test_rotating_the_master_key_rewraps_the_data_keys_and_leaves_the_objects(
    tmp_path: Path,
) -> None:
    old, new = master_key(), master_key()
    key = stored_upload(tmp_path, old)
    ciphertext = (tmp_path / "storage" / "encrypted" / key).read_bytes()
    sessions = rotation_sessions(tmp_path)
    with pytest.raises(KeyUnwrapError):  # not the key in use: nothing changes
        rotate_master_key(sessions, parse_master_key(master_key()), parse_master_key(new))
    assert read(sealed_under(tmp_path, old), key) == SECRET
    assert rotate_master_key(sessions, parse_master_key(old), parse_master_key(new)) == 1
    assert (tmp_path / "storage" / "encrypted" / key).read_bytes() == ciphertext
    assert read(sealed_under(tmp_path, new), key) == SECRET
    with pytest.raises(KeyUnwrapError):
        read(sealed_under(tmp_path, old), key)


def test_the_cli_rotates_the_master_key_from_the_environment(tmp_path: Path) -> None:
    old, new = master_key(), master_key()
    key = stored_upload(tmp_path, old)
    env = {
        **os.environ,
        "PRIVEVO_HOME": str(tmp_path),
        "PRIVEVO_DATABASE_URL": f"sqlite:///{tmp_path / 'privevo.sqlite3'}",
        "PRIVEVO_MASTER_KEY": old,
    }

    def rotate(**extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "privevo.cli", "master-key", "rotate"]
        return subprocess.run(command, env={**env, **extra}, capture_output=True, text=True)

    missing = rotate()
    assert missing.returncode != 0 and "set PRIVEVO_NEW_MASTER_KEY" in missing.stderr
    weak = rotate(PRIVEVO_NEW_MASTER_KEY="changeme")
    assert weak.returncode != 0 and "PRIVEVO_NEW_MASTER_KEY must be 32 bytes" in weak.stderr
    assert "Traceback" not in missing.stderr + weak.stderr
    done = rotate(PRIVEVO_NEW_MASTER_KEY=new)
    assert done.returncode == 0, done.stderr
    assert "rewrapped 1 data key(s)" in done.stdout
    assert read(sealed_under(tmp_path, new), key) == SECRET
    again = rotate(PRIVEVO_NEW_MASTER_KEY=master_key())  # PRIVEVO_MASTER_KEY is now stale
    assert again.returncode != 0 and "nothing was changed" in again.stderr
