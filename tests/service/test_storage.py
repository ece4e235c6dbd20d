from __future__ import annotations

import os
from pathlib import Path

import pytest

from pe_core.registry import UnknownNameError
from service.storage import (
    InvalidKeyError,
    LocalStorage,
    ObjectNotFoundError,
    Storage,
    check_key,
    create_storage,
)


class Boom(Exception):
    pass


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def put(storage: LocalStorage, key: str, data: bytes) -> None:
    with storage.open_write(key) as writer:
        writer.write(data)


def test_round_trip(storage: LocalStorage) -> None:
    put(storage, "datasets/d1/data.csv", b"text,label\nhi,a\n")
    assert storage.exists("datasets/d1/data.csv")
    with storage.open_read("datasets/d1/data.csv") as reader:
        assert reader.read() == b"text,label\nhi,a\n"
    assert storage.path("datasets/d1/data.csv") == storage.root / "datasets/d1/data.csv"
    assert storage.list() == ["datasets/d1/data.csv"]


def test_overwrite_replaces_whole_object(storage: LocalStorage) -> None:
    put(storage, "a/b", b"first version, longer")
    put(storage, "a/b", b"second")
    with storage.open_read("a/b") as reader:
        assert reader.read() == b"second"


def test_failure_mid_write_leaves_nothing(storage: LocalStorage) -> None:
    with pytest.raises(Boom), storage.open_write("jobs/j1/checkpoint.npz") as writer:
        writer.write(b"x" * 10_000)
        raise Boom
    assert not storage.exists("jobs/j1/checkpoint.npz")
    assert storage.list() == []
    assert files_under(storage.root) == []  # no temp file either


def test_failure_mid_overwrite_keeps_old_object(storage: LocalStorage) -> None:
    put(storage, "k", b"old")
    with pytest.raises(Boom), storage.open_write("k") as writer:
        writer.write(b"new, half written")
        raise Boom
    with storage.open_read("k") as reader:
        assert reader.read() == b"old"
    assert files_under(storage.root) == ["k"]


def test_object_invisible_until_commit(storage: LocalStorage) -> None:
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
def test_unsafe_keys_refused(storage: LocalStorage, key: str) -> None:
    with pytest.raises(InvalidKeyError, match="storage key"):
        check_key(key)
    with pytest.raises(ValueError, match="storage key"), storage.open_write(key):
        pass
    with pytest.raises(ValueError, match="storage key"):
        storage.exists(key)
    with pytest.raises(ValueError, match="storage key"):
        storage.delete_prefix(key)
    assert files_under(storage.root.parent) == []


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


def test_delete_prefix_is_segment_wise(storage: LocalStorage) -> None:
    for key in ("ds/12", "ds/12/data.zip", "ds/12/cache/emb.npy", "ds/123/data.csv", "ds/1"):
        # "ds/12" cannot be both a file and a folder; keep the folder.
        if key != "ds/12":
            put(storage, key, key.encode())
    assert storage.delete_prefix("ds/12") == 2
    assert storage.list() == ["ds/1", "ds/123/data.csv"]
    assert storage.delete_prefix("ds/12") == 0
    assert storage.delete_prefix("ds/1") == 1
    assert storage.list() == ["ds/123/data.csv"]


def test_list_prefix(storage: LocalStorage) -> None:
    for key in ("r/j1/out.parquet", "r/j1/report.json", "r/j10/out.parquet", "s"):
        put(storage, key, b"")
    assert storage.list("r/j1") == ["r/j1/out.parquet", "r/j1/report.json"]
    assert storage.list("r/j1/report.json") == ["r/j1/report.json"]
    assert storage.list("missing") == []
    assert storage.list() == ["r/j1/out.parquet", "r/j1/report.json", "r/j10/out.parquet", "s"]


def test_list_hides_in_progress_writes(storage: LocalStorage) -> None:
    with storage.open_write("p/q") as writer:
        writer.write(b"1")
        assert any(name.startswith(".") for name in os.listdir(storage.root / "p"))
        assert storage.list("p") == []


def test_missing_object(storage: LocalStorage) -> None:
    with pytest.raises(ObjectNotFoundError, match="nope"):
        storage.open_read("nope")
    with pytest.raises(ObjectNotFoundError, match="nope"):
        storage.path("nope")
    put(storage, "dir/file", b"")
    with pytest.raises(ObjectNotFoundError):
        storage.open_read("dir")
    assert not storage.exists("dir")


def test_registry(tmp_path: Path) -> None:
    storage = create_storage("local", root=tmp_path / "r")
    assert isinstance(storage, LocalStorage)
    assert isinstance(storage, Storage)
    with pytest.raises(UnknownNameError, match="local"):
        create_storage("s4", root=tmp_path)


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
