"""The storage contract, run against every backend: a local folder and a real S3 API (moto's
server, :class:`tests.servers.S3Server`), each also beneath encryption at rest
(:class:`service.crypto.EncryptedStorage`); then what is particular to each."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError

from pe_core.errors import PrivevoError
from pe_core.registry import UnknownNameError
from service.crypto import EncryptedStorage, new_data_key
from service.settings import Settings, open_storage
from service.storage import (
    InvalidKeyError,
    LocalStorage,
    ObjectNotFoundError,
    Storage,
    StorageUnavailableError,
    check_key,
    copy_object,
    create_storage,
    local_copy,
)
from tests.servers import S3Server

MiB = 1024 * 1024


class Boom(Exception):
    pass


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@dataclass
class Backend:
    """A storage under test with what the test can see of it from outside.

    Attributes:
        storage: the backend.
        leftovers: everything the backend holds, as its store holds it: for a folder every
            file (temporary ones too, and any outside the root, as '../name'); for a bucket
            every object and unfinished multipart upload.
        local_file: the file ``path(key)`` must give (None for a remote backend).
    """

    storage: Storage
    leftovers: Callable[[], list[str]]
    local_file: Callable[[str], Path | None]


def local_backend(tmp_path: Path) -> Backend:
    storage = LocalStorage(tmp_path / "store")

    def leftovers() -> list[str]:
        files = (p for p in tmp_path.rglob("*") if p.is_file())
        return sorted(Path(os.path.relpath(p, storage.root)).as_posix() for p in files)

    return Backend(storage, leftovers, lambda key: storage.root / key)


def s3_backend(server: S3Server) -> Backend:
    bucket = server.new_bucket()
    storage = create_storage("s3", bucket=bucket, endpoint_url=server.url)
    return Backend(storage, lambda: server.objects(bucket), lambda key: None)


class FirstSegmentKeys:
    """A key ring of one data key per first key segment, made on first write: the contract's
    keys ("a/b", "ds/12") follow no layout of the service's (its database key ring is tested
    in test_crypto.py)."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    def data_key(self, key: str, *, create: bool) -> bytes:
        scope = key.split("/", 1)[0]
        if create:
            self.keys.setdefault(scope, new_data_key())
        return self.keys[scope]


def encrypted(backend: Backend) -> Backend:
    # Small chunks, so that the contract's objects span many of them.
    storage = EncryptedStorage(backend.storage, FirstSegmentKeys(), chunk_bytes=4096)
    return Backend(storage, backend.leftovers, lambda key: None)


@pytest.fixture(params=["local", "s3", "encrypted-local", "encrypted-s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    kind = request.param.removeprefix("encrypted-")
    if kind == "local":
        plain = local_backend(tmp_path)
    else:
        request.getfixturevalue("s3_credentials")
        plain = s3_backend(request.getfixturevalue("s3_server"))
    return encrypted(plain) if request.param.startswith("encrypted-") else plain


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.storage


def put(storage: Storage, key: str, data: bytes) -> None:
    with storage.open_write(key) as writer:
        writer.write(data)


def read(storage: Storage, key: str) -> bytes:
    with storage.open_read(key) as reader:
        return reader.read()


# The contract: every backend.


def test_round_trip(backend: Backend, storage: Storage) -> None:
    put(storage, "datasets/d1/data.csv", b"text,label\nhi,a\n")
    assert storage.exists("datasets/d1/data.csv")
    assert read(storage, "datasets/d1/data.csv") == b"text,label\nhi,a\n"
    assert storage.path("datasets/d1/data.csv") == backend.local_file("datasets/d1/data.csv")
    assert storage.list() == ["datasets/d1/data.csv"]
    assert backend.leftovers() == ["datasets/d1/data.csv"]


def test_overwrite_replaces_whole_object(storage: Storage) -> None:
    put(storage, "a/b", b"first version, longer")
    put(storage, "a/b", b"second")
    assert read(storage, "a/b") == b"second"


def test_failure_mid_write_leaves_nothing(backend: Backend, storage: Storage) -> None:
    with pytest.raises(Boom), storage.open_write("jobs/j1/checkpoint.npz") as writer:
        writer.write(b"x" * 10_000)
        raise Boom
    assert not storage.exists("jobs/j1/checkpoint.npz")
    assert storage.list() == []
    assert backend.leftovers() == []  # no temporary file or unfinished upload either


def test_failure_mid_overwrite_keeps_old_object(backend: Backend, storage: Storage) -> None:
    put(storage, "k", b"old")
    with pytest.raises(Boom), storage.open_write("k") as writer:
        writer.write(b"new, half written")
        raise Boom
    assert read(storage, "k") == b"old"
    assert backend.leftovers() == ["k"]


def test_large_objects_are_whole_or_absent(backend: Backend, storage: Storage) -> None:
    # Past the s3 backend's spool and multipart threshold (8 MiB): uploaded in parts.
    data = bytes(range(256)) * (9 * MiB // 256)
    with pytest.raises(Boom), storage.open_write("big/a.npz") as writer:
        writer.write(data)
        raise Boom
    assert backend.leftovers() == []
    put(storage, "big/a.npz", data)
    assert read(storage, "big/a.npz") == data
    assert backend.leftovers() == ["big/a.npz"]


def test_object_invisible_until_commit(storage: Storage) -> None:
    with storage.open_write("x/y") as writer:
        writer.write(b"data")
        writer.flush()
        assert not storage.exists("x/y")
        assert storage.list() == []
    assert storage.exists("x/y")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/etc/passwd",
        "../outside",
        "a/../../outside",
        "a/..",
        "./a",
        "a//b",
        "a/",
        "a\\..\\b",
        "a\x00b",
        ".hidden",
        "a/.tmp",
        "a b",
        "caf\u00e9",
        "x" * 1025,
    ],
)
def test_unsafe_keys_refused(backend: Backend, storage: Storage, key: str) -> None:
    with pytest.raises(InvalidKeyError, match="storage key"):
        check_key(key)
    with pytest.raises(ValueError, match="storage key"), storage.open_write(key):
        pass
    with pytest.raises(ValueError, match="storage key"):
        storage.exists(key)
    with pytest.raises(ValueError, match="storage key"):
        storage.delete_prefix(key)
    with pytest.raises(ValueError, match="storage key"):
        storage.open_read(key)
    assert backend.leftovers() == []


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("/etc/passwd", "absolute"),
        ("a/../b", r"'\.\.'"),
        ("a\\b", "backslash"),
        ("a\x00b", "NUL"),
    ],
)
def test_refusal_says_why(key: str, reason: str) -> None:
    with pytest.raises(InvalidKeyError, match=reason):
        check_key(key)


def test_delete_prefix_is_segment_wise(storage: Storage) -> None:
    for key in ("ds/12", "ds/12/data.zip", "ds/12/cache/emb.npy", "ds/123/data.csv", "ds/1"):
        # "ds/12" cannot be both a file and a folder; keep the folder.
        if key != "ds/12":
            put(storage, key, key.encode())
    assert storage.delete_prefix("ds/12") == 2
    assert storage.list() == ["ds/1", "ds/123/data.csv"]
    assert storage.delete_prefix("ds/12") == 0
    assert storage.delete_prefix("ds/1") == 1
    assert storage.list() == ["ds/123/data.csv"]


def test_delete_prefix_takes_the_object_named_by_it(storage: Storage) -> None:
    for key in ("a/b", "a/bc", "a/b2/x"):
        put(storage, key, b"")
    assert storage.delete_prefix("a/b") == 1
    assert storage.list() == ["a/b2/x", "a/bc"]


def test_list_prefix(storage: Storage) -> None:
    for key in ("r/j1/out.parquet", "r/j1/report.json", "r/j10/out.parquet", "s"):
        put(storage, key, b"")
    assert storage.list("r/j1") == ["r/j1/out.parquet", "r/j1/report.json"]
    assert storage.list("r/j1/report.json") == ["r/j1/report.json"]
    assert storage.list("missing") == []
    assert storage.list() == ["r/j1/out.parquet", "r/j1/report.json", "r/j10/out.parquet", "s"]


def test_listing_and_deleting_go_page_by_page(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The s3 backend lists and deletes DELETE_BATCH keys per request (1000, S3's own limit);
    # 3 here, so that 10 objects take several pages of each. The local backend has no pages.
    monkeypatch.setattr("service.s3storage.DELETE_BATCH", 3)
    keys = sorted(f"p/{i:02d}" for i in range(10))
    for key in reversed(keys):
        put(storage, key, b"")
    put(storage, "q", b"")
    assert storage.list("p") == keys
    assert storage.delete_prefix("p") == 10
    assert storage.list() == ["q"]


def test_missing_object(storage: Storage) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope"):
        storage.open_read("nope")
    with pytest.raises(ObjectNotFoundError, match="nope"):
        storage.path("nope")
    put(storage, "dir/file", b"")
    with pytest.raises(ObjectNotFoundError):
        storage.open_read("dir")
    assert not storage.exists("dir")


def test_local_copy_is_private_and_goes_when_done(storage: Storage) -> None:
    put(storage, "datasets/d1/data.npz", b"private records")
    with local_copy(storage, "datasets/d1/data.npz") as path:
        assert path.name == "data.npz"  # the suffix picks the dataset's reader
        assert path.read_bytes() == b"private records"
        assert mode(path) == 0o600 and mode(path.parent) == 0o700
        copy = storage.path("datasets/d1/data.npz") is None
    assert path.exists() is not copy  # a remote object's copy is gone; a local file stays
    with pytest.raises(ObjectNotFoundError), local_copy(storage, "datasets/d1/none.npz"):
        pass


def test_copy_between_backends(backend: Backend, storage: Storage, tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "other")
    put(local, "uploads/u1/data.csv", b"a,b\n")
    copy_object(local, storage, "uploads/u1/data.csv")
    assert read(storage, "uploads/u1/data.csv") == b"a,b\n"
    with pytest.raises(ObjectNotFoundError):
        copy_object(local, storage, "uploads/u2/data.csv")
    assert storage.list() == ["uploads/u1/data.csv"]


def test_registry(tmp_path: Path) -> None:
    storage = create_storage("local", root=tmp_path / "r")
    assert isinstance(storage, LocalStorage)
    assert isinstance(storage, Storage)
    with pytest.raises(UnknownNameError, match="local, s3"):
        create_storage("s4", root=tmp_path)


# The local backend.


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def test_list_hides_in_progress_writes(local_storage: LocalStorage) -> None:
    with local_storage.open_write("p/q") as writer:
        writer.write(b"1")
        assert any(name.startswith(".") for name in os.listdir(local_storage.root / "p"))
        assert local_storage.list("p") == []


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_private_objects_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    put(storage, "uploads/u1/data.npz", b"private records")
    put(storage, "results/j1/synthetic/labels.csv", b"label\n")
    folder = storage.make_folder("datasets/d1/jobs/j1/state")
    assert folder == storage.root / "datasets/d1/jobs/j1/state" and folder.is_dir()
    folders = [storage.root, *(p for p in storage.root.rglob("*") if p.is_dir())]
    files = [p for p in storage.root.rglob("*") if p.is_file()]
    assert len(folders) == 11 and len(files) == 2
    assert {str(p): oct(mode(p)) for p in folders} == {str(p): "0o700" for p in folders}
    assert {str(p): oct(mode(p)) for p in files} == {str(p): "0o600" for p in files}


def test_an_existing_root_is_closed_to_others(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    LocalStorage(root)
    assert mode(root) == 0o700


# The s3 backend.


@pytest.mark.usefixtures("s3_credentials")
def test_s3_objects_live_under_the_configured_prefix(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    prod = create_storage("s3", bucket=bucket, prefix="privevo/prod", endpoint_url=s3_server.url)
    test = create_storage("s3", bucket=bucket, prefix="privevo/test", endpoint_url=s3_server.url)
    put(prod, "datasets/d1/data.npz", b"1")
    put(test, "datasets/d1/data.npz", b"2")
    assert prod.list() == test.list() == ["datasets/d1/data.npz"]
    assert test.delete_prefix("datasets/d1") == 1
    assert read(prod, "datasets/d1/data.npz") == b"1"
    assert s3_server.objects(bucket) == ["privevo/prod/datasets/d1/data.npz"]


@pytest.mark.usefixtures("s3_credentials")
def test_s3_listing_skips_objects_no_key_names(s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    storage = create_storage("s3", bucket=bucket, endpoint_url=s3_server.url)
    client = s3_server.client()
    for name in ("results/", "results/j1/a b.txt", "results/j1/.hidden"):  # a console's folder
        client.put_object(Bucket=bucket, Key=name, Body=b"")
    put(storage, "results/j1/report.json", b"{}")
    assert storage.list() == storage.list("results") == ["results/j1/report.json"]
    assert storage.delete_prefix("results") == 1


@pytest.mark.usefixtures("s3_credentials")
def test_s3_missing_bucket_says_what_to_set(s3_server: S3Server) -> None:
    with pytest.raises(
        StorageUnavailableError, match=r"'nowhere' does not exist.*PRIVEVO_S3_BUCKET"
    ):
        create_storage("s3", bucket="nowhere", endpoint_url=s3_server.url)


@pytest.mark.usefixtures("s3_credentials")
def test_s3_unreachable_endpoint_says_what_to_set() -> None:
    # A loopback port bound but never listening: connections to it are refused.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with pytest.raises(StorageUnavailableError, match=r"cannot reach.*PRIVEVO_S3_ENDPOINT_URL"):
            create_storage("s3", bucket="privevo", endpoint_url=url)
    with pytest.raises(StorageUnavailableError, match="PRIVEVO_S3_ENDPOINT_URL 'minio:9000'"):
        create_storage("s3", bucket="privevo", endpoint_url="minio:9000")


@pytest.mark.usefixtures("s3_credentials")
def test_s3_deletes_one_by_one_where_the_store_has_no_batch_delete(
    s3_server: S3Server,
) -> None:
    bucket = s3_server.new_bucket()
    storage = create_storage("s3", bucket=bucket, endpoint_url=s3_server.url, batch_delete=False)
    for key in ("ds/12", "ds/12/data.zip", "ds/12/cache/emb.npy", "ds/123/data.csv"):
        put(storage, key, b"")
    assert storage.delete_prefix("ds/12") == 3
    assert s3_server.objects(bucket) == ["ds/123/data.csv"]


def test_settings_pick_the_backend(tmp_path: Path) -> None:
    stores = open_storage(Settings(home=tmp_path))
    assert isinstance(stores.storage, LocalStorage) and stores.work is stores.storage
    assert not stores.staged
    with pytest.raises(ValidationError, match="PRIVEVO_S3_BUCKET"):
        Settings(home=tmp_path, storage_backend="s3")
    with pytest.raises(ValidationError, match="valid names: local, s3"):
        Settings(home=tmp_path, storage_backend="gcs")


@pytest.mark.usefixtures("s3_credentials")
def test_settings_open_an_s3_bucket(tmp_path: Path, s3_server: S3Server) -> None:
    bucket = s3_server.new_bucket()
    settings = Settings(
        home=tmp_path,
        storage_backend="s3",
        s3_bucket=bucket,
        s3_prefix="privevo",
        s3_endpoint_url=s3_server.url,
        s3_region="us-east-1",
        s3_batch_delete=False,
    )
    stores = open_storage(settings)
    assert stores.staged and stores.work.root == tmp_path.resolve() / "storage"
    put(stores.storage, "results/j1/report.json", b"{}")
    assert s3_server.objects(bucket) == ["privevo/results/j1/report.json"]
    assert files_under(stores.work.root) == []
    assert stores.storage.delete_prefix("results/j1") == 1
    with pytest.raises(PrivevoError, match="PRIVEVO_S3_BUCKET"):
        open_storage(settings.model_copy(update={"s3_bucket": "not-made"}))
