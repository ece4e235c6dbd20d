"""Record digests: which records an upload holds, as keyed hashes that never leave the server.

A tenant's privacy budget belongs to its records, not to the bytes of the file that carried
them: the same 60 images saved again with ``numpy.savez_compressed``, with an extra array,
reordered, split or merged with other records are still the same 60 records, and a budget keyed
on the file's sha256 gave each of those files a fresh cap. So every upload is decoded exactly as
the engine reads it (``pe_core.datasets.load_dataset``) and each record is hashed on its content
alone:

* an image: its decoded uint8 pixels with their (height, width, channels) shape, a colour image
  whose three channels are equal counting as the grayscale image it is (the loader promotes
  grayscale images to RGB in a folder that mixes both);
* a text: its NFC-normalised UTF-8 bytes;
* never the label, the record's id or its position: relabelling or reordering does not make a
  record new.

Uploads of one tenant that share any record digest share a budget (:mod:`service.db.budget`).

The digests are HMAC-SHA256 under a key of the tenant's own (:func:`new_digest_key`), made when
the tenant is created and kept in the database beside the ledger. A plain hash of a record
would let anyone holding the digests test whether a record they can guess (a known image) is in
a tenant's data, after the data itself is deleted too; keyed, the digests mean nothing without
the key. Keys are per tenant so that the same record gives unrelated digests for two tenants:
digests are never compared across tenants, which would tell one tenant what another holds.
The key lives with the ledger rather than in an operator secret because the grouping must last
as long as the spending it protects: an operator secret that is rotated or lost would silently
give every old record a new digest, and with it a fresh cap.

What still escapes: a record changed in a single pixel or character is a new record. The
guarantee is per dataset as uploaded (add/remove one record), not per person, unless the job's
user-level unit is used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import numpy as np

from pe_core.samples import Samples

DIGEST_BYTES: Final = 32
"""Length of one record digest (HMAC-SHA256), in bytes."""

KEY_BYTES: Final = 32
"""Length of a tenant's digest key, in bytes (256 random bits)."""

_IMAGE: Final = b"privevo.record.image.v1\x00"
_TEXT: Final = b"privevo.record.text.v1\x00"


def new_digest_key() -> bytes:
    """A fresh random digest key for a new tenant."""
    return secrets.token_bytes(KEY_BYTES)


@dataclass(frozen=True)
class RecordDigests:
    """The distinct record digests of one upload, and how many of its records repeated one.

    Never shown to anyone, the upload's owner included, and never logged: its ``repr`` gives
    the counts only.

    Attributes:
        blob: the distinct digests, sorted, concatenated (:data:`DIGEST_BYTES` each).
        duplicates: records that repeat an earlier record of the same upload (each copy votes
            as one more record, so two copies of a record move a histogram by 2, not 1).
    """

    blob: bytes
    duplicates: int

    def __post_init__(self) -> None:
        if len(self.blob) % DIGEST_BYTES:
            raise ValueError(f"blob must hold whole {DIGEST_BYTES}-byte digests")
        if self.duplicates < 0:
            raise ValueError(f"duplicates must be >= 0, got {self.duplicates!r}")

    def __len__(self) -> int:
        return len(self.blob) // DIGEST_BYTES

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.blob), DIGEST_BYTES):
            yield self.blob[start : start + DIGEST_BYTES]

    def __repr__(self) -> str:
        return f"RecordDigests({len(self)} distinct, {self.duplicates} duplicates)"


def digest_records(samples: Samples, key: bytes) -> RecordDigests:
    """The keyed digests of every record of ``samples`` (see the module docstring).

    Args:
        samples: the records as ``pe_core.datasets.load_dataset`` decoded them.
        key: the tenant's digest key (:func:`new_digest_key`).

    Returns:
        The distinct digests and the number of repeated records.
    """
    if len(key) < 16:
        raise ValueError("the digest key must hold at least 16 bytes")
    digests = [hmac.digest(key, message, hashlib.sha256) for message in _messages(samples)]
    if not digests:
        return RecordDigests(b"", 0)
    rows = np.frombuffer(b"".join(digests), dtype=f"V{DIGEST_BYTES}")
    distinct = np.unique(rows)
    return RecordDigests(distinct.tobytes(), len(rows) - len(distinct))


def _messages(samples: Samples) -> Iterator[bytes]:
    if samples.images is not None:
        for image in samples.images:
            yield _image_message(image)
        return
    assert samples.texts is not None
    for text in samples.texts:
        # surrogatepass: a JSON file may hold lone surrogates, which are still content.
        yield _TEXT + unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")


def _image_message(image: np.ndarray) -> bytes:
    if image.shape[2] == 3 and (image[:, :, 0:1] == image).all():
        image = image[:, :, 0:1]
    height, width, channels = image.shape
    return (
        _IMAGE
        + struct.pack(">III", height, width, channels)
        + np.ascontiguousarray(image).tobytes()
    )
