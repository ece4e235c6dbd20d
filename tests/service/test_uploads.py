from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import struct
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pe_core.datasets import ZipLimits
from service.storage import LocalStorage
from service.uploads import (
    DatasetSummary,
    UploadedFile,
    UploadRejected,
    UploadTooLarge,
    format_bytes,
    receive_form,
    receive_upload,
    upload_suffix,
    validate_dataset,
    validate_in_child_process,
)

MiB = 1024**2


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "store")


def leftovers(storage: LocalStorage) -> list[Path]:
    return [p for p in storage.root.rglob("*") if p.is_file()]


def png(value: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def mib_chunks(count: int, pulled: list[int]) -> Iterator[bytes]:
    for i in range(count):
        pulled.append(i)
        yield bytes([i % 256]) * MiB


def upload(chunks, storage: LocalStorage, key: str, max_bytes: int) -> UploadedFile:
    return asyncio.run(receive_upload(chunks, storage, key, max_bytes=max_bytes))


# ---------------------------------------------------------------------------------------------
# Streaming


def test_receive_upload_stores_and_hashes(storage: LocalStorage) -> None:
    chunks = [b"text,label\n", b"hello,a\n", b"", b"bye,b\n"]
    stored = upload(chunks, storage, "datasets/d1/data.csv", 1000)
    body = b"".join(chunks)
    assert stored == UploadedFile(
        "datasets/d1/data.csv", len(body), hashlib.sha256(body).hexdigest()
    )
    with storage.open_read("datasets/d1/data.csv") as reader:
        assert reader.read() == body


def test_receive_upload_async_source(storage: LocalStorage) -> None:
    async def body() -> AsyncIterator[bytes]:
        for part in (b"a" * 10, b"b" * 5):
            await asyncio.sleep(0)
            yield part

    stored = upload(body(), storage, "u.csv", 15)
    assert stored.size == 15
    assert stored.sha256 == hashlib.sha256(b"a" * 10 + b"b" * 5).hexdigest()


def test_oversize_stream_aborts_at_first_byte_over(storage: LocalStorage) -> None:
    pulled: list[int] = []
    tracemalloc.start()
    try:
        with pytest.raises(UploadTooLarge, match="limit of 8 MiB") as caught:
            upload(mib_chunks(64, pulled), storage, "big.zip", 8 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.status_code == 413
    assert caught.value.limit_bytes == 8 * MiB
    assert len(pulled) == 9  # eight chunks fill the limit; the ninth is refused
    assert not storage.exists("big.zip")
    assert leftovers(storage) == []
    assert peak < 4 * MiB


def test_one_byte_over_is_refused_and_exact_limit_taken(storage: LocalStorage) -> None:
    with pytest.raises(UploadTooLarge):
        upload([b"x" * 100, b"y"], storage, "a.csv", 100)
    assert leftovers(storage) == []
    assert upload([b"x" * 60, b"y" * 40], storage, "a.csv", 100).size == 100


def test_memory_stays_bounded_on_a_large_upload(storage: LocalStorage) -> None:
    pulled: list[int] = []
    tracemalloc.start()
    try:
        stored = upload(mib_chunks(48, pulled), storage, "large.npz", 64 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == 48 * MiB
    assert storage.path("large.npz").stat().st_size == 48 * MiB
    assert peak < 4 * MiB  # 48 MiB went through


def test_client_disconnect_leaves_nothing(storage: LocalStorage) -> None:
    def body() -> Iterator[bytes]:
        yield b"x" * 1000
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        upload(body(), storage, "d/data.jsonl", MiB)
    assert leftovers(storage) == []


def test_cancelled_upload_leaves_nothing(storage: LocalStorage) -> None:
    async def scenario() -> None:
        waiting = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            waiting.set()
            await asyncio.Event().wait()  # a client that stalls until the server gives up
            yield b"never"

        task = asyncio.create_task(receive_upload(body(), storage, "c.csv", max_bytes=MiB))
        await waiting.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert leftovers(storage) == []


def test_failed_upload_keeps_previous_object(storage: LocalStorage) -> None:
    upload([b"old"], storage, "d.csv", 10)
    with pytest.raises(UploadTooLarge):
        upload([b"new, too long"], storage, "d.csv", 10)
    with storage.open_read("d.csv") as reader:
        assert reader.read() == b"old"


def test_empty_upload_refused(storage: LocalStorage) -> None:
    with pytest.raises(UploadRejected, match="empty") as caught:
        upload([], storage, "e.csv", 10)
    assert caught.value.status_code == 422
    assert leftovers(storage) == []


BOUNDARY = "b0undary"


def form_body(file_chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A multipart body: a field, the file part from ``file_chunks``, then another field."""

    def part(name: str, filename: str | None = None) -> bytes:
        extra = f'; filename="{filename}"' if filename else ""
        return (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode()
        )

    async def body() -> AsyncIterator[bytes]:
        yield part("name") + b"digits\r\n" + part("file", "C:\\data\\big.npz")
        for chunk in file_chunks:
            yield chunk
        yield b"\r\n" + part("modality") + b"image\r\n" + f"--{BOUNDARY}--\r\n".encode()

    return body()


def receive(body: AsyncIterator[bytes], storage: LocalStorage, max_bytes: int):
    content_type = f"multipart/form-data; boundary={BOUNDARY}"
    return asyncio.run(receive_form(body, content_type, storage, "up/1", max_bytes=max_bytes))


def test_receive_form_streams_the_file_part_into_storage(storage: LocalStorage) -> None:
    tracemalloc.start()
    try:
        form = receive(form_body(mib_chunks(48, [])), storage, 64 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert form.fields == {"name": "digits", "modality": "image"}
    assert form.filename == "big.npz"
    assert form.file is not None and form.file.key == "up/1/data.npz"
    digest = hashlib.sha256(b"".join(mib_chunks(48, []))).hexdigest()
    assert (form.file.size, form.file.sha256) == (48 * MiB, digest)
    assert storage.path("up/1/data.npz").stat().st_size == 48 * MiB
    assert peak < 8 * MiB  # a chunk and a write buffer, while 48 MiB went through


def test_receive_form_refuses_the_file_as_soon_as_it_passes_the_limit(
    storage: LocalStorage,
) -> None:
    pulled: list[int] = []
    with pytest.raises(UploadTooLarge, match="limit of 8 MiB"):
        receive(form_body(mib_chunks(64, pulled)), storage, 8 * MiB)
    assert len(pulled) == 9  # eight chunks fill the limit; the ninth is refused
    assert leftovers(storage) == []


def test_receive_form_refuses_endless_part_headers(storage: LocalStorage) -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"'.encode()
        for _ in range(1024):  # a header value that never ends, 64 KiB at a time
            pulled.append(1)
            yield b"; x" * (64 * 1024 // 3)

    # python-multipart caps a header line at 4 KiB (and a part at 8 headers).
    with pytest.raises(UploadRejected, match="Maximum header size exceeded") as caught:
        receive(body(), storage, 64 * MiB)
    assert caught.value.status_code == 400
    assert len(pulled) == 1  # refused within the first chunk past the limit
    assert leftovers(storage) == []


def test_format_bytes() -> None:
    assert format_bytes(0) == "0 bytes"
    assert format_bytes(1023) == "1023 bytes"
    assert format_bytes(1024) == "1 KiB"
    assert format_bytes(8 * MiB) == "8 MiB"
    assert format_bytes(3 * 1024**3 // 2) == "1.5 GiB"
    assert format_bytes(5 * 1024**5) == "5120 TiB"


# ---------------------------------------------------------------------------------------------
# Validation


def rejection(path: Path, **options) -> UploadRejected:
    options.setdefault("modality", None)
    with pytest.raises(UploadRejected) as caught:
        validate_dataset(path, **options)
    assert str(path.parent) not in caught.value.message  # no server paths in messages
    return caught.value


def test_valid_csv(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("text,label\nhello,b\nworld,a\nagain,b\n", encoding="utf-8")
    summary = validate_dataset(path, modality="text")
    assert summary == DatasetSummary(record_count=3, labels=("a", "b"), modality="text")


def test_valid_image_zip(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "data.zip",
        {"digits/0/a.png": png(0), "digits/0/b.png": png(10), "digits/1/c.png": png(200)},
    )
    summary = validate_dataset(path, modality=None)
    assert summary == DatasetSummary(
        record_count=3, labels=("0", "1"), modality="image", image_shape=(8, 8, 1)
    )


def test_corrupt_png_in_zip(tmp_path: Path) -> None:
    truncated = png(7)[:30]
    path = write_zip(tmp_path / "data.zip", {"cat/1.png": png(1), "dog/2.png": truncated})
    error = rejection(path)
    assert error.status_code == 422
    assert "data.zip!dog/2.png: not a readable image" in error.message


def test_zip_with_parent_path(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "data.zip", {"cat/1.png": png(1), "../evil/2.png": png(2)})
    error = rejection(path)
    assert error.status_code == 422
    assert "'..'" in error.message


def declare_huge_sizes(path: Path) -> None:
    """Rewrites every central-directory entry to declare an uncompressed size near 4 GiB."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        struct.pack_into("<I", data, start + 24, 0xFFFF_FFF0)
        start += 4
    path.write_bytes(bytes(data))


def test_zip_bomb_by_declared_size(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bomb.zip", {"cat/1.png": png(1), "dog/2.png": png(2)})
    declare_huge_sizes(path)
    assert path.stat().st_size < 2000
    error = rejection(path)  # default limits: 4 GiB in total
    assert isinstance(error, UploadTooLarge)
    assert error.status_code == 413
    assert "expand to 8 GiB, more than the limit of 4 GiB" in error.message


def test_zip_bomb_by_compression_ratio(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "bomb.zip", {"cat/zeros.png": bytes(4 * MiB)})
    assert path.stat().st_size < 16 * 1024
    error = rejection(path, zip_limits=ZipLimits(max_total_bytes=MiB))
    assert error.status_code == 413
    assert "limit of 1 MiB" in error.message


def test_npz_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, images=np.zeros((64, 128, 128), np.uint8), labels=np.zeros(64, int))
    error = rejection(path, zip_limits=ZipLimits(max_total_bytes=MiB))
    assert error.status_code == 413


def test_too_many_zip_members(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "many.zip", {f"c/{i}.png": b"" for i in range(5)})
    error = rejection(path, zip_limits=ZipLimits(max_members=4))
    assert error.status_code == 413
    assert "5 entries" in error.message


def test_csv_missing_text_column(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("body,label\nhello,a\n", encoding="utf-8")
    error = rejection(path)
    assert error.status_code == 422
    assert "no column 'text'" in error.message
    assert "['body', 'label']" in error.message
    assert error.message.startswith("data.csv: ")


def test_display_name_replaces_file_name(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("body,label\nhello,a\n", encoding="utf-8")
    error = rejection(path, display_name="reviews.csv")
    assert error.message.startswith("reviews.csv: ")


@pytest.mark.parametrize("name", ["data.csv", "data.jsonl", "data.parquet", "data.zip", "d.npz"])
def test_empty_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    error = rejection(path)
    assert error.status_code == 422


@pytest.mark.parametrize("name", ["data.txt", "data", "data.tar.gz", "data.png"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"text,label\nhi,a\n")
    error = rejection(path)
    assert error.status_code == 415
    assert ".csv" in error.message
    with pytest.raises(UploadRejected) as caught:
        upload_suffix(name)
    assert caught.value.status_code == 415


def test_upload_suffix_accepts_known_types() -> None:
    assert upload_suffix("My Reviews.CSV") == ".csv"
    assert upload_suffix("C:\\Users\\me\\digits.zip") == ".zip"


def test_wrong_modality(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "hi", "label": "a"}\n', encoding="utf-8")
    error = rejection(path, modality="image")
    assert error.status_code == 422


def test_deeply_nested_json_is_422_without_the_record(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    secret = "patient-4711"
    path.write_text(f'{{"text": "{secret}", "label": {"[" * 100_000}{"]" * 100_000}}}\n')
    error = rejection(path)
    assert error.status_code == 422
    assert "nested too deeply" in error.message
    assert secret not in error.message


def test_unexpected_parser_failure_is_400_and_logs_no_data(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "x", "label": "a"}\n')
    secret = "patient-4711"

    def parser_bug(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"parser choked on {secret}")

    monkeypatch.setattr("service.uploads.load_dataset", parser_bug)
    with caplog.at_level(logging.WARNING, logger="service.uploads"):
        error = rejection(path)
    assert error.status_code == 400
    assert "RuntimeError" in error.message
    assert secret not in error.message
    assert "RuntimeError" in caplog.text
    assert secret not in caplog.text


def test_rejection_needs_4xx() -> None:
    with pytest.raises(ValueError, match="4xx"):
        UploadRejected(500, "no")


def test_validation_in_a_child_process_returns_the_summary_or_the_rejection(
    tmp_path: Path,
) -> None:
    good = tmp_path / "data.jsonl"
    good.write_text('{"text": "hello", "label": "a"}\n{"text": "bye", "label": "b"}\n')
    summary = validate_in_child_process(good, modality="text")
    assert (summary.record_count, list(summary.labels)) == (2, ["a", "b"])
    bad = tmp_path / "bad.csv"
    bad.write_text("body,label\nhello,a\n")
    with pytest.raises(UploadRejected) as info:
        validate_in_child_process(bad, modality="text")
    assert info.value.status_code == 422
    assert "body" in info.value.message


def patients_npz(path: Path, **arrays: np.ndarray) -> Path:
    """Six 8x8 images of two labels, three patients (two images each), plus ``arrays``."""
    images = np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8)
    np.savez(path, images=images, labels=np.array([0, 1] * 3), **arrays)
    return path


def test_a_user_column_makes_the_upload_user_level(tmp_path: Path) -> None:
    npz = patients_npz(
        tmp_path / "scans.npz", patient=np.array(["p1", "p1", "p2", "p2", "p3", "p3"])
    )
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text(
        "".join(f'{{"text": "note {i}", "label": "a", "user": {i % 2}}}\n' for i in range(4))
    )
    for path, column in ((npz, "patient"), (jsonl, "user")):
        with_users = validate_dataset(path, modality=None, user_column=column)
        without = validate_dataset(path, modality=None)
        assert (with_users.privacy_unit, without.privacy_unit) == ("user", "record")
        # The same records either way; the owner's summary holds no count of users.
        assert with_users.record_count == without.record_count
        assert {f for f in vars(with_users) if "user" in f} == set()


@pytest.mark.parametrize(
    ("make", "column", "message"),
    [
        (lambda p: patients_npz(p / "d.npz"), "patient", "d.npz: no 'patient' array"),
        (
            lambda p: patients_npz(p / "d.npz", patient=np.array(["p1", "p2"])),
            "patient",
            "d.npz: 'patient' must be a 1-d array of integers or strings, one user per image",
        ),
        (
            lambda p: patients_npz(p / "d.npz", patient=np.ones((6, 2), dtype=np.int64)),
            "patient",
            "'patient' must be a 1-d array",
        ),
        (lambda p: write_zip(p / "d.zip", {"a/1.png": png(1)}), "user", "name no users"),
    ],
    ids=["missing", "short", "2-d", "zip"],
)
def test_a_bad_user_column_is_422_saying_what_to_fix(
    tmp_path: Path, make, column: str, message: str
) -> None:
    error = rejection(make(tmp_path), user_column=column)
    assert error.status_code == 422
    assert message in error.message


def test_a_jsonl_record_without_its_user_is_422(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text('{"text": "a", "label": "x", "user": "u1"}\n{"text": "b", "label": "x"}\n')
    error = rejection(path, user_column="user")
    assert (error.status_code, error.message.startswith("notes.jsonl, record 1: ")) == (422, True)
