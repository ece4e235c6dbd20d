"""Record digests from real upload files: the same records give the same digests however the
file was saved; the label, the order and the file format do not count; another key gives
unrelated digests; nothing about them is shown or logged."""

from __future__ import annotations

import io
import json
import logging
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.digests import DIGEST_BYTES, RecordDigests, digest_records, new_digest_key
from service.uploads import validate_dataset, validate_in_child_process
from tests.conftest import digits_28

KEY = new_digest_key()


def digests(path: Path, key: bytes = KEY) -> RecordDigests:
    summary = validate_dataset(path, modality=None, digest_key=key)
    assert summary.record_digests is not None
    return summary.record_digests


def save_npz(path: Path, compressed: bool = False, **arrays: np.ndarray) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    samples = digits_28(3)
    assert samples.images is not None
    return samples.images, samples.labels


def test_the_same_images_give_the_same_digests_however_they_are_saved(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    original = digests(save_npz(tmp_path / "a.npz", images=images, labels=labels))
    assert len(original) == 30 and original.duplicates == 0
    order = np.random.default_rng(1).permutation(len(images))
    rgb = np.repeat(images, 3, axis=3)  # gray stored as three equal channels
    folder = io.BytesIO()
    with zipfile.ZipFile(folder, "w") as archive:
        for i, image in enumerate(images):
            png = io.BytesIO()
            Image.fromarray(image[:, :, 0]).save(png, format="PNG")
            archive.writestr(f"class_{i % 2}/{i}.png", png.getvalue())
    (tmp_path / "e.zip").write_bytes(folder.getvalue())
    same = {
        "compressed": save_npz(tmp_path / "b.npz", True, images=images, labels=labels),
        "extra array": save_npz(tmp_path / "c.npz", images=images, labels=labels, x2=labels),
        "reordered": save_npz(tmp_path / "d.npz", images=images[order], labels=labels[order]),
        "png zip, other labels": tmp_path / "e.zip",
        "relabelled": save_npz(tmp_path / "f.npz", images=images, labels=(labels + 1) % 10),
        "as RGB": save_npz(tmp_path / "g.npz", images=rgb, labels=labels),
        "3-d array": save_npz(tmp_path / "h.npz", images=images[:, :, :, 0], labels=labels),
    }
    for name, path in same.items():
        assert digests(path) == original, name
    changed = images.copy()
    changed[0, 0, 0, 0] ^= 1  # one pixel of one record
    other = digests(save_npz(tmp_path / "i.npz", images=changed, labels=labels))
    assert len(set(other) - set(original)) == 1  # a record changed in one pixel is a new record


def test_texts_are_digested_nfc_normalised_and_without_their_label(tmp_path: Path) -> None:
    texts = ["caf\u00e9 au lait", "the kettle broke", "fine"]
    rows = [{"text": t, "label": label} for t, label in zip(texts, "abc", strict=True)]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    decomposed = tmp_path / "b.csv"
    decomposed.write_text(
        "text,label\n" + "".join(f"{unicodedata.normalize('NFD', t)},z\n" for t in reversed(texts)),
        encoding="utf-8",
    )
    assert unicodedata.normalize("NFD", texts[0]) != texts[0]
    assert digests(jsonl) == digests(decomposed)
    assert len(digests(jsonl)) == 3


def test_another_key_gives_unrelated_digests(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    path = save_npz(tmp_path / "a.npz", images=images, labels=labels)
    mine, theirs = digests(path), digests(path, new_digest_key())
    assert len(mine) == len(theirs) == 30
    assert not set(mine) & set(theirs)


def test_repeated_records_are_counted_once_and_reported(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = digits
    twice = np.concatenate([images, images[:4], images[:1]])
    path = save_npz(tmp_path / "a.npz", images=twice, labels=np.resize(labels, len(twice)))
    summary = validate_dataset(path, modality="image", digest_key=KEY)
    assert (summary.record_count, summary.duplicate_records) == (35, 5)
    assert summary.record_digests is not None and len(summary.record_digests) == 30
    # Without a key the repeats are still counted, but no digest is kept.
    keyless = validate_dataset(path, modality="image")
    assert (keyless.duplicate_records, keyless.record_digests) == (5, None)


def test_digests_are_never_shown_or_logged(
    tmp_path: Path, digits: tuple[np.ndarray, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    images, labels = digits
    path = save_npz(tmp_path / "a.npz", images=images, labels=labels)
    with caplog.at_level(logging.DEBUG):
        summary = validate_in_child_process(path, modality="image", digest_key=KEY)
    assert summary.record_digests == digests(path)  # they cross the process boundary intact
    shown = repr(summary) + str(summary) + caplog.text
    assert repr(summary.record_digests) == "RecordDigests(30 distinct, 0 duplicates)"
    for digest in summary.record_digests:
        assert digest.hex() not in shown and repr(digest) not in shown
    assert KEY.hex() not in shown


def test_digest_records_refuses_a_short_key_and_keeps_whole_digests() -> None:
    samples = digits_28(1)
    with pytest.raises(ValueError, match="16 bytes"):
        digest_records(samples, b"short")
    result = digest_records(samples, KEY)
    assert len(result.blob) == 10 * DIGEST_BYTES
    with pytest.raises(ValueError, match="whole"):
        RecordDigests(b"x" * 33, 0)
